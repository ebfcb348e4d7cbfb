"""Why is mAP low: TIDE's error types and their dAP, a confusion matrix, and F1 against confidence.

TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020)
gives every false positive and every missed object one of six types (section 2.2), judged with a
foreground IoU ``t_f`` (0.5) and a background IoU ``t_b`` (0.1). In the order they are tested:

- **localization**: the right class, but the best same-class IoU is in ``[t_b, t_f]``;
- **classification**: the wrong class, with IoU ``>= t_f`` to an object of another class;
- **duplicate**: IoU ``>= t_f`` to an object of its class that a higher-scoring detection took;
- **background**: IoU ``<= t_b`` to every object;
- **both**: none of the above (the wrong class and the box only roughly on an object);
- **missed**: an object no detection found, nor any classification or localization error points at.

The ``dAP`` of a type is the AP gained when that type alone is fixed (section 2.3): a classification
or localization error becomes a true positive (only the highest-scoring one per object; the others
are removed, since an object can be found once), a duplicate, background or "both" error is removed,
and a missed object is removed from the count. The two "special" errors fix all false positives
(every true positive ranked above them) or all false negatives (the unfound objects removed).

The numbers equal those of the reference implementation, ``tidecv`` 1.0.1 (its ``TIDE`` with
``mode=BOX``), tested on random problems: AP at the foreground IoU with 101 recall points
(``0:0.01:1``), at most ``max_detections`` detections an image (all classes together), mAP over every
class with ground truth or a detection (a class with detections and no ground truth counts as 0),
crowd regions as ignore regions, and tidecv's order of tied scores. A dAP below zero (possible only
through tied scores) is reported as 0, as tidecv does, except for the two special errors.

Beside TIDE: a ``(K + 1) x (K + 1)`` confusion matrix and F1 against the confidence threshold, both
from COCO's matching (:mod:`detlab.eval.matching`), so their true positives are the COCO
evaluator's at the same IoU and score threshold.

The whole data set is processed at once with numpy; loops run over matching rounds (as many as
detections on one object), chunks of 65,536 detections (for the IoU), classes and fix scenarios,
never over images or single detections.

Shape letters: D detections, G ground-truth boxes, K classes, P (detection, ground truth) pairs of
one image, R rows of the AP tables, S confidence thresholds. Boxes are float64 ``(x, y, width,
height)`` as in :class:`~detlab.eval.problem.DetectionProblem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from detlab.box_arrays import group_pairs, xywh_iou
from detlab.eval.matching import match_coco, rank_within_groups
from detlab.eval.problem import DetectionProblem

ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")
SPECIAL_ERROR_TYPES = ("false_positive", "false_negative")
# The names TIDE's paper and tidecv print.
TIDE_NAMES = {
    "classification": "Cls",
    "localization": "Loc",
    "both": "Both",
    "duplicate": "Dupe",
    "background": "Bkg",
    "missed": "Miss",
    "false_positive": "FalsePos",
    "false_negative": "FalseNeg",
}
CLASSIFICATION, LOCALIZATION, BOTH, DUPLICATE, BACKGROUND, MISSED = range(len(ERROR_TYPES))
# Codes of ErrorAnalysis.det_error / gt_error besides the error types.
TRUE_POSITIVE = -1
NOT_EVALUATED = -2  # a detection beyond the per-image limit
IGNORED = -3  # a crowd region or difficult object (ground truth only)

# COCO's object sizes, as a partition: (low, high], the smallest range closed at 0 (TIDE's qualifiers).
SIZE_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, np.inf)}
# tidecv's recall points are x / 100; np.linspace(0, 1, 101) (the COCO API's) differs in the last bit
# for some of them, enough to change which detection reaches a recall point.
RECALL_POINTS = np.arange(101) / 100


@dataclass
class ErrorAnalysis:
    """TIDE's analysis of a problem (see the module doc for the types and fixes).

    Values are fractions (TIDE prints them x100). ``ap``: mAP at ``foreground_iou``; ``class_ap``:
    ``[K]``, NaN for a class with neither ground truth nor a detection. ``dap``: ``{type: dAP}`` for
    the six :data:`ERROR_TYPES` and the two :data:`SPECIAL_ERROR_TYPES`; ``class_dap``: ``{type:
    [K]}``, the class's own AP gain (NaN where the class has no AP before or after the fix);
    ``size_dap``: ``{size: {type: dAP}}`` with only the errors of that object size fixed (the size of
    the object for classification, localization and missed, of the detection for the rest; sizes
    as :data:`SIZE_RANGES`, by ``gt_area`` and by detection box area).

    ``counts`` / ``class_counts`` (by the detection's class; missed by the object's) / ``size_counts``:
    how many errors of each type, as tidecv counts them (detections inside a crowd region included).

    Per detection, int8 ``det_error [D]``: an index into :data:`ERROR_TYPES`, :data:`TRUE_POSITIVE` or
    :data:`NOT_EVALUATED`; ``det_ignored`` bool ``[D]``: inside a crowd region or difficult object of
    its class (not in the AP, still typed as tidecv does); ``det_gt`` int64 ``[D]``: the object it
    matched or its error points at (-1 for background and both); ``det_iou`` ``[D]``: its best IoU
    with an object of its class. Per object, int8 ``gt_error [G]``: :data:`TRUE_POSITIVE`, ``missed``,
    ``classification`` or ``localization`` (unfound, but that error's fix would find it) or
    :data:`IGNORED`; ``gt_det`` int64 ``[G]``: the detection that found it or would (-1 if none).
    """

    class_names: list[str]
    foreground_iou: float
    background_iou: float
    max_detections: int | None
    ap: float
    class_ap: np.ndarray
    dap: dict[str, float]
    class_dap: dict[str, np.ndarray]
    size_dap: dict[str, dict[str, float]]
    counts: dict[str, int]
    class_counts: dict[str, np.ndarray]
    size_counts: dict[str, dict[str, int]]
    det_error: np.ndarray
    det_ignored: np.ndarray
    det_gt: np.ndarray
    det_iou: np.ndarray
    gt_error: np.ndarray
    gt_det: np.ndarray

    def summary(self) -> dict:
        """JSON-ready numbers: settings, ``ap``, ``dap``, ``counts``, ``per_size`` and ``per_class``
        (undefined values as None)."""
        per_class = []
        for k, name in enumerate(self.class_names):
            per_class.append(
                {
                    "class": name,
                    "ap": _json_number(self.class_ap[k]),
                    "dap": {kind: _json_number(values[k]) for kind, values in self.class_dap.items()},
                    "counts": {kind: int(values[k]) for kind, values in self.class_counts.items()},
                }
            )
        return {
            "settings": {
                "foreground_iou": self.foreground_iou,
                "background_iou": self.background_iou,
                "max_detections": self.max_detections,
            },
            "ap": _json_number(self.ap),
            "dap": {kind: _json_number(value) for kind, value in self.dap.items()},
            "counts": dict(self.counts),
            "ignored_detections": int(self.det_ignored.sum()),
            "not_evaluated_detections": int((self.det_error == NOT_EVALUATED).sum()),
            "per_size": {
                size: {
                    "dap": {kind: _json_number(value) for kind, value in self.size_dap[size].items()},
                    "counts": dict(self.size_counts[size]),
                }
                for size in SIZE_RANGES
            },
            "per_class": per_class,
        }


@dataclass
class ConfusionMatrix:
    """Int64 ``matrix [K + 1, K + 1]``: rows are the true class, columns the predicted class, the
    last of each is background. ``matrix[g, p]`` counts objects of class ``g`` found by a detection of
    class ``p`` (the diagonal: true positives); the last column, objects no detection found; the last
    row, detections that found no object. ``labels``: the class names and ``"background"``."""

    matrix: np.ndarray
    labels: list[str]
    score_threshold: float
    iou_threshold: float

    def summary(self) -> dict:
        return {
            "rows": "ground truth",
            "columns": "prediction",
            "labels": list(self.labels),
            "matrix": self.matrix.tolist(),
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
        }


@dataclass
class F1Curves:
    """Precision, recall and F1 of each class against the score threshold (a detection counts when
    its score is at least the threshold), matched as COCO does at ``iou_threshold``.

    ``confidences [S]``; ``class_precision`` / ``class_recall`` / ``class_f1`` ``[K, S]``; ``f1 [S]``: the
    mean F1 of the classes that have ground truth. ``best_confidence`` maximises ``f1`` (the lowest such
    threshold); ``class_best_confidence [K]`` maximises each class's own F1.
    """

    iou_threshold: float
    confidences: np.ndarray
    class_precision: np.ndarray
    class_recall: np.ndarray
    class_f1: np.ndarray
    f1: np.ndarray
    class_has_gt: np.ndarray
    best_index: int
    class_best_index: np.ndarray

    @property
    def best_confidence(self) -> float:
        return float(self.confidences[self.best_index])

    @property
    def best_f1(self) -> float:
        return float(self.f1[self.best_index])

    @property
    def class_best_confidence(self) -> np.ndarray:
        return self.confidences[self.class_best_index]

    def at_best(self) -> dict[str, np.ndarray]:
        """``{"precision", "recall", "f1"}``, each ``[K]``, at :attr:`best_confidence`."""
        return {
            "precision": self.class_precision[:, self.best_index],
            "recall": self.class_recall[:, self.best_index],
            "f1": self.class_f1[:, self.best_index],
        }

    def summary(self, class_names: list[str]) -> dict:
        at_best = self.at_best()
        return {
            "iou_threshold": self.iou_threshold,
            "best_confidence": self.best_confidence,
            "best_f1": self.best_f1,
            "per_class": [
                {
                    "class": name,
                    "precision": float(at_best["precision"][k]),
                    "recall": float(at_best["recall"][k]),
                    "f1": float(at_best["f1"][k]),
                    "own_best_confidence": float(self.class_best_confidence[k]),
                    "own_best_f1": float(self.class_f1[k, self.class_best_index[k]]),
                    "has_gt": bool(self.class_has_gt[k]),
                }
                for k, name in enumerate(class_names)
            ],
            "curve": {"confidence": self.confidences.tolist(), "f1": self.f1.tolist()},
        }


def _json_number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _check_ious(foreground_iou: float, background_iou: float) -> None:
    if not 0 < background_iou <= foreground_iou <= 1:
        raise ValueError(
            f"need 0 < background_iou <= foreground_iou <= 1, got background_iou={background_iou}, "
            f"foreground_iou={foreground_iou}"
        )


def _segment_max_first(values: np.ndarray, starts: np.ndarray, pair_gt: np.ndarray):
    """Per segment of ``values [P]`` (segments start at ``starts``): the maximum and the ground truth
    of its first pair reaching it (numpy's argmax, which tidecv uses, takes the first)."""
    maxima = np.maximum.reduceat(values, starts)
    lengths = np.diff(np.append(starts, len(values)))
    positions = np.where(values == np.repeat(maxima, lengths), np.arange(len(values)), len(values))
    return maxima, pair_gt[np.minimum.reduceat(positions, starts)]


def _score_order(problem: DetectionProblem) -> np.ndarray:
    """Int64 ``[D]``: the detections by decreasing score, ties by image, then in file order (the order
    in which tidecv adds them to its AP tables)."""
    return np.lexsort((np.arange(len(problem.det_scores)), problem.det_image, -problem.det_scores))


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """A stable argsort of small non-negative ints: numpy radix-sorts 16-bit keys, in linear time."""
    if len(keys) and keys.max() < 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _rank_in_images(det_image: np.ndarray, score_order: np.ndarray) -> np.ndarray:
    """Int64 ``[D]``: each detection's place in its image by decreasing score, ties in file order."""
    # sorting the score order by image, stably, gives the order by image, then score, then file
    return rank_within_groups(det_image, score_order[_stable_order(det_image[score_order])])


def _match_first_on_ties(
    pair_det: np.ndarray, pair_gt: np.ndarray, overlaps: np.ndarray, det_round: np.ndarray, num_gt: int
) -> np.ndarray:
    """tidecv's matching: detections by decreasing score each take the free same-class object of
    highest IoU (the first in file order on equal IoU). Int64 ``[D']`` matched ground truth of each
    detection of ``det_round [D']``, or -1.

    ``pair_*``: ``[P]`` candidate pairs (same class, IoU at least the threshold) sorted by the round
    of their detection, the detection, then the ground truth. A round holds at most one detection
    per (image, class), so its detections never compete and are matched together.
    """
    matched_gt = np.full(len(det_round), -1, np.int64)
    gt_taken = np.zeros(num_gt, bool)
    pair_round = det_round[pair_det]
    round_starts = np.flatnonzero(np.diff(pair_round, prepend=-1)) if len(pair_round) else np.zeros(0, int)
    for start, end in zip(round_starts, np.append(round_starts[1:], len(pair_round))):
        dets, gts = pair_det[start:end], pair_gt[start:end]
        free_overlaps = np.where(gt_taken[gts], -1.0, overlaps[start:end])
        det_starts = np.flatnonzero(np.diff(dets, prepend=-1))
        best, best_gt = _segment_max_first(free_overlaps, det_starts, gts)
        hit = best >= 0
        matched_gt[dets[det_starts][hit]] = best_gt[hit]
        gt_taken[best_gt[hit]] = True
    return matched_gt


def _rounds(groups: np.ndarray, rank: np.ndarray, candidates: np.ndarray, size: int) -> np.ndarray:
    """Int64 ``[size]`` round of each detection: its place among the ``candidates`` of its group,
    by ``rank`` (0 for non-candidates)."""
    det_round = np.zeros(size, np.int64)
    if len(candidates):
        order = np.lexsort((rank[candidates], groups[candidates]))
        det_round[candidates] = rank_within_groups(groups[candidates], order)
    return det_round


def _size_index(areas: np.ndarray) -> np.ndarray:
    """Int ``[N]`` index into :data:`SIZE_RANGES` of each area (TIDE's bounds: ``(low, high]``)."""
    highs = np.array([high for _, high in SIZE_RANGES.values()])
    return np.minimum(np.searchsorted(highs, areas, side="left"), len(highs) - 1)


def _error_sizes(problem: DetectionProblem, det_error: np.ndarray, det_gt: np.ndarray) -> np.ndarray:
    """Int ``[D]`` size index of each detection's error: as TIDE's qualifiers test it, the size of the
    object for an error that points at one (classification, localization), else of the detection."""
    det_size = _size_index(problem.det_boxes[:, 2] * problem.det_boxes[:, 3])
    points_at_gt = (det_error == CLASSIFICATION) | (det_error == LOCALIZATION)
    det_size[points_at_gt] = _size_index(problem.gt_area[det_gt[points_at_gt]])
    return det_size


class _TypedDetections(NamedTuple):
    """TIDE's matching and the type of every detection (shapes as in :class:`ErrorAnalysis`)."""

    matched_gt: np.ndarray  # int64 [D]: the object a detection found, -1 if none
    gt_used: np.ndarray  # bool [G]: found by a detection
    det_error: np.ndarray  # int8 [D]
    det_gt: np.ndarray  # int64 [D]
    det_iou: np.ndarray  # [D]
    det_ignored: np.ndarray  # bool [D]


def analyze_errors(
    problem: DetectionProblem,
    foreground_iou: float = 0.5,
    background_iou: float = 0.1,
    max_detections: int | None = 100,
) -> ErrorAnalysis:
    """TIDE's error types and dAP of ``problem`` (Bolya et al., ECCV 2020; equal to ``tidecv``).

    ``foreground_iou``: the IoU a true positive needs (and that the AP uses); ``background_iou``: at
    or below it a detection is background; ``max_detections``: the detections kept an image, all
    classes together, by score (tidecv's 100; None keeps all). Crowd regions and difficult objects
    are TIDE's ignore regions: a detection of their class that no object took and that lies inside
    one (intersection over its own area above ``foreground_iou``) is left out of the AP.
    """
    _check_ious(foreground_iou, background_iou)
    score_order = _score_order(problem)
    rank = _rank_in_images(problem.det_image, score_order)
    region = problem.gt_crowd | problem.gt_difficult
    typed = _match_and_type(problem, rank, max_detections, region, foreground_iou, background_iou)
    det_error, det_gt = typed.det_error, typed.det_gt
    best_fixer = _best_fixers(typed, rank)
    gt_error, gt_det = _object_errors(typed, best_fixer, region)
    tables = _ApTables(problem, score_order, det_error, det_gt, typed.det_ignored, best_fixer, gt_error)
    base_ap, base_map, dap, class_dap, size_dap = _fixed_daps(tables)
    counts, class_counts, size_counts = _count_errors(
        problem, det_error, det_gt, gt_error, problem.num_classes
    )
    return ErrorAnalysis(
        class_names=list(problem.class_names),
        foreground_iou=foreground_iou,
        background_iou=background_iou,
        max_detections=max_detections,
        ap=base_map,
        class_ap=base_ap,
        dap=dap,
        class_dap=class_dap,
        size_dap=size_dap,
        counts=counts,
        class_counts=class_counts,
        size_counts=size_counts,
        det_error=det_error,
        det_ignored=typed.det_ignored,
        det_gt=det_gt,
        det_iou=typed.det_iou,
        gt_error=gt_error,
        gt_det=gt_det,
    )


def _match_and_type(
    problem: DetectionProblem,
    rank: np.ndarray,
    max_detections: int | None,
    region: np.ndarray,
    foreground_iou: float,
    background_iou: float,
) -> _TypedDetections:
    """Match the detections within ``max_detections`` of their image by ``rank [D]`` (tidecv's greedy
    rule) to the objects outside the ignore ``region [G]``, and give every detection its code of
    ``det_error``: :data:`TRUE_POSITIVE`, an error type, or :data:`NOT_EVALUATED` beyond the limit."""
    num_dets = len(problem.det_scores)
    evaluated = rank < max_detections if max_detections is not None else np.ones(num_dets, bool)
    # the overlapping (evaluated detection, object) pairs of one image, any class: the error types
    # need the IoU with objects of other classes too
    pair_det, pair_gt, overlaps = _overlapping_pairs(
        problem, np.flatnonzero(evaluated), np.flatnonzero(~region)
    )
    same_class = problem.det_category[pair_det] == problem.gt_category[pair_gt]

    matched_gt = _tide_matching(problem, rank, pair_det, pair_gt, overlaps, same_class, foreground_iou)
    true_positive = matched_gt >= 0
    gt_used = np.zeros(len(problem.gt_category), bool)
    gt_used[matched_gt[true_positive]] = True
    det_ignored = _inside_ignore_regions(problem, evaluated & ~true_positive, region, foreground_iou)

    det_error, det_gt, det_iou = _error_types(
        num_dets, pair_det, pair_gt, overlaps, same_class, gt_used, foreground_iou, background_iou
    )
    det_error[true_positive] = TRUE_POSITIVE
    det_gt[true_positive] = matched_gt[true_positive]
    det_error[~evaluated] = NOT_EVALUATED
    det_gt[~evaluated] = -1
    return _TypedDetections(matched_gt, gt_used, det_error, det_gt, det_iou, det_ignored)


def _best_fixers(typed: _TypedDetections, rank: np.ndarray) -> np.ndarray:
    """Int64 ``[F]``: the detections that TIDE's fix of a classification or localization error makes
    true positives, one per unfound object such errors point at, sorted by that object."""
    # among the errors that point at one unfound object, only the highest-scoring becomes a true
    # positive (tidecv's BestGTMatch)
    det_error, det_gt = typed.det_error, typed.det_gt
    fixer = np.flatnonzero(
        ((det_error == CLASSIFICATION) | (det_error == LOCALIZATION)) & ~typed.gt_used[np.maximum(det_gt, 0)]
    )
    order = np.lexsort((rank[fixer], det_gt[fixer]))
    _, first = np.unique(det_gt[fixer[order]], return_index=True)
    return fixer[order][first]


def _object_errors(
    typed: _TypedDetections, best_fixer: np.ndarray, region: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Int8 ``gt_error [G]`` and int64 ``gt_det [G]`` of every object (see :class:`ErrorAnalysis`):
    found, missed, fixed by a classification or localization error's fix, or an ignore ``region``."""
    num_gt = len(typed.gt_used)
    true_positive = typed.matched_gt >= 0
    gt_det = np.full(num_gt, -1, np.int64)
    gt_det[typed.det_gt[best_fixer]] = best_fixer
    gt_det[typed.matched_gt[true_positive]] = np.flatnonzero(true_positive)
    gt_error = np.full(num_gt, MISSED, np.int8)
    gt_error[gt_det >= 0] = typed.det_error[gt_det[gt_det >= 0]]
    gt_error[typed.gt_used] = TRUE_POSITIVE
    gt_error[region] = IGNORED
    return gt_error, gt_det


def _fixed_daps(
    tables: _ApTables,
) -> tuple[np.ndarray, float, dict[str, float], dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """``(class_ap [K], ap, dap, class_dap, size_dap)``: the AP before any fix, and the gain of fixing
    each error type, the six and the two special ones (as :class:`ErrorAnalysis` holds them)."""
    base_ap = tables.class_aps()
    base_map = _mean_defined(base_ap)
    dap, class_dap, size_dap = _main_error_daps(tables, base_ap, base_map)
    special_dap, special_class_dap = _special_error_daps(tables, base_ap, base_map)
    return base_ap, base_map, {**dap, **special_dap}, {**class_dap, **special_class_dap}, size_dap


def _main_error_daps(
    tables: _ApTables, base_ap: np.ndarray, base_map: float
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """``(dap, class_dap, size_dap)`` of the six :data:`ERROR_TYPES`, each type fixed alone (then only
    its errors of one size). A gain below zero, possible only through tied scores, is 0, as tidecv
    reports it."""
    dap, class_dap = {}, {}
    size_dap: dict[str, dict[str, float]] = {size: {} for size in SIZE_RANGES}
    for error_index, kind in enumerate(ERROR_TYPES):
        fixed_ap = tables.class_aps(fix=error_index)
        dap[kind] = max(_mean_defined(fixed_ap) - base_map, 0.0)
        class_dap[kind] = np.maximum(fixed_ap - base_ap, 0.0)
        for size_index, size in enumerate(SIZE_RANGES):
            fixed_size_ap = tables.class_aps(fix=error_index, size=size_index)
            size_dap[size][kind] = max(_mean_defined(fixed_size_ap) - base_map, 0.0)
    return dap, class_dap, size_dap


def _special_error_daps(
    tables: _ApTables, base_ap: np.ndarray, base_map: float
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(dap, class_dap)`` of the two :data:`SPECIAL_ERROR_TYPES`: every false positive fixed (the
    true positives ranked first), every false negative fixed (the unfound objects not counted).
    Gains below zero are kept, as tidecv keeps them."""
    false_positive_ap = tables.class_aps_without_false_positives()
    false_negative_ap = tables.class_aps(num_gt=tables.num_true_positives)
    dap = {
        "false_positive": _mean_defined(false_positive_ap) - base_map,
        "false_negative": _mean_defined(false_negative_ap) - base_map,
    }
    class_dap = {"false_positive": false_positive_ap - base_ap, "false_negative": false_negative_ap - base_ap}
    return dap, class_dap


def _overlapping_pairs(
    problem: DetectionProblem, det_ids: np.ndarray, gt_ids: np.ndarray, chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pair_det [P], pair_gt [P], overlaps [P])``: the pairs of ``det_ids`` and ``gt_ids`` (sorted
    index arrays) in one image whose IoU is above 0, sorted by detection, then object.

    Pairs without overlap change nothing (every TIDE test needs an IoU above 0), and on a COCO-sized
    problem they are most of the 3.5 million pairs, so the IoU is computed ``chunk`` detections at a
    time and only the overlapping pairs are kept: the memory stays small.
    """
    parts = []
    for start in range(0, len(det_ids), chunk):
        dets = det_ids[start : start + chunk]
        local_det, local_gt = group_pairs(problem.det_image[dets], problem.gt_image[gt_ids])
        pair_det, pair_gt = dets[local_det], gt_ids[local_gt]
        overlaps = xywh_iou(problem.det_boxes[pair_det], problem.gt_boxes[pair_gt])
        overlapping = overlaps > 0
        parts.append((pair_det[overlapping], pair_gt[overlapping], overlaps[overlapping]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def _tide_matching(problem, rank, pair_det, pair_gt, overlaps, same_class, foreground_iou) -> np.ndarray:
    """Int64 ``[D]`` object each detection matched (tidecv's greedy rule at ``foreground_iou``) or -1."""
    candidate = same_class & (overlaps >= foreground_iou)
    cand_det, cand_gt, cand_overlaps = pair_det[candidate], pair_gt[candidate], overlaps[candidate]
    groups = problem.det_image * problem.num_classes + problem.det_category
    det_round = _rounds(groups, rank, np.unique(cand_det), len(rank))
    order = np.lexsort((cand_gt, cand_det, det_round[cand_det]))
    return _match_first_on_ties(
        cand_det[order], cand_gt[order], cand_overlaps[order], det_round, len(problem.gt_category)
    )


def _inside_ignore_regions(
    problem: DetectionProblem, unmatched: np.ndarray, region: np.ndarray, foreground_iou: float
) -> np.ndarray:
    """Bool ``[D]``: unmatched detections that lie in an ignore region of their class (tidecv: crowd
    IoU, the intersection over the detection's area, strictly above ``foreground_iou``)."""
    ignored = np.zeros(len(unmatched), bool)
    det_ids, region_ids = np.flatnonzero(unmatched), np.flatnonzero(region)
    if len(det_ids) == 0 or len(region_ids) == 0:
        return ignored
    num_classes = problem.num_classes
    local_det, local_region = group_pairs(
        problem.det_image[det_ids] * num_classes + problem.det_category[det_ids],
        problem.gt_image[region_ids] * num_classes + problem.gt_category[region_ids],
    )
    pair_det, pair_region = det_ids[local_det], region_ids[local_region]
    overlaps = xywh_iou(
        problem.det_boxes[pair_det], problem.gt_boxes[pair_region], np.ones(len(pair_det), bool)
    )
    ignored[pair_det[overlaps > foreground_iou]] = True
    return ignored


def _error_types(num_dets, pair_det, pair_gt, overlaps, same_class, gt_used, foreground_iou, background_iou):
    """TIDE's type of every detection, as if none were a true positive (the caller overwrites those).

    Returns int8 ``det_error [D]``, int64 ``det_gt [D]`` (the object the error points at, else -1) and
    ``det_iou [D]`` (best IoU with an object of its class). The tests follow tidecv's order; a
    detection that overlaps no object (no pair) has all IoUs 0, so it is background.
    """
    best = {name: np.zeros(num_dets) for name in ("class", "other", "used", "any")}
    best_gt = {name: np.full(num_dets, -1, np.int64) for name in ("class", "other", "used")}
    if len(pair_det):
        starts = np.flatnonzero(np.diff(pair_det, prepend=-1))
        dets = pair_det[starts]
        for name, values in (
            ("class", np.where(same_class, overlaps, 0.0)),
            ("other", np.where(same_class, 0.0, overlaps)),
            ("used", np.where(same_class & gt_used[pair_gt], overlaps, 0.0)),
        ):
            best[name][dets], best_gt[name][dets] = _segment_max_first(values, starts, pair_gt)
        best["any"][dets] = np.maximum.reduceat(overlaps, starts)

    localization = (background_iou <= best["class"]) & (best["class"] <= foreground_iou)
    classification = ~localization & (best["other"] >= foreground_iou)
    duplicate = ~localization & ~classification & (best["used"] >= foreground_iou)
    background = ~localization & ~classification & ~duplicate & (best["any"] <= background_iou)
    det_error = np.full(num_dets, BOTH, np.int8)
    det_gt = np.full(num_dets, -1, np.int64)
    for code, where, name in (
        (LOCALIZATION, localization, "class"),
        (CLASSIFICATION, classification, "other"),
        (DUPLICATE, duplicate, "used"),
    ):
        det_error[where] = code
        det_gt[where] = best_gt[name][where]
    det_error[background] = BACKGROUND
    return det_error, det_gt, best["class"]


class _ApTables:
    """The rows of every AP table TIDE computes, sorted once, and each table's AP per class.

    Rows ``[R]``: each evaluated detection outside ignore regions (true and false positives), and one
    "fixed" row per highest-scoring classification or localization error of an unfound object: a true
    positive of the object's class. A fixed table is a choice of active rows and of the ground-truth
    count per class. As tidecv rebuilds a fixed table, the error rows come before the true positives
    among tied scores (its ``fix_errors`` pushes them first), while the original table keeps image
    order; both are followed here so that tied scores give tidecv's numbers.
    """

    def __init__(self, problem, score_order, det_error, det_gt, det_ignored, best_fixer, gt_error):
        num_classes, num_dets = problem.num_classes, len(score_order)
        position = np.empty(num_dets, np.int64)
        position[score_order] = np.arange(num_dets)
        sorted_scores = problem.det_scores[score_order]
        tie = np.empty(num_dets, np.int64)  # dense rank of the score: equal scores, equal ties
        tie[score_order] = np.cumsum(np.diff(sorted_scores, prepend=np.inf) != 0)
        det_size = _error_sizes(problem, det_error, det_gt)

        # the original table: counted detections by score, then image, then rank (tidecv's insertion
        # order), grouped by class
        counted = (det_error != NOT_EVALUATED) & ~det_ignored
        dets = score_order[counted[score_order]]
        base = dets[_stable_order(problem.det_category[dets])]
        self.base_class, self.base_true = problem.det_category[base], det_error[base] == TRUE_POSITIVE

        # the fixed tables: one more row per best fixer, right after its detection's own row
        fixers = best_fixer[np.argsort(position[best_fixer])]
        at = np.searchsorted(position[dets], position[fixers], side="right")
        row_det = np.insert(dets, at, fixers)
        row_fixed = np.insert(np.zeros(len(dets), bool), at, True)
        row_class = np.insert(problem.det_category[dets], at, problem.gt_category[det_gt[fixers]])
        original_true = ~row_fixed & (det_error[row_det] == TRUE_POSITIVE)
        # then by score, the error and fixed rows before the original true positives among tied scores
        # (tidecv's fix_errors pushes them first), and by class: the rows in each fixed table's order,
        # gathered once, as every fixed table only switches rows on and off
        order = np.argsort(tie[row_det] * 2 + original_true, kind="stable")
        order = order[_stable_order(row_class[order])]
        self.fixed_class, self.fixed_row = row_class[order], row_fixed[order]
        self.fixed_true = (original_true | row_fixed)[order]
        self.fixed_type, self.fixed_size = det_error[row_det[order]], det_size[row_det[order]]
        self.num_classes = num_classes
        self.fixed_starts = np.searchsorted(self.fixed_class, np.arange(num_classes + 1))
        self.base_starts = np.searchsorted(self.base_class, np.arange(num_classes + 1))
        counted_gt = gt_error != IGNORED
        self.num_gt = np.bincount(problem.gt_category[counted_gt], minlength=num_classes)
        self.num_true_positives = np.bincount(self.base_class[self.base_true], minlength=num_classes)
        self.has_rows = np.bincount(self.base_class, minlength=num_classes) > 0
        missed = gt_error == MISSED
        self.missed = np.bincount(problem.gt_category[missed], minlength=num_classes)
        gt_size = _size_index(problem.gt_area)
        self.missed_by_size = [
            np.bincount(problem.gt_category[missed & (gt_size == s)], minlength=num_classes)
            for s in range(len(SIZE_RANGES))
        ]

    def class_aps(self, fix: int | None = None, size: int | None = None, num_gt=None) -> np.ndarray:
        """``[K]`` AP of each class (NaN where a class has no ground truth and no row) with the errors
        of type ``fix`` fixed (only those of size index ``size`` when given), or with ``num_gt``
        objects per class; without either, the original table."""
        if fix is None and num_gt is None:
            return _class_average_precisions(
                self.base_true, np.ones(len(self.base_true), bool), self.num_gt, self.base_starts
            )
        num_gt = self.num_gt if num_gt is None else num_gt
        fixed = self.fixed_type == fix if fix is not None else np.zeros(len(self.fixed_type), bool)
        if size is not None:
            fixed &= self.fixed_size == size
        # an error row leaves the table when its type is fixed; its fixed row (a true positive) enters
        active = fixed == self.fixed_row
        if fix == MISSED:
            num_gt = num_gt - (self.missed if size is None else self.missed_by_size[size])
        return _class_average_precisions(self.fixed_true, active, num_gt, self.fixed_starts)

    def class_aps_without_false_positives(self) -> np.ndarray:
        """``[K]`` AP with every true positive ranked above every false positive (TIDE's FalsePos fix).

        The precision is then 1 up to the final recall ``tp / n`` and the AP the share of recall
        points reached; a class with detections but no true positive keeps AP 0.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            final_recall = self.num_true_positives / self.num_gt
        reached = (RECALL_POINTS[None, :] <= final_recall[:, None]).sum(axis=1)
        aps = np.where((self.num_gt > 0) & (self.num_true_positives > 0), reached / len(RECALL_POINTS), 0.0)
        return np.where(self.has_rows | (self.num_gt > 0), aps, np.nan)


def _class_average_precisions(
    row_true: np.ndarray, active: np.ndarray, num_gt: np.ndarray, class_starts: np.ndarray
) -> np.ndarray:
    """``[K]`` AP at 101 recall points of rows sorted by class (class ``k``: rows ``class_starts[k]`` to
    ``class_starts[k + 1]``), then rank; only ``active`` rows count.

    As tidecv's ``APDataObject.get_ap``: precision and recall after each row, the precision made
    non-increasing from the right, and at each recall point ``x`` the precision of the first row whose
    recall reaches ``x`` (0 if none does). A class with no object has AP 0; NaN when it has no row either.
    """
    num_classes = len(class_starts) - 1
    true_count = np.cumsum(active & row_true)
    false_count = np.cumsum(active & ~row_true)
    aps = np.full(num_classes, np.nan)
    for k in range(num_classes):
        start, end = class_starts[k], class_starts[k + 1]
        rows = start + np.flatnonzero(active[start:end])
        if num_gt[k] <= 0:
            if len(rows):
                aps[k] = 0.0
            continue
        if len(rows) == 0:
            aps[k] = 0.0
            continue
        true_before = true_count[start - 1] if start > 0 else 0
        false_before = false_count[start - 1] if start > 0 else 0
        true_positives = true_count[rows] - true_before
        false_positives = false_count[rows] - false_before
        precision = true_positives / (true_positives + false_positives)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        recall = true_positives / num_gt[k]
        reached = np.searchsorted(recall, RECALL_POINTS, side="left")
        aps[k] = precision[reached[reached < len(rows)]].sum() / len(RECALL_POINTS)
    return aps


def _mean_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else 0.0


def _count_errors(problem, det_error, det_gt, gt_error, num_classes):
    """Error counts overall, per class (the detection's; the object's for missed) and per size."""
    det_size = _error_sizes(problem, det_error, det_gt)
    gt_size = _size_index(problem.gt_area)
    counts, class_counts = {}, {}
    size_counts: dict[str, dict[str, int]] = {size: {} for size in SIZE_RANGES}
    for code, kind in enumerate(ERROR_TYPES):
        if code == MISSED:
            chosen, categories, sizes = gt_error == MISSED, problem.gt_category, gt_size
        else:
            chosen, categories, sizes = det_error == code, problem.det_category, det_size
        counts[kind] = int(chosen.sum())
        class_counts[kind] = np.bincount(categories[chosen], minlength=num_classes)
        for size_index, size in enumerate(SIZE_RANGES):
            size_counts[size][kind] = int((chosen & (sizes == size_index)).sum())
    return counts, class_counts, size_counts


def _coco_matching(problem: DetectionProblem, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's matching of every detection (no per-image limit) at one IoU: int64 ``matched_gt [D]``
    (-1 if none) and bool ``ignored [D]`` (matched to a crowd region or difficult object)."""
    num_dets, num_classes = len(problem.det_scores), problem.num_classes
    det_groups = problem.det_image * num_classes + problem.det_category
    gt_groups = problem.gt_image * num_classes + problem.gt_category
    order = np.lexsort((np.arange(num_dets), -problem.det_scores, det_groups))
    rank = rank_within_groups(det_groups, order)
    pair_det, pair_gt = group_pairs(det_groups, gt_groups)
    overlaps = xywh_iou(problem.det_boxes[pair_det], problem.gt_boxes[pair_gt], problem.gt_crowd[pair_gt])
    candidate = overlaps >= min(iou_threshold, 1 - 1e-10)
    pair_det, pair_gt, overlaps = pair_det[candidate], pair_gt[candidate], overlaps[candidate]
    det_round = _rounds(det_groups, rank, np.unique(pair_det), num_dets)
    pair_order = np.lexsort((pair_gt, pair_det, det_round[pair_det]))
    pair_det, pair_gt, overlaps = pair_det[pair_order], pair_gt[pair_order], overlaps[pair_order]
    region = (problem.gt_crowd | problem.gt_difficult)[None, :]
    matched_gt = match_coco(
        pair_det,
        pair_gt,
        overlaps,
        det_round[pair_det],
        problem.gt_crowd,
        region,
        np.array([iou_threshold]),
        num_dets,
    )[0, 0].astype(np.int64)
    ignored = (matched_gt >= 0) & region[0, np.maximum(matched_gt, 0)]
    return matched_gt, ignored


def f1_curves(
    problem: DetectionProblem, iou_threshold: float = 0.5, confidences: np.ndarray | None = None
) -> F1Curves:
    """Precision, recall and F1 of each class and the mean F1 against the score threshold.

    Detections are matched once, as COCO does at ``iou_threshold`` (no per-image limit); the matching
    is greedy by score, so a threshold keeps exactly the true positives it would have on its own.
    ``confidences [S]`` default: 1,001 thresholds over ``[0, 1]`` (wider when scores fall outside).
    Detections matched to crowd regions or difficult objects count neither way.
    """
    num_classes = problem.num_classes
    if confidences is None:
        low = min(0.0, float(problem.det_scores.min())) if len(problem.det_scores) else 0.0
        high = max(1.0, float(problem.det_scores.max())) if len(problem.det_scores) else 1.0
        confidences = np.linspace(low, high, 1001)
    confidences = np.asarray(confidences, np.float64)
    matched_gt, ignored = _coco_matching(problem, iou_threshold)
    counted = ~ignored
    counted_gt = ~(problem.gt_crowd | problem.gt_difficult)
    num_gt = np.bincount(problem.gt_category[counted_gt], minlength=num_classes)
    detections = np.zeros((num_classes, len(confidences)))
    true_positives = np.zeros((num_classes, len(confidences)))
    for k in range(num_classes):
        chosen = counted & (problem.det_category == k)
        scores = np.sort(problem.det_scores[chosen])
        true_scores = np.sort(problem.det_scores[chosen & (matched_gt >= 0)])
        detections[k] = len(scores) - np.searchsorted(scores, confidences, side="left")
        true_positives[k] = len(true_scores) - np.searchsorted(true_scores, confidences, side="left")
    precision = true_positives / np.maximum(detections, 1)
    recall = true_positives / np.maximum(num_gt, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    has_gt = num_gt > 0
    mean_f1 = f1[has_gt].mean(axis=0) if has_gt.any() else np.zeros(len(confidences))
    return F1Curves(
        iou_threshold=iou_threshold,
        confidences=confidences,
        class_precision=precision,
        class_recall=recall,
        class_f1=f1,
        f1=mean_f1,
        class_has_gt=has_gt,
        best_index=int(np.argmax(mean_f1)),
        class_best_index=np.argmax(f1, axis=1),
    )


def confusion_matrix(
    problem: DetectionProblem, score_threshold: float | None = None, iou_threshold: float = 0.5
) -> ConfusionMatrix:
    """The ``(K + 1) x (K + 1)`` confusion matrix of the detections scoring at least ``score_threshold``
    (None: the best-F1 confidence of :func:`f1_curves`).

    First COCO's matching at ``iou_threshold`` (same class, greedy by score, crowd regions and
    difficult objects absorbing what is left and counted nowhere) fills the diagonal, so it holds the
    COCO evaluator's true positives at that threshold. Then each remaining detection, by decreasing
    score, takes the remaining object of another class in its image with the highest IoU (at least
    ``iou_threshold``): a class confusion. What is still unmatched goes to the background row
    (detections) and column (objects).
    """
    if score_threshold is None:
        score_threshold = f1_curves(problem, iou_threshold).best_confidence
    num_classes = problem.num_classes
    matched_gt, ignored = _coco_matching(problem, iou_threshold)
    kept = problem.det_scores >= score_threshold
    found = kept & (matched_gt >= 0) & ~ignored
    gt_found = np.zeros(len(problem.gt_category), bool)
    gt_found[matched_gt[found]] = True
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    np.add.at(matrix, (problem.gt_category[matched_gt[found]], problem.det_category[found]), 1)

    # class confusions among what is left; the image is the group, so detections of any class compete
    left_det = np.flatnonzero(kept & (matched_gt < 0))
    left_gt = np.flatnonzero(~gt_found & ~(problem.gt_crowd | problem.gt_difficult))
    local_det, local_gt = group_pairs(problem.det_image[left_det], problem.gt_image[left_gt])
    pair_det, pair_gt = left_det[local_det], left_gt[local_gt]
    overlaps = xywh_iou(problem.det_boxes[pair_det], problem.gt_boxes[pair_gt])
    candidate = (overlaps >= iou_threshold) & (problem.det_category[pair_det] != problem.gt_category[pair_gt])
    pair_det, pair_gt, overlaps = pair_det[candidate], pair_gt[candidate], overlaps[candidate]
    num_dets = len(problem.det_scores)
    rank = _rank_in_images(problem.det_image, _score_order(problem))
    det_round = _rounds(problem.det_image, rank, np.unique(pair_det), num_dets)
    pair_order = np.lexsort((pair_gt, pair_det, det_round[pair_det]))
    pair_det, pair_gt, overlaps = pair_det[pair_order], pair_gt[pair_order], overlaps[pair_order]
    no_region = np.zeros((1, len(problem.gt_category)), bool)
    confused_gt = match_coco(
        pair_det,
        pair_gt,
        overlaps,
        det_round[pair_det],
        no_region[0],
        no_region,
        np.array([iou_threshold]),
        num_dets,
    )[0, 0]
    confused = np.flatnonzero(confused_gt >= 0)
    np.add.at(matrix, (problem.gt_category[confused_gt[confused]], problem.det_category[confused]), 1)
    gt_found[confused_gt[confused]] = True

    background_det = np.ones(num_dets, bool)
    background_det[confused] = False
    background_det &= kept & (matched_gt < 0)
    matrix[num_classes, :num_classes] = np.bincount(
        problem.det_category[background_det], minlength=num_classes
    )
    missed = ~gt_found & ~(problem.gt_crowd | problem.gt_difficult)
    matrix[:num_classes, num_classes] = np.bincount(problem.gt_category[missed], minlength=num_classes)
    return ConfusionMatrix(
        matrix=matrix,
        labels=[*problem.class_names, "background"],
        score_threshold=float(score_threshold),
        iou_threshold=iou_threshold,
    )
