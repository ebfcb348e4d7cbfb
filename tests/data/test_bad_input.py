"""Every kind of bad input named in the foundation issue: a clear error naming the file, or a
documented repair with a warning; ``on_bad='skip'`` skips and counts."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.cli import main as cli_main
from detlab.data.coco import read_coco
from detlab.data.errors import BadInputError, BadInputWarning, ProblemLog
from detlab.data.images import load_image
from detlab.data.voc import read_voc
from detlab.data.yolo import read_yolo


def write_jpeg(path, size=(64, 48), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def voc_xml(file_name, objects, size=(64, 48)):
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return (
        f"<annotation><filename>{file_name}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{body}</annotation>"
    )


def make_voc(root, items):
    """items: {image_id: (xml_text or None, write_image: bool)}"""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for image_id, (xml_text, with_image) in items.items():
        if xml_text is None:
            xml_text = voc_xml(f"{image_id}.jpg", [("cat", [5, 5, 30, 30])])
        (root / "Annotations" / f"{image_id}.xml").write_text(xml_text)
        if with_image:
            write_jpeg(root / "JPEGImages" / f"{image_id}.jpg")
    return root


def test_truncated_jpeg_is_named(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", size=(256, 256))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInputError, match="truncated.jpg.*corrupt or truncated"):
        load_image(truncated)
    root = make_voc(tmp_path / "voc", {"a": (None, True), "b": (None, True)})
    (root / "JPEGImages" / "b.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInputError, match="b.jpg"):
        read_voc(root, verify_images=True)
    with pytest.warns(BadInputWarning, match="b.jpg"):
        dataset = read_voc(root, verify_images=True, on_bad="skip")
    assert [r.image_id for r in dataset.records] == ["a"]
    assert len(dataset.problems.skipped) == 1


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n")
    with pytest.raises(BadInputError, match="notes.jpg: not an image file"):
        load_image(fake)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"image_{mode.replace(';', '')}.png"
    if mode == "I;16":
        array = np.full((8, 10), 65535 // 2, dtype=np.uint16)
        Image.fromarray(array).save(path)  # stored as a 16-bit greyscale PNG
        expected = 0.5
    elif mode == "RGBA":
        Image.new("RGBA", (10, 8), (255, 0, 0, 255)).save(path)
        expected = None
    elif mode == "P":
        Image.new("RGB", (10, 8), (0, 0, 255)).convert("P").save(path)
        expected = None
    else:
        Image.new("L", (10, 8), 128).save(path)
        expected = 128 / 255
    with Image.open(path) as check:
        assert check.mode != "RGB"
    image = load_image(path)
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    if expected is not None:
        assert image.mean().item() == pytest.approx(expected, abs=2 / 255)
    if mode == "RGBA":
        assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    if mode == "P":
        assert image[:, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_exif_rotation_applied_and_boxes_stay_right(tmp_path):
    # As displayed: 40 wide, 60 tall, a red block at x 5..15, y 40..55 (the annotation uses this view).
    displayed = np.zeros((60, 40, 3), np.uint8)
    displayed[40:55, 5:15] = (255, 0, 0)
    # Stored rotated, with EXIF orientation 6 ("rotate 90 CW to display").
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    stored.save(root / "JPEGImages" / "rot.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    (root / "Annotations" / "rot.xml").write_text(
        "<annotation><filename>rot.jpg</filename><object><name>block</name>"
        "<bndbox><xmin>5</xmin><ymin>40</ymin><xmax>15</xmax><ymax>55</ymax></bndbox></object></annotation>"
    )
    dataset = read_voc(root)
    assert (dataset.records[0].width, dataset.records[0].height) == (40, 60)
    image, target = dataset[0]
    assert image.shape == (3, 60, 40)
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    inside = image[:, y1:y2, x1:x2]
    assert inside[0].mean() > 0.9 and inside[1].mean() < 0.1
    assert image[0].sum() == pytest.approx(inside[0].sum().item(), rel=0.05)


def test_annotation_whose_image_is_missing(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (None, True), "lost": (None, False)})
    with pytest.raises(BadInputError, match="lost.xml.*lost.jpg is missing"):
        read_voc(root)
    with pytest.warns(BadInputWarning):
        assert len(read_voc(root, on_bad="skip")) == 1


def test_malformed_xml_names_file_and_line(tmp_path):
    root = make_voc(
        tmp_path / "voc", {"bad": ("<annotation>\n<object><name>cat</name>\n</annotation>", True)}
    )
    with pytest.raises(BadInputError, match=r"bad.xml:3: malformed XML") as info:
        read_voc(root)
    assert info.value.line == 3


@pytest.mark.parametrize(
    "payload",
    [
        # billion laughs
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><annotation><filename>&lol3;</filename></annotation>',
        # external entity
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<annotation><filename>&xxe;</filename></annotation>",
    ],
)
def test_entity_attacks_are_refused(tmp_path, payload):
    root = make_voc(tmp_path / "voc", {"evil": (payload, True)})
    with pytest.raises(BadInputError, match="evil.xml: refused unsafe XML"):
        read_voc(root)


def test_coco_unknown_ids(tmp_path):
    write_jpeg(tmp_path / "images" / "a.jpg")
    base = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "cat"}],
    }
    for bad, message in (
        ({"image_id": 99, "category_id": 7}, "unknown image_id 99"),
        ({"image_id": 1, "category_id": 3}, "unknown category_id 3"),
    ):
        path = tmp_path / "ann.json"
        path.write_text(json.dumps({**base, "annotations": [{"id": 5, "bbox": [1, 1, 10, 10], **bad}]}))
        with pytest.raises(BadInputError, match=f"ann.json: annotations\\[0\\] \\(id 5\\): {message}"):
            read_coco(path)
        with pytest.warns(BadInputWarning):
            dataset = read_coco(path, on_bad="skip")
        assert len(dataset) == 1 and len(dataset.records[0].boxes) == 0
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(BadInputError, match="broken.json.*not valid JSON"):
        read_coco(tmp_path / "broken.json")


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 fields"),
        ("0 1.5 0.5 0.2 0.2", r"coordinates .* outside \[0, 1\]"),
        ("0 0.5 -0.1 0.2 0.2", r"coordinates .* outside \[0, 1\]"),
        ("3 0.5 0.5 0.2 0.2", "class index 3 outside"),
        ("x 0.5 0.5 0.2 0.2", "non-numeric"),
    ],
)
def test_yolo_bad_lines_name_file_and_line(tmp_path, line, message):
    write_jpeg(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.5 0.5\n{line}\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(BadInputError, match=f"a.txt:2: {message}"):
        read_yolo(tmp_path)


def test_zero_size_and_out_of_image_boxes_are_repaired_with_warnings(tmp_path):
    objects = [
        ("cat", [5, 5, 30, 30]),
        ("cat", [10, 10, 10, 20]),
        ("cat", [50, 40, 90, 70]),
        ("cat", [100, 100, 120, 120]),
    ]
    root = make_voc(tmp_path / "voc", {"a": (voc_xml("a.jpg", objects), True)})
    problems = ProblemLog()
    with pytest.warns(BadInputWarning) as caught:
        dataset = read_voc(root, problems=problems)
    assert dataset.records[0].boxes.tolist() == [[5, 5, 30, 30], [50, 40, 64, 48]]
    assert problems.kinds == {"zero-size box": 1, "box clipped to image": 1, "box outside image": 1}
    assert any("a.xml: object 1: zero-size box" in str(w.message) for w in caught)


def test_inverted_box_and_unknown_class_are_errors(tmp_path):
    root = make_voc(tmp_path / "inv", {"a": (voc_xml("a.jpg", [("cat", [30, 5, 5, 30])]), True)})
    with pytest.raises(BadInputError, match="a.xml: object 0: inverted box"):
        read_voc(root)
    root = make_voc(tmp_path / "unk", {"a": (voc_xml("a.jpg", [("zebra", [5, 5, 30, 30])]), True)})
    with pytest.raises(BadInputError, match="unknown class 'zebra'"):
        read_voc(root, classes=["cat"])


def test_class_names_with_stray_whitespace(tmp_path):
    root = make_voc(
        tmp_path / "voc", {"a": (voc_xml("a.jpg", [(" cat\t", [5, 5, 30, 30]), ("cat", [1, 1, 9, 9])]), True)}
    )
    with pytest.warns(BadInputWarning, match="stripped"):
        dataset = read_voc(root)
    assert dataset.classes == ["cat"]
    assert dataset.records[0].labels.tolist() == [1, 1]


def test_cli_prints_one_line_error_not_a_traceback(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", {"bad": ("<annotation><object>", True)})
    assert cli_main(["data", "stats", str(root)]) == 2
    err = capsys.readouterr().err
    assert "bad.xml" in err and "malformed XML" in err and "Traceback" not in err
    assert cli_main(["data", "stats", str(root), "--on-bad", "skip"]) == 0
    out = capsys.readouterr().out
    assert "Skipped (1)" in out and "bad.xml" in out


def test_stats_on_a_file_that_is_not_a_data_set(tmp_path, capsys):
    path = tmp_path / "x.txt"
    path.write_bytes(io.BytesIO(b"hello").getvalue())
    assert cli_main(["data", "stats", str(path)]) == 2
    assert "cannot tell the data format" in capsys.readouterr().err
