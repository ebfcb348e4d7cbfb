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

Shape letters: T IoU thresholds, R recall points, K classes, A area ranges, M max-detection settings,
D detections, G ground-truth boxes, P candidate (detection, ground truth) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detlab.box_arrays import group_pairs, xywh_iou
from detlab.eval.errors import f1_curves
from detlab.eval.matching import match_coco, rank_within_groups
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
    ``operating_point``: from :class:`COCOEvaluator` (not part of the COCO API's numbers), the
    score threshold with the best mean F1 at IoU 0.5 (:func:`detlab.eval.errors.f1_curves`):
    ``{"best_f1_confidence", "best_f1"}``; empty from :func:`evaluate_coco` alone.
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
    operating_point: dict[str, float] = field(default_factory=dict)
    problem: DetectionProblem | None = field(default=None, repr=False)  # what was scored

    def summary(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.stat_names, self.stats)}

    def scalars(self) -> dict[str, float]:
        """:meth:`summary` and the operating point: the numbers a training run logs and stores."""
        return {**self.summary(), **self.operating_point}

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


@dataclass
class _RankedDetections:
    """The detections that take part: at most the largest max-detections setting per group.

    A group is one ``(image, class)`` pair; D detections kept, in file order.
    ``groups``: int64 ``[D]`` ``image * K + class``; ``rank``: int64 ``[D]`` position within the group
    by score (ties in file order); ``boxes``: float64 ``[D, 4]`` ``(x, y, width, height)``;
    ``scores``: ``[D]``; ``image`` / ``category``: int64 ``[D]`` indices into the problem's lists.
    """

    groups: np.ndarray
    rank: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    image: np.ndarray
    category: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)


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
    max_detection_settings = _max_detection_settings(max_detections)
    area_names = list(area_ranges)
    area_bounds = np.array([area_ranges[name] for name in area_names], np.float64)  # [A, 2]

    detections = _rank_detections(problem, max_detection_settings[-1])
    gt_ignore = _ignored_ground_truth(problem, area_bounds)
    pairs = _candidate_pairs(problem, detections, iou_thresholds)
    pair_det, pair_gt, overlaps, pair_round = _order_pairs_by_round(*pairs, detections)
    matched_gt = match_coco(
        pair_det, pair_gt, overlaps, pair_round, problem.gt_crowd, gt_ignore, iou_thresholds, len(detections)
    )  # [A, T, D]
    true_positive, false_positive = _true_and_false_positives(matched_gt, gt_ignore, detections, area_bounds)
    num_gt_counted = _count_ground_truth(problem, gt_ignore)
    precision, recall = _precision_and_recall(
        detections, true_positive, false_positive, num_gt_counted, max_detection_settings
    )
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
        num_gt=np.bincount(
            problem.gt_category[~_ignored_in_every_area(problem)], minlength=problem.num_classes
        ),
        num_detections=np.bincount(detections.category, minlength=problem.num_classes),
        problem=problem,
    )


def _max_detection_settings(max_detections: int) -> list[int]:
    """The per-image limits ``[1, 10, max_detections]`` (M of them), checked."""
    if max_detections < 10:
        raise ValueError(
            f"max_detections must be at least 10 (the limits are 1, 10 and it), got {max_detections}"
        )
    return sorted({1, 10, int(max_detections)})


def _rank_detections(problem: DetectionProblem, max_per_group: int) -> _RankedDetections:
    """Rank the problem's detections within their ``(image, class)`` group and keep the first
    ``max_per_group`` of each, in the COCO API's order: by score, ties in file order."""
    groups = problem.det_image * problem.num_classes + problem.det_category
    by_score = np.lexsort((np.arange(len(groups)), -problem.det_scores, groups))
    rank = rank_within_groups(groups, by_score)
    kept = np.flatnonzero(rank < max_per_group)
    return _RankedDetections(
        groups=groups[kept],
        rank=rank[kept],
        boxes=problem.det_boxes[kept],
        scores=problem.det_scores[kept],
        image=problem.det_image[kept],
        category=problem.det_category[kept],
    )


def _ignored_in_every_area(problem: DetectionProblem) -> np.ndarray:
    """Bool ``[G]``: crowd regions and difficult objects, ignored whatever the area range."""
    return problem.gt_crowd | problem.gt_difficult


def _outside(areas: np.ndarray, area_bounds: np.ndarray) -> np.ndarray:
    """Bool ``[A, N]``: which of ``areas [N]`` fall outside each range of ``area_bounds [A, 2]``."""
    return (areas[None, :] < area_bounds[:, :1]) | (areas[None, :] > area_bounds[:, 1:])


