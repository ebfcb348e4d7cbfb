import math

import numpy as np
import pytest
import torch

from detlab.eval.voc import VOCEvaluator, voc_average_precision


def prediction(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def target(image_id, boxes, labels, difficult=None):
    return {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(
            difficult if difficult is not None else [False] * len(labels), dtype=torch.bool
        ),
    }


def hand_problem():
    """Image A: a box and a difficult box; image B: one box. Five detections of class 1:
    0.9 exact on A's box (TP), 0.8 the same box again (duplicate: FP), 0.7 on the difficult box
    (ignored), 0.6 on empty space in B (FP), 0.5 exact on B's box (TP).
    Ranked without the ignored one: TP FP FP TP -> recall .5 .5 .5 1, precision 1 .5 1/3 .5."""
    targets = [
        target("A", [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [False, True]),
        target("B", [[0, 0, 10, 10]], [1]),
    ]
    predictions = [
        prediction([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1]),
        prediction([[50, 50, 60, 60], [0, 0, 10, 10]], [0.6, 0.5], [1, 1]),
    ]
    return predictions, targets


def test_all_point_ap_hand_computed():
    evaluator = VOCEvaluator(["thing", "absent"], use_11_point=False)
    evaluator.update(*hand_problem())
    result = evaluator.compute()
    # envelope 1 up to recall .5, then .5 up to recall 1: 0.5 * 1 + 0.5 * 0.5
    assert result.per_class()[0]["AP"] == pytest.approx(0.75)
    assert result.per_class()[0]["num_gt"] == 2  # the difficult box is not counted
    assert result.per_class()[0]["true_positives"] == 2
    # a class without ground truth has no AP and stays out of the mean
    assert math.isnan(result.per_class()[1]["AP"])
    assert result.mean_ap == pytest.approx(0.75)
    recall, precision = result.pr_curve(0)
    np.testing.assert_allclose(recall, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 1 / 3, 0.5])


def test_11_point_ap_hand_computed():
    evaluator = VOCEvaluator(["thing", "absent"], use_11_point=True)
    evaluator.update(*hand_problem())
    # recall points 0 .. 0.5 reach precision 1 (6 points), 0.6 .. 1.0 reach 0.5 (5 points)
    assert evaluator.compute().mean_ap == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)


def test_ap_function_edge_cases():
    assert voc_average_precision(np.array([]), np.array([])) == 0.0
    assert voc_average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    assert voc_average_precision(np.array([1.0]), np.array([1.0]), use_11_point=True) == pytest.approx(1.0)
    # recall 0.25 with perfect precision, nothing after: all-point 0.25; 11-point 3 of 11 points
    assert voc_average_precision(np.array([0.25]), np.array([1.0])) == pytest.approx(0.25)
    assert voc_average_precision(np.array([0.25]), np.array([1.0]), use_11_point=True) == pytest.approx(
        3 / 11
    )


def test_iou_threshold_changes_the_verdict():
    # detection shifted by 2 px on a 10x10 box: IoU = 80 / 120 = 0.667
    targets = [target(1, [[0, 0, 10, 10]], [1])]
    predictions = [prediction([[2, 0, 12, 10]], [0.9], [1])]
    for threshold, expected in ((0.5, 1.0), (0.6, 1.0), (0.7, 0.0)):
        evaluator = VOCEvaluator(["thing"], iou_threshold=threshold)
        evaluator.update(predictions, targets)
        assert evaluator.compute().mean_ap == pytest.approx(expected)


def test_voc_does_not_fall_back_to_second_best_box():
    # two overlapping boxes; the second detection overlaps the first (claimed) box best, so the
    # VOC devkit counts it as a duplicate even though it also overlaps the free box by 0.54
    targets = [target(1, [[0, 0, 10, 10], [4, 0, 14, 10]], [1, 1])]
    predictions = [prediction([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], [1, 1])]
    evaluator = VOCEvaluator(["thing"])
    evaluator.update(predictions, targets)
    row = evaluator.compute().per_class()[0]
    assert row["true_positives"] == 1
    # TP, FP -> recall .5 at precision 1, never more: AP 0.5
    assert row["AP"] == pytest.approx(0.5)


def test_evaluator_rejects_bad_labels_and_counts():
    evaluator = VOCEvaluator(["thing"])
    with pytest.raises(ValueError, match="one per image"):
        evaluator.update([], [target(1, [[0, 0, 1, 1]], [1])])
    evaluator.update([prediction([[0, 0, 1, 1]], [0.5], [2])], [target(1, [[0, 0, 1, 1]], [1])])
    with pytest.raises(ValueError, match="labels must be in 1..1"):
        evaluator.compute()


def reference_voc_ap(predictions, targets, num_classes, threshold, use_11_point):
    """A plain loop over detections, written straight from the devkit's description."""
    from detlab.box_arrays import iou as pairwise_iou

    average_precisions = []
    for label in range(1, num_classes + 1):
        detections = []  # (score, order, image, box)
        for image, prediction in enumerate(predictions):
            for box, score, det_label in zip(
                prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["labels"].tolist()
            ):
                if det_label == label:
                    detections.append((score, len(detections), image, box))
        detections.sort(key=lambda d: (-d[0], d[1]))
        claimed = [set() for _ in targets]
        num_positive = sum(int(((t["labels"] == label) & ~t["difficult"]).sum()) for t in targets)
        hits = []
        for _, _, image, box in detections:
            mask = targets[image]["labels"] == label
            gt_boxes = targets[image]["boxes"][mask].numpy()
            difficult = targets[image]["difficult"][mask].tolist()
            if len(gt_boxes) == 0:
                hits.append(False)
                continue
            overlaps = pairwise_iou(np.array([box]), gt_boxes)[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= threshold:
                if difficult[best]:
                    continue
                hits.append(best not in claimed[image])
                claimed[image].add(best)
            else:
                hits.append(False)
        if num_positive == 0:
            continue
        hits = np.array(hits, dtype=bool)
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        recall, precision = tp / num_positive, tp / np.maximum(tp + fp, 1e-12)
        average_precisions.append(voc_average_precision(recall, precision, use_11_point))
    return float(np.mean(average_precisions))


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_matching_equals_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for image_id in range(15):
        corners = rng.integers(0, 60, (int(rng.integers(0, 6)), 2))
        gt_boxes = np.concatenate([corners, corners + rng.integers(3, 30, corners.shape)], 1)
        labels = rng.integers(1, 4, len(gt_boxes))
        targets.append(
            target(image_id, gt_boxes.tolist(), labels.tolist(), (rng.random(len(gt_boxes)) < 0.2).tolist())
        )
        copies = (
            rng.integers(0, len(gt_boxes) + 1, int(rng.integers(0, 10)))
            if len(gt_boxes)
            else np.zeros(0, int)
        )
        det_boxes = [
            (gt_boxes[i] + rng.integers(-4, 5, 4)).tolist() if i < len(gt_boxes) else [0, 0, 10, 10]
            for i in copies
        ]
        det_labels = [int(labels[i]) if i < len(gt_boxes) else 1 for i in copies]
        predictions.append(
            prediction(det_boxes, (rng.integers(1, 6, len(det_boxes)) / 5).tolist(), det_labels)
        )
    for threshold, use_11_point in ((0.5, False), (0.7, True), (0.3, False)):
        evaluator = VOCEvaluator(["a", "b", "c"], iou_threshold=threshold, use_11_point=use_11_point)
        evaluator.update(predictions, targets)
        expected = reference_voc_ap(predictions, targets, 3, threshold, use_11_point)
        assert evaluator.compute().mean_ap == pytest.approx(expected, abs=1e-12)
