"""Likely label mistakes: a model's detections on an image held against the image's labels.

A detection *belongs to* a labelled box of its own class when their IoU is at least ``match_iou``
(0.5, the usual criterion of a correct detection), and then agrees with it. The others, if confident (score >= ``confident``, 0.5), contradict a label, in one of two ways, and
labels that no detection finds are the third kind. Each is scored in [0, 1] so that one list ranks
them all (how strongly the model contradicts the label; not a calibrated probability):

- ``swapped_class``: a labelled box of class ``c`` that a confident detection of another class
  ``c'`` covers (IoU >= ``match_iou``) while the model does not see ``c`` there confidently (its
  best detection of ``c`` covering the box, ``s_c``, is below ``confident``; 0 if none). Score:
  ``s' * (1 - s_c)``, ``s'`` the best such detection's score: the model must both see the other
  class and not the labelled one.
- ``missing_label``: any other confident detection that belongs to no label: an object no box is
  drawn on (where it covers a labelled box of another class, the model sees that class too, so
  they are two objects). Score: the detection's score. Of several on one spot (IoU >= 0.5) only
  the highest is kept.
- ``spurious_box``: a labelled box that no detection of any class covers at IoU >= ``match_iou``
  with score >= ``found`` (a low threshold, 0.05: the model does not see it at all). Score:
  ``spurious_weight * (1 - s_near)``, ``s_near`` the highest score of any detection touching the
  box (IoU >= 0.1). Weighted (default 0.5) because every detector misses some real objects, so a
  box it does not find is weaker evidence than a confident detection it makes: with the default,
  spurious boxes rank below every missing label. ``difficult`` boxes are never called spurious
  or swapped, and detections on them contradict nothing.

Shape letters: G labelled boxes of one image, D detections of it. Boxes are float ``(x1, y1,
x2, y2)`` pixels of the image as stored; labels are ``1..C``.
"""

from __future__ import annotations

import numpy as np

from detlab.box_arrays import iou as pairwise_iou

MISSING, SWAPPED, SPURIOUS = "missing_label", "swapped_class", "spurious_box"
KINDS = (MISSING, SWAPPED, SPURIOUS)
TOUCHING_IOU = 0.1  # a detection this close to a box counts as the model "looking at" it
SAME_SPOT_IOU = 0.5  # missing-label detections overlapping this much are one object


