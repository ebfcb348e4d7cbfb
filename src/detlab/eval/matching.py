"""Matching detections to ground truth, vectorised over a whole data set with numpy.

Both protocols compare a detection only with ground truth of the same image and class, so every
step works on *groups* (one group = one ``(image, class)`` pair) and on *pairs* (a detection and a
ground-truth box of the same group). Typical data has one or two detections and ground-truth boxes
per group, so the pair list is short even for half a million detections.

Shape letters: D detections, G ground-truth boxes, P pairs, A area ranges, T IoU thresholds.
Boxes here are float64 ``(x, y, width, height)`` as in COCO files (the evaluators convert).
"""

from __future__ import annotations

import numpy as np


def rank_within_groups(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rank ``[D]`` of each item inside its group when items are taken in ``order`` (a permutation)."""
    ranks = np.empty(len(groups), dtype=np.int64)
    sorted_groups = groups[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
    starts = np.flatnonzero(new_group)
    run_lengths = np.diff(np.append(starts, len(order)))
    ranks[order] = np.arange(len(order)) - np.repeat(starts, run_lengths)
    return ranks


def _segment_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Maximum of each contiguous segment along the last axis, broadcast back to every element."""
    maxima = np.maximum.reduceat(values, starts, axis=-1)
    lengths = np.diff(np.append(starts, values.shape[-1]))
    return np.repeat(maxima, lengths, axis=-1)


def match_coco(
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    pair_overlap: np.ndarray,
    det_round: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    iou_thresholds: np.ndarray,
    num_detections: int,
) -> np.ndarray:
    """COCO greedy matching for every area range and IoU threshold at once.

    The COCO rule (``COCOeval.evaluateImg``): detections of a group are taken by decreasing score;
    each takes the ground truth with the highest IoU ``>= t`` among those still free, preferring
    any non-ignored box over an ignored one (crowd or outside the area range); a crowd region is
    never used up; on equal IoU the later box in file order wins.

    Detections of different groups never compete, so the loop runs over *rounds*: round ``r``
    matches the ``r``-th candidate detection of every group simultaneously.

    Args:
        pair_det, pair_gt, pair_overlap: ``[P]`` candidate pairs, sorted by detection round, then
            detection, then ground-truth index (file order).
        det_round: ``[P]`` the round of each pair's detection.
        gt_crowd: bool ``[G]``; gt_ignore: bool ``[A, G]`` (crowd or area outside range ``a``).
        iou_thresholds: ``[T]``.
        num_detections: D, the length of the output's last axis.

    Returns ``matched_gt``: int32 ``[A, T, D]``, the matched ground-truth index or -1.
    """
    num_areas = gt_ignore.shape[0]
    num_thresholds = len(iou_thresholds)
    matched_gt = np.full((num_areas, num_thresholds, num_detections), -1, dtype=np.int32)
    gt_taken = np.zeros((num_areas, num_thresholds, gt_ignore.shape[1]), dtype=bool)
    # COCO caps the threshold just below 1 so that a perfect box still matches at t = 1.0.
    thresholds = np.minimum(iou_thresholds, 1 - 1e-10)[None, :, None]
    round_starts = np.flatnonzero(np.diff(det_round, prepend=-1)) if len(det_round) else np.zeros(0, int)
    round_ends = np.append(round_starts[1:], len(det_round))
    for start, end in zip(round_starts, round_ends):
        dets, gts, overlaps = pair_det[start:end], pair_gt[start:end], pair_overlap[start:end]
        det_starts = np.flatnonzero(np.diff(dets, prepend=-1))
        available = ~gt_taken[:, :, gts] | gt_crowd[gts]
        eligible = available & (overlaps >= thresholds)  # [A, T, p]
        tier = np.where(eligible, (~gt_ignore[:, gts])[:, None, :].astype(np.int8), np.int8(-1))
        best_tier = _segment_max(tier, det_starts)
        candidate = eligible & (tier == best_tier)
        score = np.where(candidate, overlaps, -1.0)
        best_score = _segment_max(score, det_starts)
        chosen = candidate & (score == best_score)
        # last chosen position of each segment = the later box in file order on equal IoU
        positions = np.where(chosen, np.arange(len(dets)), -1)
        last = np.maximum.reduceat(positions, det_starts, axis=-1)  # [A, T, num dets in round]
        hit = last >= 0
        where_area, where_threshold, where_det = np.nonzero(hit)
        chosen_pairs = last[hit]
        matched_gt[where_area, where_threshold, dets[det_starts][where_det]] = gts[chosen_pairs]
        gt_taken[where_area, where_threshold, gts[chosen_pairs]] = True
    return matched_gt


def match_voc(
    det_order: np.ndarray,
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    pair_overlap: np.ndarray,
    gt_difficult: np.ndarray,
    iou_threshold: float,
    num_detections: int,
) -> tuple[np.ndarray, np.ndarray]:
    """PASCAL VOC matching (the devkit's ``VOCevaldet``): true and false positives per detection.

    Each detection, by decreasing score, looks at its single best-overlapping ground-truth box of
    the same image and class. If that IoU is at least ``iou_threshold``: a ``difficult`` box makes the
    detection ignored (neither true nor false positive); a box not yet claimed makes it a true
    positive; an already claimed box makes it a duplicate, a false positive. Otherwise it is a
    false positive. Unlike COCO, a detection does not fall back to its second-best box.

    ``det_order``: ``[D]`` detections by decreasing score; pairs as from :func:`group_pairs`
    (sorted by detection). Returns bool ``(true_positive [D], ignored [D])``; the rest are false positives.
    """
    best_gt = np.full(num_detections, -1, dtype=np.int64)
    best_overlap = np.full(num_detections, -np.inf)
    if len(pair_det):
        det_starts = np.flatnonzero(np.diff(pair_det, prepend=-1))
        maxima = np.maximum.reduceat(pair_overlap, det_starts)
        # first ground truth (file order) reaching the maximum, as the devkit's max() does
        is_max = pair_overlap == np.repeat(maxima, np.diff(np.append(det_starts, len(pair_det))))
        positions = np.where(is_max, np.arange(len(pair_det)), len(pair_det))
        first = np.minimum.reduceat(positions, det_starts)
        best_gt[pair_det[det_starts]] = pair_gt[first]
        best_overlap[pair_det[det_starts]] = maxima
    hit = best_overlap >= iou_threshold
    ignored = (
        hit & gt_difficult[np.maximum(best_gt, 0)] if len(gt_difficult) else np.zeros(num_detections, bool)
    )
    claims = hit & ~ignored
    true_positive = np.zeros(num_detections, dtype=bool)
    claiming = det_order[claims[det_order]]  # claiming detections by decreasing score
    _, first_claim = np.unique(best_gt[claiming], return_index=True)
    true_positive[claiming[first_claim]] = True
    return true_positive, ignored
