"""Readers, writers and `detlab convert` across VOC, COCO and YOLO."""

import json

import pytest
import torch

from detlab.cli import main as cli_main
from detlab.data.coco import read_coco, write_coco
from detlab.data.loading import detect_format, load_dataset
from detlab.data.voc import read_voc, write_voc
from detlab.data.yolo import read_yolo, write_yolo


def assert_same_annotations(first, second, tolerance=1.0):
    """Same images (by id), same labels (by class name), every box within ``tolerance`` pixels."""
    by_id = {str(r.image_id): r for r in second.records}
    assert len(first.records) == len(second.records)
    for record in first.records:
        other = by_id[str(record.image_id)]
        names = [first.classes[i - 1] for i in record.labels.tolist()]
        other_names = [second.classes[i - 1] for i in other.labels.tolist()]
        assert names == other_names, record.image_id
        assert record.boxes.shape == other.boxes.shape, record.image_id
        if len(record.boxes):
            assert (record.boxes - other.boxes).abs().max().item() <= tolerance, record.image_id


def round_trip(source, tmp_path):
    """VOC -> COCO -> YOLO -> VOC, each step read back from disk."""
    write_coco(source, tmp_path / "coco" / "ann.json", image_dir=tmp_path / "coco" / "images")
    coco = read_coco(tmp_path / "coco" / "ann.json")
    write_yolo(coco, tmp_path / "yolo")
    yolo = read_yolo(tmp_path / "yolo")
    # YOLO names images by their file stem; COCO kept the VOC ids as file names, so ids line up.
    write_voc(yolo, tmp_path / "voc")
    return coco, yolo, read_voc(tmp_path / "voc")


def test_round_trip_on_synthetic(synthetic_root, tmp_path):
    source = read_voc(synthetic_root)
    coco, yolo, back = round_trip(source, tmp_path)
    assert coco.classes == yolo.classes == back.classes == source.classes
    assert_same_annotations(source, back)
    assert_same_annotations(source, yolo)
    assert sum(len(r.boxes) for r in back.records) == sum(len(r.boxes) for r in source.records) > 0


def test_round_trip_on_bccd(bccd_root, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the two known zero-size boxes
        source = read_voc(bccd_root, "test")
    _, _, back = round_trip(source, tmp_path)
    assert back.classes == source.classes == ["Platelets", "RBC", "WBC"]
    assert_same_annotations(source, back)


def test_real_sets_load(bccd_root, raccoon_root):
    with pytest.warns(UserWarning, match="zero-size"):
        bccd = read_voc(bccd_root)
    assert len(bccd) == 364 and bccd.classes == ["Platelets", "RBC", "WBC"]
    assert sum(len(r.boxes) for r in bccd.records) == 4888 - 2
    assert [len(read_voc(bccd_root, s)) for s in ("train", "val", "trainval", "test")] == [205, 87, 292, 72]
    raccoon = read_voc(raccoon_root)
    assert len(raccoon) == 200 and raccoon.classes == ["raccoon"]
    assert sum(len(r.boxes) for r in raccoon.records) == 217
    # The greyscale JPEGs load as 3-channel images like the rest.
    shapes = {raccoon[i][0].shape[0] for i in range(len(raccoon))}
    assert shapes == {3}


def test_coco_category_ids_kept(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "x.jpg")
    data = {
        "images": [{"id": 10, "file_name": "x.jpg", "width": 50, "height": 40}],
        "categories": [{"id": 90, "name": "b"}, {"id": 3, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 90, "bbox": [1, 2, 10, 20], "iscrowd": 1},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5, 5, 5, 5]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    dataset = read_coco(tmp_path / "ann.json")
    assert dataset.classes == ["a", "b"] and dataset.category_ids == [3, 90]
    record = dataset.records[0]
    assert record.image_id == 10
    assert record.labels.tolist() == [2, 1] and record.iscrowd.tolist() == [True, False]
    assert record.boxes[0].tolist() == [1, 2, 11, 22]
    write_coco(dataset, tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text())
    assert sorted(c["id"] for c in written["categories"]) == [3, 90]
    assert {a["category_id"] for a in written["annotations"]} == {3, 90}
    assert written["images"][0]["id"] == 10


def test_format_detection_and_specs(synthetic_root, tmp_path):
    assert detect_format(synthetic_root) == "voc"
    write_yolo(read_voc(synthetic_root, "test"), tmp_path / "y", split="test")
    assert detect_format(tmp_path / "y") == "yolo"
    assert len(load_dataset(f"yolo:{tmp_path / 'y'}", "test")) == len(read_voc(synthetic_root, "test"))
    with pytest.raises(FileNotFoundError, match="split 'nope' not found"):
        load_dataset(str(synthetic_root), "nope")


def test_convert_command(synthetic_root, tmp_path, capsys):
    assert (
        cli_main(
            ["convert", f"voc:{synthetic_root}", f"coco:{tmp_path / 'c' / 'ann.json'}", "--split", "train"]
        )
        == 0
    )
    assert cli_main(["convert", str(tmp_path / "c" / "ann.json"), f"yolo:{tmp_path / 'y'}"]) == 0
    assert cli_main(["convert", f"yolo:{tmp_path / 'y'}", str(tmp_path / "v"), "--to", "voc"]) == 0
    assert_same_annotations(read_voc(synthetic_root, "train"), read_voc(tmp_path / "v"))
    assert "converted" in capsys.readouterr().out


def test_dataset_item_follows_contract(synthetic_root):
    dataset = read_voc(synthetic_root, "train")
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and (target["labels"] >= 1).all()
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
