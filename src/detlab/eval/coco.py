"""COCO detection metrics: the 12 standard numbers, equal to the COCO API's (``pycocotools``).

The rules are those of ``COCOeval`` for boxes (Lin et al., "Microsoft COCO", 2014, and the COCO
detection evaluation page): IoU thresholds 0.50:0.05:0.95; 101 recall points 0:0.01:1; area ranges
all / small (< 32^2) / medium / large (> 96^2) judged by the ground truth's ``area`` field and by a
detection's own box area; at most ``max_detections`` detections per image *and class*; crowd regions
(and, in detlab, VOC ``difficult`` objects) can absorb detections without counting as misses.

The implementation is vectorised over the whole data set instead of looping image by image:
detections are sorted once, IoU is computed only for ``(detection, ground truth)`` pairs of the
same image and class, greedy matching runs in rounds across all groups (see
:func:`detlab.eval.matching.match_coco`), and the precision envelope is taken per class.

Shape letters: T IoU thresholds, R recall points, K classes, A area ranges, M max-detection settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detlab.eval.matching import group_pairs, match_coco, pair_iou, rank_within_groups
from detlab.eval.problem import DetectionAccumulator, DetectionProblem, problem_from_coco_files

# np.linspace with these arguments is how the COCO API builds its grids; the same floats matter
# because the summary looks thresholds up by equality.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR{m}", "ARs", "ARm", "ARl")


@dataclass
class CocoResult:
    """Everything :func:`evaluate_coco` computed.

    ``precision``: ``[T, R, K, A, M]`` interpolated precision at each recall point, -1 where a class
    has no (non-ignored) ground truth; ``recall``: ``[T, K, A, M]`` final recall, -1 likewise.
    ``stats``: the 12 summary numbers in the COCO API's order (-1 when undefined).
    """

    precision: np.ndarray
    recall: np.ndarray
    stats: np.ndarray
    stat_names: list[str]
    iou_thresholds: np.ndarray
    area_names: list[str]
    max_detections: list[int]
    class_names: list[str]
    category_ids: list
    num_gt: np.ndarray
    num_detections: np.ndarray

    def summary(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.stat_names, self.stats)}

    def per_class(self) -> list[dict]:
        """AP, AP50, AP75 and AR of each class (area ``all``, the largest max-detections)."""
        rows = []
        fifty, seventy_five = (
            _threshold_index(self.iou_thresholds, 0.5),
            _threshold_index(self.iou_thresholds, 0.75),
        )
        for k, name in enumerate(self.class_names):
            precision = self.precision[:, :, k, 0, -1]
            rows.append(
                {
                    "class": name,
                    "category_id": self.category_ids[k],
                    "num_gt": int(self.num_gt[k]),
                    "num_detections": int(self.num_detections[k]),
                    "AP": _mean_defined(precision),
                    "AP50": _mean_defined(precision[fifty]) if fifty is not None else -1.0,
                    "AP75": _mean_defined(precision[seventy_five]) if seventy_five is not None else -1.0,
                    "AR": _mean_defined(self.recall[:, k, 0, -1]),
                }
            )
        return rows

    def pr_curve(self, class_index: int, iou_threshold: float = 0.5) -> tuple[list[float], list[float]]:
        """``(recall points, interpolated precision)`` of one class at one IoU threshold (area all)."""
        t = _threshold_index(self.iou_thresholds, iou_threshold)
        if t is None:
            raise ValueError(
                f"IoU {iou_threshold} is not one of the evaluated thresholds {self.iou_thresholds}"
            )
        precision = self.precision[t, :, class_index, 0, -1]
        return RECALL_THRESHOLDS.tolist(), np.clip(precision, 0, None).tolist()


def _true_positives_needed(num_positive: np.ndarray) -> np.ndarray:
    """``[K, A]`` counts -> ``[K, A, R]``: the fewest true positives whose recall, computed as the COCO
    API does (``tp / num_positive`` in float64), reaches each recall point (``num_positive + 1``
    when it cannot be reached)."""
    total = num_positive[..., None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.ceil(RECALL_THRESHOLDS * total)
        for _ in range(2):  # ceil() may be one off after rounding; settle on the exact float comparison
            needed = np.where((needed > 0) & ((needed - 1) / total >= RECALL_THRESHOLDS), needed - 1, needed)
            needed = np.where(needed / total < RECALL_THRESHOLDS, needed + 1, needed)
    return np.minimum(needed, total + 1).astype(np.int64)


def _threshold_index(thresholds: np.ndarray, value: float) -> int | None:
    found = np.flatnonzero(np.isclose(thresholds, value, atol=1e-12))
    return int(found[0]) if len(found) else None


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def evaluate_coco(
    problem: DetectionProblem,
    max_detections: int = 100,
    iou_thresholds: np.ndarray | None = None,
    area_ranges: dict[str, tuple[float, float]] | None = None,
) -> CocoResult:
    """The COCO box metrics of ``problem``.

    ``max_detections``: the largest of the three per-image limits ``(1, 10, max_detections)``
    (100 in the standard); ``iou_thresholds`` default 0.50:0.05:0.95; ``area_ranges``
    ``{name: (min_area, max_area)}`` default all/small/medium/large (the summary's APs/APm/APl
    need those names). With the defaults the 12 numbers equal the COCO API's.
    """
    iou_thresholds = IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
    area_ranges = AREA_RANGES if area_ranges is None else dict(area_ranges)
    if max_detections < 10:
        raise ValueError(
            f"max_detections must be at least 10 (the limits are 1, 10 and it), got {max_detections}"
        )
    max_detection_settings = sorted({1, 10, int(max_detections)})
    area_names = list(area_ranges)
    area_bounds = np.array([area_ranges[name] for name in area_names], np.float64)  # [A, 2]
    num_classes = problem.num_classes
    num_areas, num_thresholds = len(area_names), len(iou_thresholds)
    num_settings, num_recall = len(max_detection_settings), len(RECALL_THRESHOLDS)

    # Detections in the COCO API's order within each (image, class): by score, ties in file order.
    det_groups = problem.det_image * num_classes + problem.det_category
    by_score = np.lexsort((np.arange(len(det_groups)), -problem.det_scores, det_groups))
    det_rank = rank_within_groups(det_groups, by_score)
    kept = np.flatnonzero(det_rank < max_detection_settings[-1])
    det_groups, det_rank = det_groups[kept], det_rank[kept]
    det_boxes, det_scores = problem.det_boxes[kept], problem.det_scores[kept]
    det_image, det_category = problem.det_image[kept], problem.det_category[kept]
    num_detections = len(kept)

    gt_groups = problem.gt_image * num_classes + problem.gt_category
    gt_ignore_any = problem.gt_crowd | problem.gt_difficult
    gt_outside = (problem.gt_area[None, :] < area_bounds[:, :1]) | (
        problem.gt_area[None, :] > area_bounds[:, 1:]
    )
    gt_ignore = gt_ignore_any[None, :] | gt_outside  # [A, G]

    pair_det, pair_gt = group_pairs(det_groups, gt_groups)
    overlaps = pair_iou(det_boxes[pair_det], problem.gt_boxes[pair_gt], problem.gt_crowd[pair_gt])
    candidate = overlaps >= min(iou_thresholds.min(), 1 - 1e-10)
    pair_det, pair_gt, overlaps = pair_det[candidate], pair_gt[candidate], overlaps[candidate]
    # Round of a candidate detection: its rank among the candidate detections of its group.
    candidate_dets = np.unique(pair_det)
    det_round = np.zeros(num_detections, np.int64)
    if len(candidate_dets):
        order = np.lexsort((det_rank[candidate_dets], det_groups[candidate_dets]))
        det_round[candidate_dets] = rank_within_groups(det_groups[candidate_dets], order)
    pair_order = np.lexsort((pair_gt, pair_det, det_round[pair_det]))
    pair_det, pair_gt, overlaps = pair_det[pair_order], pair_gt[pair_order], overlaps[pair_order]
    matched_gt = match_coco(
        pair_det,
        pair_gt,
        overlaps,
        det_round[pair_det],
        problem.gt_crowd,
        gt_ignore,
        iou_thresholds,
        num_detections,
    )  # [A, T, D]

    matched = matched_gt >= 0
    area_index = np.arange(num_areas)[:, None, None]
    det_area = det_boxes[:, 2] * det_boxes[:, 3]
    det_outside = (det_area[None, :] < area_bounds[:, :1]) | (
        det_area[None, :] > area_bounds[:, 1:]
    )  # [A, D]
    # index -1 (unmatched) reads the padding column; np.where then takes det_outside for those
    gt_ignore_padded = np.concatenate([gt_ignore, np.zeros((num_areas, 1), bool)], axis=1)
    det_ignored = np.where(matched, gt_ignore_padded[area_index, matched_gt], det_outside[:, None, :])
    true_positive = matched & ~det_ignored
    false_positive = ~matched & ~det_ignored

    # The COCO API's global order per class: by score, ties by image order, then by rank in image.
    class_order = np.lexsort((det_rank, det_image, -det_scores, det_category))
    class_starts = np.searchsorted(det_category[class_order], np.arange(num_classes + 1))
    num_gt_counted = np.zeros((num_classes, num_areas), np.int64)
    for a in range(num_areas):
        num_gt_counted[:, a] = np.bincount(problem.gt_category[~gt_ignore[a]], minlength=num_classes)

    precision = -np.ones((num_thresholds, num_recall, num_classes, num_areas, num_settings))
    recall = -np.ones((num_thresholds, num_classes, num_areas, num_settings))
    # rows of the curves below: (area, threshold) pairs, A * T of them
    row_positive = np.repeat(num_gt_counted, num_thresholds, axis=1)  # [K, A * T]
    needed = _true_positives_needed(num_gt_counted)  # [K, A, R]
    for k in range(num_classes):
        counted = num_gt_counted[k] > 0  # [A]
        if not counted.any():
            continue
        indices = class_order[class_starts[k] : class_starts[k + 1]]
        for m, limit in enumerate(max_detection_settings):
            selected = indices[det_rank[indices] < limit]
            num_selected = len(selected)
            if num_selected == 0:
                recall[:, k, counted, m] = 0
                precision[:, :, k, counted, m] = 0
                continue
            tp_count = np.cumsum(true_positive[:, :, selected], axis=2).reshape(-1, num_selected)  # [A*T, n]
            fp_count = np.cumsum(false_positive[:, :, selected], axis=2).reshape(-1, num_selected)
            tp_sum = tp_count.astype(np.float64)
            precision_curve = tp_sum / (fp_count + tp_sum + np.spacing(1))
            # precision envelope: the best precision at this recall or any higher one
            precision_curve = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                final_recall = tp_sum[:, -1] / row_positive[k]
            # First position whose recall reaches each recall point. Recall is tp / num_positive,
            # so that is the first position with at least `needed` true positives: an integer
            # search, done for all rows at once by offsetting each row's counts.
            num_rows = tp_count.shape[0]
            offsets = np.arange(num_rows)[:, None] * (num_selected + 2)
            targets = np.repeat(needed[k], num_thresholds, axis=0) + offsets  # [A*T, R]
            positions = np.searchsorted((tp_count + offsets).ravel(), targets.ravel(), side="left").reshape(
                num_rows, -1
            )
            positions -= np.arange(num_rows)[:, None] * num_selected
            reached = positions < num_selected
            values = np.where(
                reached, np.take_along_axis(precision_curve, np.minimum(positions, num_selected - 1), 1), 0.0
            )
            values = values.reshape(num_areas, num_thresholds, num_recall)
            final_recall = final_recall.reshape(num_areas, num_thresholds)
            precision[:, :, k, counted, m] = values[counted].transpose(1, 2, 0)
            recall[:, k, counted, m] = final_recall[counted].T

    stats, names = _summarize(precision, recall, iou_thresholds, area_names, max_detection_settings)
    return CocoResult(
        precision=precision,
        recall=recall,
        stats=stats,
        stat_names=names,
        iou_thresholds=iou_thresholds,
        area_names=area_names,
        max_detections=max_detection_settings,
        class_names=list(problem.class_names),
        category_ids=list(problem.category_ids),
        num_gt=np.bincount(problem.gt_category[~gt_ignore_any], minlength=num_classes),
        num_detections=np.bincount(det_category, minlength=num_classes),
    )


def _summarize(precision, recall, iou_thresholds, area_names, max_detection_settings):
    """The 12 numbers of ``COCOeval.summarize`` (mean over defined entries, -1 if none)."""
    largest = max_detection_settings[-1]

    def average(kind: str, iou: float | None = None, area: str = "all", limit: int = largest) -> float:
        if area not in area_names or limit not in max_detection_settings:
            return -1.0
        a, m = area_names.index(area), max_detection_settings.index(limit)
        values = precision[:, :, :, a, m] if kind == "precision" else recall[:, :, a, m]
        if iou is not None:
            t = np.flatnonzero(iou == iou_thresholds)
            values = values[t]
        return _mean_defined(values)

    stats = np.array(
        [
            average("precision"),
            average("precision", iou=0.5),
            average("precision", iou=0.75),
            average("precision", area="small"),
            average("precision", area="medium"),
            average("precision", area="large"),
            average("recall", limit=max_detection_settings[0]),
            average("recall", limit=max_detection_settings[1]),
            average("recall"),
            average("recall", area="small"),
            average("recall", area="medium"),
            average("recall", area="large"),
        ]
    )
    names = [name.replace("{m}", str(largest)) for name in STAT_NAMES]
    return stats, names


def evaluate_coco_files(gt_path, results_path, max_detections: int = 100) -> CocoResult:
    """COCO metrics of a COCO results JSON against a COCO ground-truth JSON (no image files needed)."""
    return evaluate_coco(problem_from_coco_files(gt_path, results_path), max_detections=max_detections)


class COCOEvaluator(DetectionAccumulator):
    """Accumulates detector outputs image by image, then computes the COCO metrics.

    ``update(predictions, targets)`` takes the detector contract's per-image dicts
    (``{"boxes" xyxy, "scores", "labels"}``) and the data set's target dicts (``image_id`` must be
    distinct across updates); ``compute()`` returns :class:`CocoResult`. The ground-truth area used
    for the size ranges is the box area; ``difficult`` objects are treated as ignored regions.
    """

    def __init__(
        self,
        class_names: list[str],
        max_detections: int = 100,
        iou_thresholds: np.ndarray | None = None,
        area_ranges: dict[str, tuple[float, float]] | None = None,
    ):
        super().__init__(class_names)
        self.max_detections = max_detections
        self.iou_thresholds = iou_thresholds
        self.area_ranges = area_ranges

    def compute(self) -> CocoResult:
        return evaluate_coco(self.problem(), self.max_detections, self.iou_thresholds, self.area_ranges)
