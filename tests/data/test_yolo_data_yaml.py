"""YOLO data sets described by a data YAML, as Ultralytics defines them and Roboflow exports them."""

import pytest
import yaml
from PIL import Image

from detlab.cli import main as cli_main
from detlab.data.errors import BadInputError
from detlab.data.loading import detect_format, load_dataset
from detlab.data.yolo import read_yolo, write_yolo

CLASSES = ["cat", "dog", "bird"]
SIZE = (40, 20)  # width, height: every normalised box below is 0.5 x 0.5 -> 20 x 10 pixels


def write_png(path, size=SIZE):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 40, 200)).save(path)
    return path


def write_labelled(image_dir, label_dir, stem, lines):
    """A PNG ``image_dir/stem.png``; ``label_dir/stem.txt`` with ``lines`` unless ``lines`` is None."""
    write_png(image_dir / f"{stem}.png")
    if lines is not None:
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))


def write_yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# Per split: {stem: label lines}. Class 0 centred, class 2 in the top-left quarter's centre.
SPLITS = {
    "train": {"t1": ["0 0.5 0.5 0.5 0.5"], "t2": ["2 0.25 0.25 0.5 0.5", "1 0.5 0.5 0.5 0.5"]},
    "valid": {"v1": ["1 0.75 0.75 0.5 0.5"]},
    "test": {"s1": ["2 0.5 0.5 0.5 0.5"], "s2": None},  # s2: no label file (background image)
}
CENTRE, TOP_LEFT, BOTTOM_RIGHT = [10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 20.0, 10.0], [20.0, 10.0, 40.0, 20.0]
EXPECTED = {  # image id -> (boxes, labels 1..C)
    "t1": ([CENTRE], [1]),
    "t2": ([TOP_LEFT, CENTRE], [3, 2]),
    "v1": ([BOTTOM_RIGHT], [2]),
    "s1": ([CENTRE], [3]),
    "s2": ([], []),
}


def by_id(dataset):
    return {record.image_id: (record.boxes.tolist(), record.labels.tolist()) for record in dataset.records}


def assert_split(dataset, split_folder):
    assert dataset.classes == CLASSES
    assert by_id(dataset) == {stem: EXPECTED[stem] for stem in SPLITS[split_folder]}


def make_roboflow(root, entries="../{}/images", **extra):
    """Roboflow's export: ``<split>/images``, ``<split>/labels`` beside ``data.yaml``."""
    for folder, items in SPLITS.items():
        for stem, lines in items.items():
            write_labelled(root / folder / "images", root / folder / "labels", stem, lines)
    data = {
        "train": entries.format("train"),
        "val": entries.format("valid"),
        "test": entries.format("test"),
        "nc": len(CLASSES),
        "names": CLASSES,
        **extra,
    }
    write_yaml(root / "data.yaml", data)
    return root


def make_ultralytics(root):
    """Ultralytics' layout: ``images/<split>``, ``labels/<split>``, a YAML with ``path``."""
    for folder, items in SPLITS.items():
        split = "val" if folder == "valid" else folder
        for stem, lines in items.items():
            write_labelled(root / "images" / split, root / "labels" / split, stem, lines)
    return root


@pytest.mark.parametrize("entries", ["../{}/images", "{}/images"])
def test_roboflow_export(tmp_path, entries):
    root = make_roboflow(tmp_path / "rf", entries)
    assert detect_format(root) == "yolo"
    for split, folder in (("train", "train"), ("val", "valid"), ("valid", "valid"), ("test", "test")):
        assert_split(load_dataset(f"yolo:{root}", split), folder)
    trainval = load_dataset(f"yolo:{root}", "trainval")
    assert by_id(trainval) == {stem: EXPECTED[stem] for stem in ("t1", "t2", "v1")}
    everything = load_dataset(f"yolo:{root}")
    assert by_id(everything) == EXPECTED
    image = everything.records[0].image_path
    assert image.is_file() and image.parent.name == "images"


