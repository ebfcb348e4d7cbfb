import pytest
import torch

from detlab.eval import coco_result_entries
from detlab.eval.evaluate import to_coco_results


def old_engine_coco_results(prediction: dict, image_id: int) -> list[dict]:
    """The writer detlab.engine.predict had (``coco_results``), copied as the expected output."""
    entries = []
    for box, score, label in zip(
        prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["labels"].tolist()
    ):
        x1, y1, x2, y2 = box
        entries.append(
            {
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(score), 5),
            }
        )
    return entries


PREDICTION = {
    "boxes": torch.tensor(
        [[10.123456, 20.5, 30.0, 60.25], [0.0, 1.0, 2.0, 3.0], [5.555, 6.666, 7.777, 8.888]]
    ),
    "scores": torch.tensor([0.123456789, 0.9, 0.333333]),
    "labels": torch.tensor([2, 1, 2]),
}


def test_rounded_entries_equal_the_old_engine_writer():
    entries = coco_result_entries(
        PREDICTION["boxes"], PREDICTION["scores"], PREDICTION["labels"], image_id=7, decimals=2
    )
    assert entries == old_engine_coco_results(PREDICTION, 7)
    # and by hand, the first one
    assert entries[0] == {
        "image_id": 7,
        "category_id": 2,
        "bbox": [10.12, 20.5, 19.88, 39.75],
        "score": 0.12346,
    }


def test_unrounded_entries_map_labels_through_category_ids():
    entries = coco_result_entries(
        [[10.0, 20.0, 30.5, 60.0], [1.0, 2.0, 4.0, 8.0]],
        [0.25, 0.123456789],
        [2, 1],
        image_id="BloodImage_00007",
        category_ids=[17, 42],
    )
    assert entries == [
        {"image_id": "BloodImage_00007", "category_id": 42, "bbox": [10.0, 20.0, 20.5, 40.0], "score": 0.25},
        {
            "image_id": "BloodImage_00007",
            "category_id": 17,
            "bbox": [1.0, 2.0, 3.0, 6.0],
            "score": 0.123456789,
        },
    ]
    assert all(type(entry["category_id"]) is int for entry in entries)


def test_to_coco_results_equals_its_old_loop(tmp_path):
    from detlab.box_arrays import xyxy_to_xywh
    from detlab.data.schema import DetectionDataset, Record

    records = [
        Record("b", tmp_path / "b.jpg", 50, 50, torch.tensor([[1.0, 2, 20, 30]]), torch.tensor([2])),
        Record("a", tmp_path / "a.jpg", 50, 50, torch.tensor([[5.0, 5, 15, 15]]), torch.tensor([1])),
    ]
    dataset = DetectionDataset(records, ["x", "y"])
    dataset.category_ids = [3, 9]
    predictions = [PREDICTION, {key: value[:1] for key, value in PREDICTION.items()}]
    expected = []  # to_coco_results as it was before coco_result_entries
    for image_id, prediction in zip(["b", "a"], predictions):
        boxes = xyxy_to_xywh(prediction["boxes"]).tolist()
        for box, score, label in zip(
            boxes, prediction["scores"].double().tolist(), prediction["labels"].tolist()
        ):
            expected.append(
                {"image_id": image_id, "category_id": [3, 9][label - 1], "bbox": box, "score": score}
            )
    assert to_coco_results(predictions, dataset) == expected
    assert [entry["category_id"] for entry in expected] == [9, 3, 9, 9]


def test_no_detections_and_bad_input():
    assert (
        coco_result_entries(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 1) == []
    )
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        coco_result_entries([[0.0, 0, 1, 1]], [0.5], [0], 1, category_ids=[5, 6])
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        coco_result_entries([[0.0, 0, 1, 1], [0.0, 0, 2, 2]], [0.5], [1], 1)