def image_suspects(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    gt_difficult: np.ndarray | None = None,
    confident: float = 0.5,
    found: float = 0.05,
    match_iou: float = 0.5,
    spurious_weight: float = 0.5,
) -> list[dict]:
    """The contradictions on one image (see the module doc): a list of ``{"kind", "score",
    "gt": labelled box index or None, "det": detection index or None, "labelled_class_score":
    s_c for a swapped class}``, swapped classes first, then missing labels, then spurious boxes.

    ``gt_boxes`` float ``[G, 4]``, ``gt_labels`` int ``[G]``, ``det_boxes`` float ``[D, 4]``,
    ``det_scores`` ``[D]``, ``det_labels`` int ``[D]``; ``gt_difficult`` bool ``[G]`` (default none).
    """
    gt_boxes, det_boxes = (
        np.asarray(gt_boxes, float).reshape(-1, 4),
        np.asarray(det_boxes, float).reshape(-1, 4),
    )
    gt_labels, det_labels, det_scores = (
        np.asarray(gt_labels),
        np.asarray(det_labels),
        np.asarray(det_scores, float),
    )
    gt_difficult = np.zeros(len(gt_boxes), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
    iou = pairwise_iou(det_boxes, gt_boxes)  # [D, G]
    same_class = det_labels[:, None] == gt_labels[None, :]
    covering = iou >= match_iou
    belongs = (same_class & covering).any(axis=1)  # [D]
    # s_c of every labelled box: the model's best score for the labelled class on it.
    own = np.where(covering & same_class, det_scores[:, None], 0.0).max(axis=0, initial=0.0)  # [G]
    # A labelled object marked difficult may be seen as anything: detections on it prove nothing.
    on_difficult = (covering & gt_difficult[None, :]).any(axis=1)
    # [D]: the detections that contradict some label
    confident_free = (det_scores >= confident) & ~belongs & ~on_difficult
    swap_votes = confident_free[:, None] & covering & ~same_class & (own < confident)[None, :]  # [D, G]
    # The rest are objects without a label.
    lonely = np.flatnonzero(confident_free & ~swap_votes.any(axis=1))
    # [G]: the labelled boxes the model sees at all (of any class)
    seen = (covering & (det_scores >= found)[:, None]).any(axis=0)  # [G]
    return (
        _swapped_classes(swap_votes, det_scores, own)
        + _missing_labels(lonely, det_boxes, det_scores)
        + _spurious_boxes(np.flatnonzero(~seen & ~gt_difficult), iou, det_scores, spurious_weight)
    )


def _suspect(
    kind: str, score: float, gt: int | None, det: int | None, labelled_class_score: float | None
) -> dict:
    """One entry of :func:`image_suspects`' list."""
    return {"kind": kind, "score": score, "gt": gt, "det": det, "labelled_class_score": labelled_class_score}


def _swapped_classes(swap_votes: np.ndarray, det_scores: np.ndarray, own: np.ndarray) -> list[dict]:
    """``swapped_class`` suspects: one per labelled box that some detection votes swapped.

    ``swap_votes`` bool ``[D, G]``: detection d, confident and contradicting some label, is of
    another class than box g and covers it, and the model does not see g's class there confidently;
    ``det_scores`` ``[D]``; ``own`` ``[G]``: s_c of each box. A box's best voter is its suspect's
    detection."""
    found_here = []
    for gt in np.flatnonzero(swap_votes.any(axis=0)).tolist():
        voters = np.flatnonzero(swap_votes[:, gt])
        best = int(voters[np.argmax(det_scores[voters])])
        found_here.append(
            _suspect(SWAPPED, float(det_scores[best] * (1.0 - own[gt])), gt, best, float(own[gt]))
        )
    return found_here


def _missing_labels(lonely: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray) -> list[dict]:
    """``missing_label`` suspects among ``lonely`` (int ``[K]``: indices of the confident detections
    that belong to no label and vote no swap); ``det_boxes`` float ``[D, 4]`` ``(x1, y1, x2, y2)``,
    ``det_scores`` ``[D]``. Of detections on one spot (IoU >= ``SAME_SPOT_IOU``) only the highest."""
    # Highest first, so a second detection of the same unlabelled object is dropped in favour of
    # the best one.
    lonely = lonely[np.argsort(-det_scores[lonely], kind="stable")]
    between = pairwise_iou(det_boxes[lonely], det_boxes[lonely])
    kept: list[int] = []  # positions in `lonely`
    for position in range(len(lonely)):
        if all(between[position, earlier] < SAME_SPOT_IOU for earlier in kept):
            kept.append(position)
    return [_suspect(MISSING, float(det_scores[det]), None, det, None) for det in lonely[kept].tolist()]


def _spurious_boxes(
    unseen: np.ndarray, iou: np.ndarray, det_scores: np.ndarray, spurious_weight: float
) -> list[dict]:
    """``spurious_box`` suspects: one per box of ``unseen`` (int ``[K]``: indices of the labelled
    boxes, not difficult, that no detection finds); ``iou`` ``[D, G]`` detections against labelled
    boxes, ``det_scores`` ``[D]``. The closer the model looked at the box (its best score on a
    detection touching it), the weaker the evidence that nothing is there."""
    found_here = []
    for gt in unseen.tolist():
        touching = iou[:, gt] >= TOUCHING_IOU
        near = float(det_scores[touching].max()) if touching.any() else 0.0
        found_here.append(_suspect(SPURIOUS, spurious_weight * (1.0 - near), gt, None, None))
    return found_here
