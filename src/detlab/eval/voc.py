"""PASCAL VOC detection metrics: per-class average precision and mAP at any IoU threshold.

Rules of the VOC development kit (Everingham et al., "The PASCAL Visual Object Classes (VOC)
Challenge", IJCV 2010, section 4.2): detections of a class are ranked by score over the whole data
set and matched as in :func:`detlab.eval.matching.match_voc`; ``difficult`` objects (and COCO crowd
regions) are neither counted as misses nor turn their detections into false positives.

Two AP definitions:
- ``voc07``: the 2007 11-point interpolation, the mean over recall r in {0, 0.1, ..., 1} of the
  highest precision at recall >= r;
- ``voc``: the area under the precision envelope over all recall points (VOC 2010 onwards).

IoU is computed on continuous coordinates (no "+1" pixel convention), as for every detlab box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detlab.box_arrays import group_pairs, xywh_iou
from detlab.eval.matching import match_voc
from detlab.eval.problem import DetectionAccumulator, DetectionProblem

PROTOCOLS = ("voc07", "voc")


def voc_average_precision(recall: np.ndarray, precision: np.ndarray, use_11_point: bool = False) -> float:
    """AP from a precision/recall curve (``[N]`` each, detections in decreasing score order).

    ``use_11_point``: the VOC 2007 11-point interpolation; otherwise the all-point area.
    An empty curve gives 0.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if recall.size == 0:
        return 0.0
    if use_11_point:
        points = [precision[recall >= threshold].max(initial=0.0) for threshold in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    # Pad so the curve starts at recall 0 and ends at recall 1 with precision 0, take the envelope
    # (best precision at any higher recall), then sum the rectangles where recall changes.
    padded_recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1])
    return float(np.sum((padded_recall[steps + 1] - padded_recall[steps]) * envelope[steps + 1]))


@dataclass
class VocResult:
    """Per-class AP, curves and mAP. ``per_class`` rows: class, num_gt (non-difficult),
    num_detections, true_positives, AP (NaN for a class without ground truth, left out of mAP)."""

    protocol: str
    iou_threshold: float
    class_names: list[str]
    per_class_rows: list[dict]
    curves: dict[str, tuple[list[float], list[float]]]
    problem: DetectionProblem | None = field(default=None, repr=False)  # what was scored

    @property
    def mean_ap(self) -> float:
        values = [row["AP"] for row in self.per_class_rows if not np.isnan(row["AP"])]
        return float(np.mean(values)) if values else 0.0

    def summary(self) -> dict[str, float]:
        return {f"mAP@{self.iou_threshold:g}": self.mean_ap}

    def per_class(self) -> list[dict]:
        return self.per_class_rows

    def pr_curve(self, class_index: int) -> tuple[list[float], list[float]]:
        return self.curves[self.class_names[class_index]]


def evaluate_voc(
    problem: DetectionProblem, iou_threshold: float = 0.5, use_11_point: bool = False
) -> VocResult:
    """VOC AP of every class of ``problem`` at ``iou_threshold`` (0.5 in the VOC challenge)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_classes = problem.num_classes
    det_groups = problem.det_image * num_classes + problem.det_category
    gt_groups = problem.gt_image * num_classes + problem.gt_category
    pair_det, pair_gt = group_pairs(det_groups, gt_groups)
    overlaps = xywh_iou(problem.det_boxes[pair_det], problem.gt_boxes[pair_gt])
    gt_ignored = problem.gt_difficult | problem.gt_crowd
    det_order = np.lexsort((np.arange(len(det_groups)), -problem.det_scores))
    true_positive, ignored = match_voc(
        det_order, pair_det, pair_gt, overlaps, gt_ignored, iou_threshold, len(det_groups)
    )
    rows, curves = [], {}
    for k, name in enumerate(problem.class_names):
        num_positive = int(np.sum((problem.gt_category == k) & ~gt_ignored))
        ranked = det_order[(problem.det_category[det_order] == k) & ~ignored[det_order]]
        hits = true_positive[ranked]
        tp_sum, fp_sum = np.cumsum(hits), np.cumsum(~hits)
        recall = tp_sum / max(num_positive, 1)
        precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
        average_precision = (
            voc_average_precision(recall, precision, use_11_point) if num_positive else float("nan")
        )
        rows.append(
            {
                "class": name,
                "category_id": problem.category_ids[k],
                "num_gt": num_positive,
                "num_detections": int(np.sum(problem.det_category == k)),
                "true_positives": int(hits.sum()),
                "AP": average_precision,
            }
        )
        curves[name] = (recall.tolist(), precision.tolist())
    return VocResult(
        protocol="voc07" if use_11_point else "voc",
        iou_threshold=iou_threshold,
        class_names=list(problem.class_names),
        per_class_rows=rows,
        curves=curves,
        problem=problem,
    )


class VOCEvaluator(DetectionAccumulator):
    """Accumulates detector outputs and targets (``difficult`` honoured), then computes VOC AP.

    ``use_11_point=True`` gives the VOC 2007 metric; ``iou_threshold`` may be any value in (0, 1].
    """

    def __init__(self, class_names: list[str], iou_threshold: float = 0.5, use_11_point: bool = False):
        super().__init__(class_names)
        self.iou_threshold = iou_threshold
        self.use_11_point = use_11_point

    def compute(self) -> VocResult:
        return evaluate_voc(self.problem(), self.iou_threshold, self.use_11_point)
