"""check_images: every image decoded once, answers cached by (path, size, mtime); the on_bad policy;
size mismatches; a broken cache never stops a check; `detlab data check` exit codes."""

import json
import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from detlab.data.errors import BadInputError, BadInputWarning
from detlab.data.validation import CACHE_FILE_NAME, BadImagesError, ImageCheckReport, check_images
from detlab.data.voc import read_voc


def write_photo(path, size=(160, 120), seed=0):
    """A noisy JPEG (tens of kB, so a 3000-byte prefix is a truncated file, not a whole one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def make_voc(root, num_images=4, size=(160, 120), annotated_size=None, split=None, box=(10, 10, 60, 50)):
    """A VOC folder with images ``img0..``; ``annotated_size`` is the size written in the XML."""
    width, height = annotated_size or size
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        write_photo(root / "JPEGImages" / f"img{index}.jpg", size, seed=index)
        (root / "Annotations" / f"img{index}.xml").write_text(
            f"<annotation><filename>img{index}.jpg</filename><size><width>{width}</width><height>{height}"
            f"</height><depth>3</depth></size><object><name>cell</name><bndbox><xmin>{box[0]}</xmin>"
            f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>"
        )
    if split:
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        for name, ids in split.items():
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"img{i}\n" for i in ids))
    return root


def truncate(path, num_bytes=3000):
    path.write_bytes(path.read_bytes()[:num_bytes])


def check_quietly(dataset, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean check warns about nothing
        return check_images(dataset, **options)


def test_second_check_decodes_nothing_and_a_changed_file_is_decoded_again(tmp_path):
    dataset = read_voc(make_voc(tmp_path / "voc"))
    same, report = check_quietly(dataset, cache_path=tmp_path)
    assert same is dataset
    assert (report.checked, report.decoded, report.bad, report.size_mismatches) == (4, 4, [], [])
    assert report.cache == str(tmp_path / CACHE_FILE_NAME)
    assert check_quietly(dataset, cache_path=tmp_path)[1].decoded == 0

    touched = dataset.records[1].image_path
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert check_quietly(dataset, cache_path=tmp_path)[1].decoded == 1
    assert check_quietly(dataset, cache_path=tmp_path)[1].decoded == 0

    # New bytes, old modification time: the size alone gives the change away.
    rewritten = dataset.records[2].image_path
    stat = rewritten.stat()
    write_photo(rewritten, seed=99)
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rewritten.stat().st_size != stat.st_size
    assert check_quietly(dataset, cache_path=tmp_path)[1].decoded == 1


def test_error_lists_every_bad_file_after_checking_all(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=5)
    truncate(root / "JPEGImages" / "img1.jpg")
    (root / "JPEGImages" / "img3.jpg").write_text("not a picture\n")
    dataset = read_voc(root)
    with pytest.raises(BadInputError) as info:
        check_images(dataset, cache_path=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, BadImagesError)
    lines = message.splitlines()
    assert any("img1.jpg: corrupt or truncated image" in line for line in lines)
    assert any("img3.jpg: not an image file" in line for line in lines)
    assert not any("img1.jpg" in line and "img3.jpg" in line for line in lines)  # one a line
    assert "2 of 5 images" in message
    assert lines[-1] == "fix or remove them, or train with --set data.on_bad=skip"
    assert [path for path, _ in info.value.bad] == [str(root / "JPEGImages" / f"img{i}.jpg") for i in (1, 3)]
    assert info.value.report.decoded == 5  # every image was checked before raising


def test_skip_drops_the_bad_image_with_one_warning_and_bad_answers_are_cached(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=4)
    truncate(root / "JPEGImages" / "img2.jpg")
    dataset = read_voc(root)
    with pytest.warns(BadInputWarning) as caught:
        kept, report = check_images(dataset, on_bad="skip", cache_path=tmp_path)
    assert len(caught) == 1
    assert "skipped 1 of 4 images" in str(caught[0].message) and "img2.jpg" in str(caught[0].message)
    assert len(kept) == len(dataset) - 1 == 3
    assert [record.image_id for record in kept.records] == ["img0", "img1", "img3"]
    assert (kept.classes, kept.name, kept.transforms) == (dataset.classes, dataset.name, dataset.transforms)
    assert kept.problems is dataset.problems
    assert len(report.bad) == 1 and report.bad[0][0].endswith("img2.jpg")

    # The bad file is not decoded again while it is unchanged, and it is still bad.
    with pytest.warns(BadInputWarning, match="img2.jpg"):
        again, report = check_images(dataset, on_bad="skip", cache_path=tmp_path)
    assert report.decoded == 0 and len(again) == 3 and report.bad[0][0].endswith("img2.jpg")
    with pytest.raises(BadInputError, match="img2.jpg"):
        check_images(dataset, cache_path=tmp_path)

    # Repaired: decoded again, and good.
    write_photo(root / "JPEGImages" / "img2.jpg", seed=2)
    fixed, report = check_quietly(dataset, on_bad="skip", cache_path=tmp_path)
    assert (report.decoded, report.bad, len(fixed)) == (1, [], 4)


def test_every_image_bad_is_an_error_even_under_skip(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=2)
    for index in range(2):
        truncate(root / "JPEGImages" / f"img{index}.jpg")
    with pytest.raises(BadInputError, match=r"none of its 2 images(.|\n)*img0.jpg(.|\n)*img1.jpg"):
        check_images(read_voc(root), on_bad="skip", cache_path=tmp_path)


def test_missing_file_is_named_and_not_cached(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=3)
    dataset = read_voc(root)
    (root / "JPEGImages" / "img0.jpg").unlink()
    with pytest.raises(BadInputError, match="img0.jpg: image file not found"):
        check_images(dataset, cache_path=tmp_path)
    write_photo(root / "JPEGImages" / "img0.jpg", seed=0)
    assert check_quietly(dataset, cache_path=tmp_path)[1].decoded == 1


def test_size_mismatch_is_a_warning_naming_file_and_both_sizes(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=3, size=(160, 120), annotated_size=(200, 100))
    dataset = read_voc(root)
    with pytest.warns(BadInputWarning) as caught:
        same, report = check_images(dataset, cache_path=tmp_path)
    assert same is dataset and report.bad == []
    assert len(report.size_mismatches) == 3 and len(caught) == 3
    message = str(caught[0].message)
    assert "img0.jpg" in message and "200x100" in message and "160x120" in message
    # Served from the cache, the decoded size is still known.
    with pytest.warns(BadInputWarning, match="200x100.*160x120"):
        assert check_images(dataset, cache_path=tmp_path)[1].decoded == 0


def test_size_after_exif_rotation_is_compared(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=1, size=(160, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned by 90 degrees: 120 wide, 160 tall
    path = root / "JPEGImages" / "img0.jpg"
    with Image.open(path) as image:
        image.load()
        image.save(path, exif=exif.tobytes())
    with pytest.warns(BadInputWarning, match=r"img0.jpg: annotated as 160x120, but the image is 120x160"):
        check_images(read_voc(root), cache_path=tmp_path)


@pytest.mark.parametrize("broken", ["garbage", "not_a_folder"])
def test_unusable_cache_falls_back_with_one_warning(tmp_path, broken):
    dataset = read_voc(make_voc(tmp_path / "voc", num_images=3))
    if broken == "garbage":
        cache = tmp_path / "cache.sqlite3"
        cache.write_bytes(b"this is no database, just some bytes\n" * 50)
    else:
        (tmp_path / "a_file").write_text("")
        cache = tmp_path / "a_file" / "sub" / CACHE_FILE_NAME
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            same, report = check_images(dataset, cache_path=cache)
        assert len(caught) == 1 and "cache" in str(caught[0].message) and str(cache) in str(caught[0].message)
        assert same is dataset and report.decoded == 3 and report.cache is None and report.bad == []


def test_default_cache_location_and_concurrent_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(tmp_path / "cache"))
    datasets = [read_voc(make_voc(tmp_path / f"voc{i}", num_images=6)) for i in range(2)]
    reports, errors = [], []

    def run(dataset):
        try:
            reports.append(check_quietly(dataset)[1])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(dataset,)) for dataset in datasets * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(reports) == 4
    assert (tmp_path / "cache" / CACHE_FILE_NAME).is_file()
    assert [check_quietly(dataset)[1].decoded for dataset in datasets] == [0, 0]


def test_report_summary_and_dict(tmp_path):
    root = make_voc(tmp_path / "voc", num_images=3)
    truncate(root / "JPEGImages" / "img0.jpg")
    with pytest.warns(BadInputWarning):
        _, report = check_images(read_voc(root), on_bad="skip", cache_path=tmp_path)
    assert isinstance(report, ImageCheckReport)
    assert report.summary().startswith("3 images checked (3 decoded, 0 from cache)")
    assert "1 unreadable" in report.summary()
    data = json.loads(json.dumps(report.as_dict()))
    assert data["checked"] == 3 and data["bad"][0][0].endswith("img0.jpg") and data["size_mismatches"] == []


def test_progress_bar_only_for_many_images(tmp_path, capsys):
    few = read_voc(make_voc(tmp_path / "few", num_images=3, size=(16, 12), box=(1, 1, 8, 8)))
    check_images(few, cache_path=tmp_path)
    assert "checking images" not in capsys.readouterr().err
    many = read_voc(make_voc(tmp_path / "many", num_images=60, size=(16, 12), box=(1, 1, 8, 8)))
    check_images(many, cache_path=tmp_path)
    assert "checking images" in capsys.readouterr().err
    check_images(many, cache_path=tmp_path, progress=False)
    assert "checking images" not in capsys.readouterr().err


def test_bad_policy_name_is_refused():
    with pytest.raises(ValueError, match="on_bad must be one of"):
        check_images(None, on_bad="ignore")


def test_data_check_exits_1_on_a_truncated_image_in_the_split(tmp_path, capsys):
    from detlab.cli import main as cli_main  # here, so the checks above do not need every command

    root = make_voc(tmp_path / "voc", num_images=4, split={"train": [0, 1, 2], "test": [3]})
    assert cli_main(["data", "check", str(root), "--split", "train"]) == 0
    truncate(root / "JPEGImages" / "img1.jpg")
    capsys.readouterr()
    assert cli_main(["data", "check", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "1 unreadable" in out and "img1.jpg: corrupt or truncated image" in out
    assert cli_main(["data", "check", str(root), "--split", "test"]) == 0  # the bad image is not in it
    for index in (0, 2):
        truncate(root / "JPEGImages" / f"img{index}.jpg")
    assert cli_main(["data", "check", str(root), "--split", "train"]) == 1  # nothing readable: still a list
    out = capsys.readouterr().out
    assert all(f"img{index}.jpg: corrupt or truncated" in out for index in range(3))


def test_data_check_exits_0_on_documented_repairs_only(tmp_path, capsys):
    from detlab.cli import main as cli_main

    # A box sticking out of the image is clipped: a repair, reported, not a failure.
    root = make_voc(tmp_path / "voc", num_images=2, box=(10, 10, 400, 50))
    assert cli_main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "repaired (2)" in out and "clipped" in out
    (root / "Annotations" / "img1.xml").write_text("<annotation><object>")
    assert cli_main(["data", "check", str(root)]) == 1
    assert "img1.xml" in capsys.readouterr().out