def _ignored_ground_truth(problem: DetectionProblem, area_bounds: np.ndarray) -> np.ndarray:
    """Bool ``[A, G]``: ground truth that absorbs detections without counting as a miss, per area
    range (crowd, difficult, or its ``gt_area`` outside the range)."""
    return _ignored_in_every_area(problem)[None, :] | _outside(problem.gt_area, area_bounds)


def _candidate_pairs(
    problem: DetectionProblem, detections: _RankedDetections, iou_thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pair_det [P], pair_gt [P], overlaps [P])``: the (detection, ground truth) pairs of one group
    whose IoU reaches the lowest threshold, i.e. the only pairs that can ever match."""
    gt_groups = problem.gt_image * problem.num_classes + problem.gt_category
    pair_det, pair_gt = group_pairs(detections.groups, gt_groups)
    overlaps = xywh_iou(detections.boxes[pair_det], problem.gt_boxes[pair_gt], problem.gt_crowd[pair_gt])
    candidate = overlaps >= min(iou_thresholds.min(), 1 - 1e-10)
    return pair_det[candidate], pair_gt[candidate], overlaps[candidate]


def _order_pairs_by_round(
    pair_det: np.ndarray, pair_gt: np.ndarray, overlaps: np.ndarray, detections: _RankedDetections
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort the ``[P]`` pairs as :func:`match_coco` needs them: by round, detection, ground truth.

    The round of a detection is its rank among the detections of its group that have a candidate
    pair, so round ``r`` holds at most one detection per group. Returns the sorted
    ``(pair_det, pair_gt, overlaps, pair_round)``, each ``[P]``.
    """
    candidate_dets = np.unique(pair_det)
    det_round = np.zeros(len(detections), np.int64)
    if len(candidate_dets):
        order = np.lexsort((detections.rank[candidate_dets], detections.groups[candidate_dets]))
        det_round[candidate_dets] = rank_within_groups(detections.groups[candidate_dets], order)
    pair_order = np.lexsort((pair_gt, pair_det, det_round[pair_det]))
    pair_det, pair_gt, overlaps = pair_det[pair_order], pair_gt[pair_order], overlaps[pair_order]
    return pair_det, pair_gt, overlaps, det_round[pair_det]