def test_roboflow_export_given_as_its_yaml(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    assert detect_format(root / "data.yaml") == "yolo"
    dataset = load_dataset(f"yolo:{root / 'data.yaml'}", "val")
    assert_split(dataset, "valid")
    assert dataset.name.endswith("data.yaml [val]")
    assert_split(load_dataset(str(root / "data.yaml"), "train"), "train")  # a bare path, detected


def test_ultralytics_yaml_with_path(tmp_path):
    root = make_ultralytics(tmp_path / "ds")
    # The YAML elsewhere; ``path`` relative to the YAML's folder.
    yaml_file = write_yaml(
        tmp_path / "configs" / "mine.yaml",
        {
            "path": "../ds",
            "train": "images/train",
            "val": "images/val",
            "test": "images/test",
            "names": {0: "cat", 1: "dog", 2: "bird"},
        },
    )
    assert_split(read_yolo(yaml_file, "train"), "train")
    assert_split(read_yolo(yaml_file, "val"), "valid")
    assert_split(read_yolo(yaml_file, "valid"), "valid")
    # An absolute ``path``, the YAML given as its folder (dataset.yaml).
    write_yaml(
        root / "dataset.yaml",
        {"path": str(root), "train": "images/train", "val": "images/val", "names": CLASSES},
    )
    assert_split(load_dataset(f"yolo:{root}", "train"), "train")
    assert by_id(load_dataset(f"yolo:{root}")) == {s: EXPECTED[s] for s in ("t1", "t2", "v1")}


def test_names_map_with_string_keys_in_any_order(tmp_path):
    root = make_roboflow(tmp_path / "rf", names={"2": "bird", "0": "cat", "1": "dog"})
    assert_split(read_yolo(root, "train"), "train")


def test_only_nc_names_the_classes_as_ultralytics_does(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    write_yaml(root / "data.yaml", {"train": "../train/images", "val": "../valid/images", "nc": 3})
    assert read_yolo(root, "train").classes == ["class_0", "class_1", "class_2"]


def test_moved_data_set_and_validation_key(tmp_path):
    """A ``path`` that no longer exists (the set was moved): entries are found beside the YAML;
    ``validation:`` is the ``val`` split."""
    root = make_ultralytics(tmp_path / "ds")
    write_yaml(
        root / "data.yaml",
        {
            "path": str(tmp_path / "elsewhere"),
            "train": "images/train",
            "validation": "images/val",
            "names": CLASSES,
        },
    )
    assert_split(read_yolo(root, "val"), "valid")
    assert_split(read_yolo(root, "train"), "train")


def test_list_file_splits(tmp_path):
    root = make_ultralytics(tmp_path / "ds")
    (root / "train.txt").write_text("./images/train/t1.png\nimages/train/t2.png\n\n")
    (root / "lists").mkdir()
    (root / "lists" / "val.txt").write_text(f"{root / 'images' / 'val' / 'v1.png'}\n")  # absolute
    write_yaml(
        root / "data.yaml",
        {
            "train": "train.txt",
            "val": ["lists/val.txt"],
            "test": ["images/test", "lists/val.txt"],
            "names": CLASSES,
        },
    )
    assert_split(read_yolo(root, "train"), "train")
    assert_split(read_yolo(root, "val"), "valid")
    test = read_yolo(root, "test")  # a list of a folder and a list file
    assert by_id(test) == {s: EXPECTED[s] for s in ("s1", "s2", "v1")}


def test_list_file_with_a_missing_image_names_file_and_line(tmp_path):
    root = make_ultralytics(tmp_path / "ds")
    (root / "train.txt").write_text("images/train/t1.png\nimages/train/gone.png\n")
    write_yaml(root / "data.yaml", {"train": "train.txt", "val": "images/val", "names": CLASSES})
    with pytest.raises(BadInputError, match=r"train.txt:2: image 'images/train/gone.png' not found"):
        read_yolo(root, "train")
    with pytest.warns(UserWarning, match="gone.png"):
        assert list(by_id(read_yolo(root, "train", on_bad="skip"))) == ["t1"]


def test_undefined_split_lists_the_available_ones(tmp_path):
    root = tmp_path / "rf"
    make_roboflow(root)
    write_yaml(root / "data.yaml", {"train": "../train/images", "val": "../valid/images", "names": CLASSES})
    with pytest.raises(
        BadInputError,
        match=r"data.yaml: split 'test' is not defined "
        r"\(available: \['train', 'trainval', 'val'\]\)",
    ):
        read_yolo(root, "test")


def test_missing_split_folder_names_the_yaml(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    write_yaml(root / "data.yaml", {"train": "../train/images", "val": "../nowhere/images", "names": CLASSES})
    with pytest.raises(BadInputError, match=r"data.yaml: 'val: \.\./nowhere/images' not found \(tried "):
        read_yolo(root, "val")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nc": 2, "names": CLASSES}, r"'nc: 2' does not match the 3 class names"),
        (
            {"names": {0: "cat", 2: "bird"}},
            r"'names' map keys must be the class indices 0\.\.1, got \[0, 2\]",
        ),
        ({"names": "cat"}, "'names' must be a list"),
        ({"names": ["cat", "cat"]}, "class names repeated"),
        ({"nc": "three"}, "'nc' must be a positive whole number"),
        ({"names": None, "nc": None}, "no 'names' list or map"),
    ],
)
def test_bad_names_name_the_yaml(tmp_path, fields, message):
    root = make_roboflow(tmp_path / "rf")
    data = {"train": "../train/images", "val": "../valid/images", "names": CLASSES, **fields}
    write_yaml(root / "data.yaml", {k: v for k, v in data.items() if v is not None})
    with pytest.raises(BadInputError, match=f"data.yaml: {message}"):
        read_yolo(root, "train")


def test_folder_layouts_without_a_yaml(tmp_path):
    # Roboflow's folders with classes.txt instead of data.yaml: valid <-> val.
    rf = make_roboflow(tmp_path / "rf")
    (rf / "data.yaml").unlink()
    (rf / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    assert_split(read_yolo(rf, "val"), "valid")
    assert by_id(read_yolo(rf, "trainval")) == {s: EXPECTED[s] for s in ("t1", "t2", "v1")}
    with pytest.raises(
        FileNotFoundError, match=r"split 'minival' not found \(available: \['test', 'train', 'valid'\]\)"
    ):
        read_yolo(rf, "minival")
    # images/<split>/ with a data.yaml that only names the classes (the layout detlab writes).
    ul = make_ultralytics(tmp_path / "ul")
    write_yaml(ul / "data.yaml", {"names": CLASSES})
    assert_split(read_yolo(ul, "valid"), "valid")
    assert_split(read_yolo(ul, "test"), "test")


def test_layouts_detlab_writes_still_read(tmp_path):
    source = read_yolo(make_roboflow(tmp_path / "rf"))
    flat = write_yolo(source, tmp_path / "flat", copy_images=False)  # images/ + labels/ + classes.txt
    assert by_id(read_yolo(flat)) == by_id(read_yolo(flat, "test")) == EXPECTED
    split = tmp_path / "split"
    for name in ("train", "val"):
        write_yolo(read_yolo(tmp_path / "rf", name), split, split=name)  # images/<split>/ + labels/<split>/
    assert detect_format(split) == "yolo"
    assert_split(read_yolo(split, "val"), "valid")
    assert_split(load_dataset(f"yolo:{split}", "train"), "train")
    assert (
        by_id(read_yolo(split))
        == by_id(read_yolo(split, "trainval"))
        == {s: EXPECTED[s] for s in ("t1", "t2", "v1")}
    )


def test_data_stats_command_reads_a_roboflow_export(tmp_path, capsys):
    root = make_roboflow(tmp_path / "rf")
    assert cli_main(["data", "stats", f"yolo:{root}", "--split", "val"]) == 0
    assert cli_main(["data", "stats", f"yolo:{root}"]) == 0
    assert "dog" in capsys.readouterr().out
    assert cli_main(["data", "stats", f"yolo:{root}", "--split", "minival"]) == 2
    assert "split 'minival' is not defined" in capsys.readouterr().err
