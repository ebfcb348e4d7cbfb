"""detlab's COCO metrics against the COCO API (pycocotools is the oracle here, not the implementation)."""

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detlab.eval.coco import evaluate_coco
from detlab.eval.problem import problem_from_coco

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def oracle(ground_truth: dict, results: list, max_detections: int = 100):
    """The COCO API's (stats, precision, recall) on deep copies (it mutates its input)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else COCO()
        if not results:
            coco_dt.dataset = {"images": ground_truth["images"], "annotations": [], "categories": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"], evaluator.eval["recall"]


def assert_same_as_oracle(ground_truth: dict, results: list, max_detections: int = 100):
    stats, precision, recall = oracle(ground_truth, results, max_detections)
    ours = evaluate_coco(problem_from_coco(ground_truth, results), max_detections=max_detections)
    if max_detections != 100:
        # COCOeval.summarize computes its first number with maxDets=100 hard-coded (-1 when 100 is
        # not a setting); detlab uses the largest setting, i.e. the mean of the oracle's precision.
        defined = precision[..., 0, -1][precision[..., 0, -1] > -1]
        assert ours.stats[0] == pytest.approx(defined.mean(), abs=1e-6)
        stats, ours_stats = stats[1:], ours.stats[1:]
    else:
        ours_stats = ours.stats
    np.testing.assert_allclose(ours_stats, stats, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.precision, precision, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.recall, recall, atol=1e-6, rtol=0)
    return ours


def random_problem(seed: int, num_images: int = 40, num_classes: int = 4, many_on: int | None = 3):
    """A problem with the awkward cases: images with no ground truth, images with no detections,
    crowd regions, one image with far more than 100 detections, scores rounded so they tie,
    boxes of every COCO size, and detections copied exactly from the ground truth (IoU 1)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(100, 900)), int(rng.integers(100, 700))
        images.append({"id": image_id * 3, "width": width, "height": height})  # ids not 1..N
        num_gt = 0 if image_id % 7 == 0 else int(rng.poisson(4))
        gt_boxes = []
        for _ in range(num_gt):
            box_width = float(rng.choice([rng.uniform(2, 30), rng.uniform(30, 100), rng.uniform(100, width)]))
            box_height = float(rng.uniform(2, min(height, box_width * 2)))
            x, y = (
                float(rng.uniform(0, width - min(box_width, width - 1))),
                float(rng.uniform(0, height - box_height)),
            )
            box = [x, y, box_width, box_height]
            category = int(rng.integers(1, num_classes + 1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id * 3,
                    "category_id": category,
                    "bbox": box,
                    "area": box_width * box_height * float(rng.uniform(0.6, 1.0)),  # area field != box area
                    "iscrowd": int(rng.random() < 0.15),
                }
            )
            gt_boxes.append((box, category))
        if image_id % 5 == 0:
            continue  # no detections on this image
        num_dets = 150 if image_id == many_on else int(rng.integers(0, 15))
        for _ in range(num_dets):
            if gt_boxes and rng.random() < 0.6:
                box, category = gt_boxes[int(rng.integers(len(gt_boxes)))]
                if rng.random() < 0.2:
                    det_box = list(box)  # exact copy: IoU exactly 1
                else:
                    jitter = rng.normal(0, 0.15, 4) * [box[2], box[3], box[2], box[3]]
                    det_box = [
                        box[0] + jitter[0],
                        box[1] + jitter[1],
                        max(0.5, box[2] + jitter[2]),
                        max(0.5, box[3] + jitter[3]),
                    ]
                if rng.random() < 0.2:
                    category = int(rng.integers(1, num_classes + 1))
            else:
                w, h = float(rng.uniform(1, width / 2)), float(rng.uniform(1, height / 2))
                det_box = [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h]
                category = int(rng.integers(1, num_classes + 1))
            score = round(float(rng.uniform(0, 1)), 1)  # coarse scores: many ties
            results.append(
                {"image_id": image_id * 3, "category_id": category, "bbox": det_box, "score": score}
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    # a category with no ground truth and no detection, and one with detections only
    categories.append({"id": num_classes + 1, "name": "unused"})
    categories.append({"id": num_classes + 2, "name": "false-only"})
    results.append(
        {"image_id": 3, "category_id": num_classes + 2, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.5}
    )
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.mark.parametrize("seed", range(6))
def test_random_problems_equal_pycocotools(seed):
    ground_truth, results = random_problem(seed)
    assert_same_as_oracle(ground_truth, results)


def test_max_detections_300_equals_pycocotools():
    ground_truth, results = random_problem(11, num_images=15)
    ours = assert_same_as_oracle(ground_truth, results, max_detections=300)
    assert ours.stat_names[8] == "AR300"


def test_empty_results_give_zero_with_warning():
    ground_truth, _ = random_problem(2, num_images=10)
    with pytest.warns(UserWarning, match="no detections"):
        ours = evaluate_coco(problem_from_coco(ground_truth, []))
    stats, _, _ = oracle(ground_truth, [])
    np.testing.assert_allclose(ours.stats, stats, atol=1e-6)
    assert ours.stats[0] == 0.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gt_boxes=st.lists(
        st.tuples(
            st.integers(0, 3),  # image
            st.integers(1, 2),  # category
            st.integers(0, 40),
            st.integers(0, 40),
            st.integers(1, 40),
            st.integers(1, 40),
            st.booleans(),  # crowd
        ),
        max_size=12,
    ),
    det_boxes=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(1, 2),
            st.integers(0, 40),
            st.integers(0, 40),
            st.integers(1, 40),
            st.integers(1, 40),
            st.sampled_from([0.1, 0.5, 0.9]),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_small_integer_problems_equal_pycocotools(gt_boxes, det_boxes):
    # integer coordinates on a small canvas make exact IoU ties and duplicate boxes common
    images = [{"id": image, "width": 100, "height": 100} for image in range(4)]
    annotations = [
        {
            "id": index + 1,
            "image_id": i,
            "category_id": c,
            "bbox": [x, y, w, h],
            "area": float(w * h),
            "iscrowd": int(crowd),
        }
        for index, (i, c, x, y, w, h, crowd) in enumerate(gt_boxes)
    ]
    results = [
        {"image_id": i, "category_id": c, "bbox": [float(x), float(y), float(w), float(h)], "score": s}
        for (i, c, x, y, w, h, s) in det_boxes
    ]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert_same_as_oracle({"images": images, "annotations": annotations, "categories": categories}, results)


@pytest.mark.skipif(not (SHARED_DATA / "bccd").is_dir(), reason="../shared/data/bccd not present")
def test_bccd_test_split_with_perturbed_detections_equals_pycocotools():
    from detlab.data.coco import to_coco_dict
    from detlab.data.voc import read_voc

    dataset = read_voc(SHARED_DATA / "bccd", split="test")
    ground_truth = to_coco_dict(dataset)
    rng = np.random.default_rng(0)
    results = []
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        for _ in range(int(rng.integers(0, 3))):  # misses, single hits and duplicates
            jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
            results.append(
                {
                    "image_id": annotation["image_id"],
                    "category_id": annotation["category_id"]
                    if rng.random() < 0.9
                    else int(rng.integers(1, 4)),
                    "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                    "score": float(rng.uniform(0, 1)),
                }
            )
    for image in ground_truth["images"]:  # background false positives
        for _ in range(int(rng.integers(0, 10))):
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 380)), 60.0, 50.0],
                    "score": float(rng.uniform(0, 0.5)),
                }
            )
    json.dumps(results)  # the results are plain JSON, as a results file would be
    ours = assert_same_as_oracle(ground_truth, results)
    assert 0.2 < ours.stats[1] <= 1.0
    assert_same_as_oracle(ground_truth, results, max_detections=300)