def _true_and_false_positives(
    matched_gt: np.ndarray, gt_ignore: np.ndarray, detections: _RankedDetections, area_bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bool ``(true_positive [A, T, D], false_positive [A, T, D])`` from ``matched_gt [A, T, D]``.

    A detection matched to ignored ground truth, or unmatched with its own box area outside the
    range, is neither (the COCO API's ``dtIgnore``).
    """
    num_areas = gt_ignore.shape[0]
    matched = matched_gt >= 0
    det_outside = _outside(detections.boxes[:, 2] * detections.boxes[:, 3], area_bounds)  # [A, D]
    # index -1 (unmatched) reads the padding column; np.where then takes det_outside for those
    gt_ignore_padded = np.concatenate([gt_ignore, np.zeros((num_areas, 1), bool)], axis=1)
    area_index = np.arange(num_areas)[:, None, None]
    det_ignored = np.where(matched, gt_ignore_padded[area_index, matched_gt], det_outside[:, None, :])
    return matched & ~det_ignored, ~matched & ~det_ignored


def _count_ground_truth(problem: DetectionProblem, gt_ignore: np.ndarray) -> np.ndarray:
    """Int64 ``[K, A]``: ground-truth boxes of each class that count (are not ignored) per area range."""
    num_gt_counted = np.zeros((problem.num_classes, gt_ignore.shape[0]), np.int64)
    for a in range(gt_ignore.shape[0]):
        num_gt_counted[:, a] = np.bincount(problem.gt_category[~gt_ignore[a]], minlength=problem.num_classes)
    return num_gt_counted


def _precision_and_recall(
    detections: _RankedDetections,
    true_positive: np.ndarray,
    false_positive: np.ndarray,
    num_gt_counted: np.ndarray,
    max_detection_settings: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Accumulate each class's detections in score order into precision ``[T, R, K, A, M]`` at the
    recall points and final recall ``[T, K, A, M]`` (both -1 where a class has no counted ground
    truth in an area range), as ``COCOeval.accumulate``.

    ``true_positive`` / ``false_positive``: bool ``[A, T, D]``; ``num_gt_counted``: ``[K, A]``.
    """
    num_areas, num_thresholds, _ = true_positive.shape
    num_classes = num_gt_counted.shape[0]
    num_recall, num_settings = len(RECALL_THRESHOLDS), len(max_detection_settings)
    precision = -np.ones((num_thresholds, num_recall, num_classes, num_areas, num_settings))
    recall = -np.ones((num_thresholds, num_classes, num_areas, num_settings))
    class_order, class_starts = _order_within_classes(detections, num_classes)
    # rows of the curves: (area, threshold) pairs, A * T of them
    row_positive = np.repeat(num_gt_counted, num_thresholds, axis=1)  # [K, A * T]
    needed = _true_positives_needed(num_gt_counted)  # [K, A, R]
    for k in range(num_classes):
        counted = num_gt_counted[k] > 0  # [A]
        if not counted.any():
            continue
        indices = class_order[class_starts[k] : class_starts[k + 1]]
        row_needed = np.repeat(needed[k], num_thresholds, axis=0)  # [A * T, R]
        for m, limit in enumerate(max_detection_settings):
            selected = indices[detections.rank[indices] < limit]
            if len(selected) == 0:
                recall[:, k, counted, m] = 0
                precision[:, :, k, counted, m] = 0
                continue
            values, final_recall = _curves_at_recall_points(
                true_positive[:, :, selected], false_positive[:, :, selected], row_positive[k], row_needed
            )
            precision[:, :, k, counted, m] = values[counted].transpose(1, 2, 0)
            recall[:, k, counted, m] = final_recall[counted].T
    return precision, recall


def _order_within_classes(detections: _RankedDetections, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order [D], starts [K + 1])``: detections grouped by class, and within a class in the COCO
    API's global order (by score, ties by image order, then by rank in the image); class ``k`` is
    ``order[starts[k]:starts[k + 1]]``."""
    order = np.lexsort((detections.rank, detections.image, -detections.scores, detections.category))
    starts = np.searchsorted(detections.category[order], np.arange(num_classes + 1))
    return order, starts


def _curves_at_recall_points(
    true_positive: np.ndarray, false_positive: np.ndarray, row_positive: np.ndarray, row_needed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One class at one max-detections setting: interpolated precision ``[A, T, R]`` and final
    recall ``[A, T]``.

    ``true_positive`` / ``false_positive``: bool ``[A, T, n]``, the class's n selected detections in
    score order; ``row_positive``: ``[A * T]`` counted ground truth; ``row_needed``: ``[A * T, R]``
    true positives needed to reach each recall point (:func:`_true_positives_needed`).
    """
    num_areas, num_thresholds, num_selected = true_positive.shape
    tp_count = np.cumsum(true_positive, axis=2).reshape(-1, num_selected)  # [A * T, n]
    fp_count = np.cumsum(false_positive, axis=2).reshape(-1, num_selected)
    tp_sum = tp_count.astype(np.float64)
    precision_curve = tp_sum / (fp_count + tp_sum + np.spacing(1))
    # precision envelope: the best precision at this recall or any higher one
    precision_curve = np.maximum.accumulate(precision_curve[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        final_recall = tp_sum[:, -1] / row_positive
    positions = _first_positions_reaching(tp_count, row_needed)
    values = np.where(
        positions < num_selected,
        np.take_along_axis(precision_curve, np.minimum(positions, num_selected - 1), 1),
        0.0,
    )
    return values.reshape(num_areas, num_thresholds, -1), final_recall.reshape(num_areas, num_thresholds)


def _first_positions_reaching(tp_count: np.ndarray, row_needed: np.ndarray) -> np.ndarray:
    """Int ``[rows, R]``: per row, the first position whose count in ``tp_count [rows, n]`` (running,
    non-decreasing) reaches ``row_needed [rows, R]``; ``n`` where it never does.

    Recall is ``tp / num_positive``, so the first position reaching a recall point is the first with
    at least the needed true positives: an integer search, done for all rows at once by offsetting
    each row's counts past the previous row's.
    """
    num_rows, num_selected = tp_count.shape
    offsets = np.arange(num_rows)[:, None] * (num_selected + 2)
    targets = row_needed + offsets
    positions = np.searchsorted((tp_count + offsets).ravel(), targets.ravel(), side="left").reshape(
        num_rows, -1
    )
    return positions - np.arange(num_rows)[:, None] * num_selected


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
        problem = self.problem()
        result = evaluate_coco(problem, self.max_detections, self.iou_thresholds, self.area_ranges)
        curves = f1_curves(problem, iou_threshold=0.5)
        result.operating_point = {"best_f1_confidence": curves.best_confidence, "best_f1": curves.best_f1}
        return result
