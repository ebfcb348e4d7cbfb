"""Every field of COCO JSON, VOC XML, YOLO labels and data.yaml is checked by type and range: each
case of issue 38, item 8 (a TypeError, KeyError, OverflowError, ValueError, RecursionError or
UnicodeDecodeError before) is now a BadInputError naming the file and the field, which
``on_bad='skip'`` skips while the good records stay."""

import json
import warnings

import pytest
import yaml
from PIL import Image

from detlab.cli import main as cli_main
from detlab.data.coco import read_coco
from detlab.data.errors import BadInputError
from detlab.data.voc import read_voc
from detlab.data.yolo import read_yolo


def write_png(path, size=(40, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 160, 30)).save(path)


def coco_document():
    """Two images, one box each; the second image and its box are the ones the cases spoil."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 20},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [3, 4, 10, 8]},
        ],
    }


def write_coco_set(root, document=None, text=None):
    for name in ("a.png", "b.png"):
        write_png(root / "images" / name)
    path = root / "ann.json"
    path.write_text(text if text is not None else json.dumps(document))
    return path


def spoil(mutate):
    document = coco_document()
    mutate(document)
    return document


COCO_CASES = {
    # issue 38, item 8, as reported
    "integer file_name": (lambda d: d["images"][1].update(file_name=7), r"images\[1\] \(id 2\) 'file_name' must be a file"),
    "None in a bbox": (lambda d: d["annotations"][1]["bbox"].__setitem__(1, None),
                       r"annotations\[1\] \(id 2\) 'bbox'\[1\] must be a number, got None"),
    "category without id": (lambda d: d["categories"][1].pop("id"), r"categories\[1\] 'id' must be a whole number"),
    "bbox 'x'": (lambda d: d["annotations"][1].update(bbox=["x", 1, 2, 3]), r"'bbox'\[0\] must be a number, got 'x'"),
    "annotation that is a list": (lambda d: d["annotations"].append([1, 2]), r"annotations\[2\] must be an object"),
    # the same kinds of value in the other fields
    "bbox a string": (lambda d: d["annotations"][1].update(bbox="x"), r"'bbox' must be \[x, y, width, height\]"),
    "400-digit bbox value": (lambda d: d["annotations"][1]["bbox"].__setitem__(2, 10**400),
                             r"'bbox'\[2\] must be a finite number, got a number of about 401 digits"),
    "list as image_id": (lambda d: d["annotations"][1].update(image_id=[2]), r"unknown image_id \[2\]"),
    "true as category_id": (lambda d: d["annotations"][1].update(category_id=True), "unknown category_id True"),
    "iscrowd 5": (lambda d: d["annotations"][1].update(iscrowd=5), r"'iscrowd' must be a whole number from 0 to 1"),
    "keypoint visibility 7": (lambda d: d["annotations"][1].update(keypoints=[1, 2, 7]), r"visibility must be a whole"),
    "negative height": (lambda d: d["images"][1].update(height=-20), r"'height' must be a whole number from 0"),
    "image id a list": (lambda d: d["images"][1].update(id=[2]), r"images\[1\] 'id' must be a whole number"),
    "image id repeated": (lambda d: d["images"].append({"id": 2, "file_name": "a.png"}), "image id repeated"),
    "category name null": (lambda d: d["categories"][1].update(name=None), r"categories\[1\] 'name' must be a non-empty"),
    "category id repeated": (lambda d: d["categories"].append({"id": 2, "name": "bird"}), "category id 2 repeated"),
}  # fmt: skip


@pytest.mark.parametrize("case", COCO_CASES)
def test_coco_bad_field_names_file_and_field_and_is_skipped(tmp_path, case):
    mutate, message = COCO_CASES[case]
    path = write_coco_set(tmp_path, spoil(mutate))
    with pytest.raises(BadInputError, match=f"ann.json: .*{message}") as raised:
        read_coco(path)
    assert raised.value.path == str(path) and "\n" not in str(raised.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = read_coco(path, on_bad="skip")
    assert len(dataset.problems.skipped) >= 1
    first = next(r for r in dataset.records if r.image_id == 1)  # the good image and its box stay
    assert first.boxes.tolist() == [[1, 2, 11, 10]]


def test_coco_width_1e999(tmp_path):
    text = json.dumps(coco_document()).replace(
        '"width": 40, "height": 20}]', '"width": 1e999, "height": 20}]'
    )
    path = write_coco_set(tmp_path, text=text)
    with pytest.raises(
        BadInputError, match=r"images\[1\] \(id 2\) 'width' must be a whole number .* got inf"
    ):
        read_coco(path)
    with pytest.warns(UserWarning, match="'width'"):
        dataset = read_coco(path, on_bad="skip")
    assert [r.image_id for r in dataset.records] == [1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ('{"images": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not valid JSON"),
        ('{"images": [], "annotations": {}}', "'annotations' must be a list"),
    ],
)
def test_coco_unreadable_file_is_one_line(tmp_path, text, message):
    path = write_coco_set(tmp_path, text=text)
    with pytest.raises(BadInputError, match=f"ann.json: .*{message}") as raised:
        read_coco(path, on_bad="skip")  # no record to skip: the whole file is unusable
    assert "\n" not in str(raised.value)


def test_coco_bad_field_in_the_cli_is_one_line(tmp_path, capsys):
    path = write_coco_set(tmp_path, spoil(lambda d: d["images"][1].update(file_name=7)))
    assert cli_main(["data", "stats", f"coco:{path}"]) == 2
    err = capsys.readouterr().err
    assert "ann.json" in err and "'file_name'" in err and "Traceback" not in err
    assert cli_main(["data", "stats", f"coco:{path}", "--on-bad", "skip"]) == 0


def voc_set(root, width="40", difficult="0"):
    (root / "Annotations").mkdir(parents=True)
    for image_id in ("a", "b"):
        write_png(root / "JPEGImages" / f"{image_id}.png")
        size = width if image_id == "b" else "40"
        hard = difficult if image_id == "b" else "0"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>{size}</width><height>20</height></size>"
            f"<object><name>cat</name><difficult>{hard}</difficult><bndbox><xmin>1</xmin><ymin>2</ymin>"
            "<xmax>11</xmax><ymax>10</ymax></bndbox></object></annotation>"
        )
    return root


@pytest.mark.parametrize(
    "width, difficult, message",
    [
        ("1e999", "0", r"<size><width> must be a whole number from 0 to 1,000,000, got '1e999'"),
        ("-40", "0", r"<size><width> must be a whole number"),
        ("40.5", "0", "<size><width> must be a whole number"),
        ("forty", "0", "<size><width> must be a whole number"),
        ("40", "maybe", r"object 0 \('cat'\) <difficult> must be a whole number from 0 to 1, got 'maybe'"),
    ],
)
def test_voc_bad_field_names_file_and_field(tmp_path, width, difficult, message):
    root = voc_set(tmp_path / "voc", width, difficult)
    with pytest.raises(BadInputError, match=f"b.xml: {message}"):
        read_voc(root)
    with pytest.warns(UserWarning, match="b.xml"):
        assert [r.image_id for r in read_voc(root, on_bad="skip").records] == ["a"]


def test_voc_size_0_or_absent_is_still_read_from_the_image(tmp_path):
    root = voc_set(tmp_path / "voc", width="0")
    assert [(r.width, r.height) for r in read_voc(root).records] == [(40, 20), (40, 20)]


@pytest.mark.parametrize("name", ["ImageSets/Main/train.txt", "classes.txt"])
def test_voc_non_utf8_split_or_class_file(tmp_path, name):
    root = voc_set(tmp_path / "voc")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / name).write_bytes(b"a\n\xff\xfeb\n")
    with pytest.raises(BadInputError, match=f"{name}: not UTF-8 text"):
        read_voc(root, "train")


def yolo_set(root, label_b=b"1 0.5 0.5 0.5 0.5\n"):
    for stem, label in (("a", b"0 0.5 0.5 0.5 0.5\n"), ("b", label_b)):
        write_png(root / "images" / f"{stem}.png")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_bytes(label)
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_yolo_non_utf8_label_file(tmp_path):
    root = yolo_set(tmp_path / "yolo", label_b=b"1 0.5 0.5 0.5 0.5\n\xff\xfe\n")
    with pytest.raises(BadInputError, match=r"labels/b.txt: not UTF-8 text \(byte 18 is 0xff\)"):
        read_yolo(root)
    with pytest.warns(UserWarning, match="b.txt"):
        assert [r.image_id for r in read_yolo(root, on_bad="skip").records] == ["a"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"cat\n\xffdog\n", "classes.txt: not UTF-8 text"),
        (b"cat\ncat\n", r"classes.txt: class names repeated: \[\"'cat'\"\]"),
    ],
)
def test_yolo_bad_class_file(tmp_path, content, message):
    root = yolo_set(tmp_path / "yolo")
    (root / "classes.txt").write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        read_yolo(root)


def test_yolo_label_bytes_order_mark_is_dropped(tmp_path):
    root = yolo_set(tmp_path / "yolo", label_b=b"\xef\xbb\xbf1 0.5 0.5 0.5 0.5\n")
    assert read_yolo(root).records[1].labels.tolist() == [2]


def data_yaml_set(root, **fields):
    for split, stem in (("train", "a"), ("val", "b")):
        write_png(root / "images" / split / f"{stem}.png")
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    data = {"train": "images/train", "val": "images/val", "names": ["cat", "dog"], **fields}
    (root / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return root


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"names": ["cat", None]},
            r"'names'\[1\] must be a non-empty name, got None \(quote such names in YAML\)",
        ),
        ({"names": ["cat", True]}, r"'names'\[1\] must be a non-empty name, got True"),
        ({"names": ["cat", ["dog"]]}, r"'names'\[1\] must be a non-empty name, got \['dog'\]"),
        (
            {"names": {0: "cat", 1: {"x": 1}}},
            r"'names'\[1\] must be a non-empty name, got an object of 1 fields",
        ),
        ({"names": {0: "cat", 1.5: "dog"}}, r"'names' map keys must be class indices 0, 1, ..., got 1.5"),
        (
            {"nc": 10**9, "names": None},
            r"'nc' must be a positive whole number \(at most 100,000\), got 1000000000",
        ),
        ({"path": 5}, r"'path' must be a file or folder name, got 5"),
        ({"path": ["a"]}, r"'path' must be a file or folder name, got \['a'\]"),
        (
            {"train": {"a": 1}},
            r"'train': expected a folder, a .txt list of images or a list of those, got an object",
        ),
    ],
)
def test_data_yaml_bad_field_names_file_and_field(tmp_path, fields, message):
    root = data_yaml_set(tmp_path / "ds", **fields)
    with pytest.raises(BadInputError, match=f"data.yaml: {message}"):
        read_yolo(root, "train")


def test_data_yaml_names_may_be_numbers(tmp_path):
    assert read_yolo(data_yaml_set(tmp_path / "ds", names=[0, 1]), "train").classes == ["0", "1"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"names: [cat]\ntrain: images/train\n\xff", "not UTF-8 text"),
        (b"names: " + b"[" * 5000 + b"]" * 5000, r"not valid YAML \(nested too deeply\)"),
        (b"nc: " + b"9" * 5000, "not valid YAML"),
        (b"names: [cat]\ntrain: 2001-13-45\n", "not valid YAML"),
    ],
)
def test_data_yaml_unreadable_is_one_line(tmp_path, content, message):
    root = data_yaml_set(tmp_path / "ds")
    (root / "data.yaml").write_bytes(content)
    with pytest.raises(BadInputError, match=f"data.yaml: {message}") as raised:
        read_yolo(root, "train", on_bad="skip")
    assert "\n" not in str(raised.value)


def test_data_yaml_path_of_an_unknown_user(tmp_path):
    # pathlib's expanduser raised RuntimeError for ~nosuchuser; the entries are then found beside the YAML
    root = data_yaml_set(tmp_path / "ds", path="~nosuchuser/x")
    assert [r.image_id for r in read_yolo(root, "train").records] == ["a"]