def test_evaluator_on_tensors_equals_pycocotools_on_the_same_json():
    import torch

    from detlab.eval.coco import COCOEvaluator

    rng = np.random.default_rng(5)
    images, annotations, results, predictions, targets = [], [], [], [], []
    for image_id in range(1, 13):
        images.append({"id": image_id, "width": 200, "height": 200})
        corners = rng.integers(0, 150, (int(rng.integers(0, 6)), 2))
        gt_boxes = np.concatenate([corners, corners + rng.integers(2, 50, corners.shape)], 1).astype(float)
        gt_labels = rng.integers(1, 3, len(gt_boxes))
        crowd = rng.random(len(gt_boxes)) < 0.1
        for box, label, is_crowd in zip(gt_boxes, gt_labels, crowd):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "iscrowd": int(is_crowd),
                    "bbox": [box[0], box[1], width, height],
                    "area": width * height,
                }
            )
        shifted = np.concatenate(
            [gt_boxes, gt_boxes[: len(gt_boxes) // 2] + rng.integers(-3, 4, (len(gt_boxes) // 2, 4))]
        )
        det_labels = np.concatenate([gt_labels, gt_labels[: len(gt_boxes) // 2]])
        scores = rng.integers(1, 5, len(shifted)) / 4
        for box, label, score in zip(shifted, det_labels, scores):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
        targets.append(
            {
                "image_id": image_id,
                "boxes": torch.tensor(gt_boxes).float().reshape(-1, 4),
                "labels": torch.tensor(gt_labels),
                "iscrowd": torch.tensor(crowd),
            }
        )
        predictions.append(
            {
                "boxes": torch.tensor(shifted).float().reshape(-1, 4),
                "scores": torch.tensor(scores).float(),
                "labels": torch.tensor(det_labels),
            }
        )
    ground_truth = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    stats, _, _ = oracle(ground_truth, results)
    evaluator = COCOEvaluator(["a", "b"])
    evaluator.update(predictions[:5], targets[:5])  # two batches, as in an evaluation loop
    evaluator.update(predictions[5:], targets[5:])
    np.testing.assert_allclose(evaluator.compute().stats, stats, atol=1e-6)
