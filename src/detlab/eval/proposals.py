"""Proposal quality (Hosang et al., "What makes for effective detection proposals?", TPAMI 2016).

A proposal method is judged by how well its top boxes cover the ground truth, independent of any
classifier: for each ground-truth box we take its *best overlap* (the highest IoU with any of the
first ``n`` proposals of its image) and summarise those numbers.

- recall@n at IoU t: fraction of ground-truth boxes whose best overlap with the top ``n``
  proposals is ``>= t`` (Hosang section 3, figure 4 uses t = 0.5 and 0.7);
- recall vs IoU threshold at a fixed ``n`` (Hosang figure 5);
- average recall (AR, Hosang section 4.3): ``2 * integral_{0.5}^{1} recall(t) dt``. Since
  ``recall(t)`` is the fraction of boxes whose best overlap is ``>= t``, the integral is exact:
  ``AR = 2 * mean(max(best_overlap - 0.5, 0))`` over ground-truth boxes;
- MABO (Uijlings et al., Selective Search, section 5.1): the average best overlap of each class,
  then the mean over classes, so a rare class counts as much as a frequent one.

Shape letters: K proposals of one image, N ground-truth boxes of one image, G all ground-truth
boxes of the data set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from detlab import box_arrays
from detlab.box_arrays import as_numpy

DEFAULT_NUM_PROPOSALS = (100, 500, 1000, 2000)
DEFAULT_IOU_THRESHOLDS = (0.5, 0.7)
# The x axis of the recall-vs-#proposals curve: roughly log spaced, as in Hosang figure 4.
CURVE_NUM_PROPOSALS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000)
# The x axis of the recall-vs-IoU curve.
CURVE_IOU_THRESHOLDS = tuple(round(0.5 + 0.025 * step, 3) for step in range(21))


def _as_array(boxes, name: str) -> np.ndarray:
    array = as_numpy(boxes, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {list(array.shape)}")
    return array


def best_overlaps(proposals: ArrayLike, gt_boxes: ArrayLike, num_proposals: Sequence[int]) -> np.ndarray:
    """Best IoU of each ground-truth box with the first ``n`` proposals, for every ``n``.

    ``proposals``: ``[K, 4]`` xyxy, best first; ``gt_boxes``: ``[N, 4]`` xyxy.
    Returns ``[N, len(num_proposals)]`` float64; an image with fewer than ``n`` proposals uses all
    it has, and no proposals at all gives 0.
    """
    proposals = _as_array(proposals, "proposals")
    gt_boxes = _as_array(gt_boxes, "gt_boxes")
    result = np.zeros((len(gt_boxes), len(num_proposals)))
    if len(proposals) == 0 or len(gt_boxes) == 0:
        return result
    limit = min(len(proposals), max(num_proposals))
    # Running maximum along the ranked proposals: column j is the best overlap among the top j+1.
    running_best = np.maximum.accumulate(box_arrays.iou(gt_boxes, proposals[:limit]), axis=1)
    columns = np.clip(np.asarray(num_proposals) - 1, 0, limit - 1)
    return running_best[:, columns]


def data_set_overlaps(
    proposals: Sequence[ArrayLike],
    gt_boxes: Sequence[ArrayLike],
    gt_labels: Sequence[ArrayLike] | None,
    curve_sizes: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every ground-truth box of every image: ``(best overlap with the first n proposals, for each
    n of curve_sizes, [G, len(curve_sizes)]; its label [G] (1 for all without gt_labels); the
    proposals an image)``."""
    best_per_box, labels_per_box, counts = [], [], []
    for image_index, (image_proposals, image_gt) in enumerate(zip(proposals, gt_boxes)):
        image_proposals = _as_array(image_proposals, f"proposals[{image_index}]")
        image_gt = _as_array(image_gt, f"gt_boxes[{image_index}]")
        counts.append(len(image_proposals))
        best_per_box.append(best_overlaps(image_proposals, image_gt, curve_sizes))
        if gt_labels is None:
            labels_per_box.append(np.ones(len(image_gt), dtype=np.int64))
        else:
            labels = as_numpy(gt_labels[image_index])
            if len(labels) != len(image_gt):
                raise ValueError(f"image {image_index}: {len(image_gt)} gt boxes but {len(labels)} labels")
            labels_per_box.append(labels.astype(np.int64).reshape(-1))
    best = np.concatenate(best_per_box) if best_per_box else np.zeros((0, len(curve_sizes)))
    labels = np.concatenate(labels_per_box) if labels_per_box else np.zeros(0, dtype=np.int64)
    return best, labels, counts


def proposal_recall(
    proposals: Sequence[ArrayLike],
    gt_boxes: Sequence[ArrayLike],
    gt_labels: Sequence[ArrayLike] | None = None,
    num_proposals: Sequence[int] = DEFAULT_NUM_PROPOSALS,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    classes: Sequence[str] | None = None,
) -> dict:
    """Evaluate ranked proposals against ground truth over a data set.

    Args:
        proposals: per image ``Tensor[K, 4]`` xyxy, best first (``K`` may differ per image, may be 0).
        gt_boxes: per image ``Tensor[N, 4]`` xyxy ground-truth boxes (``N`` may be 0).
        gt_labels: per image int ``Tensor[N]`` labels ``1..C``, used only for MABO's per-class
            averages; ``None`` treats all boxes as one class.
        num_proposals: the ``n`` of recall@n (and the sizes at which AR and MABO are reported);
            MABO and the headline AR use the largest ``n``.
        iou_thresholds: the IoU thresholds of recall@n.
        classes: optional class names, ``classes[label - 1]``, used as keys of ``abo_per_class``.

    Returns a JSON-ready dict:
        ``num_images``, ``num_gt``, ``num_proposals_mean`` (proposals per image, before cutting);
        ``recall``: ``{"<t>@<n>": float}`` e.g. ``recall["0.7@1000"]``;
        ``recall_vs_proposals``: ``{"num_proposals": [n...], "recall": {"<t>": [r...]}}``;
        ``recall_vs_iou``: ``{"iou_thresholds": [t...], "recall": {"<n>": [r...]}}``;
        ``average_recall``: ``{"<n>": AR}`` and ``ar`` (AR at the largest ``n``);
        ``abo_per_class``: ``{class: average best overlap}``, ``mabo`` (their mean), and
        ``average_best_overlap`` (over all boxes).
    With no ground truth at all, every recall is 0 and ``num_gt`` is 0.
    """
    if not (len(proposals) == len(gt_boxes)) or (gt_labels is not None and len(gt_labels) != len(gt_boxes)):
        raise ValueError(
            f"proposals, gt_boxes and gt_labels must have one entry per image; got {len(proposals)}, "
            f"{len(gt_boxes)} and {None if gt_labels is None else len(gt_labels)}"
        )
    num_proposals = sorted({int(n) for n in num_proposals})
    if not num_proposals or num_proposals[0] < 1:
        raise ValueError(f"num_proposals must be positive integers, got {num_proposals}")
    largest = num_proposals[-1]
    curve_sizes = sorted({n for n in CURVE_NUM_PROPOSALS if n <= largest} | set(num_proposals))
    columns = {n: index for index, n in enumerate(curve_sizes)}

    best, labels, counts = data_set_overlaps(proposals, gt_boxes, gt_labels, curve_sizes)
    num_gt = len(best)

    def recall_at(column: int, threshold: float) -> float:
        return float((best[:, column] >= threshold).mean()) if num_gt else 0.0

    def average_recall(column: int) -> float:
        return float(2.0 * np.clip(best[:, column] - 0.5, 0.0, None).mean()) if num_gt else 0.0

    final = best[:, columns[largest]]
    abo_per_class = {}
    for label in np.unique(labels):
        name = classes[label - 1] if classes is not None and 1 <= label <= len(classes) else str(int(label))
        abo_per_class[name] = float(final[labels == label].mean())
    return {
        "num_images": len(gt_boxes),
        "num_gt": num_gt,
        "num_proposals_mean": float(np.mean(counts)) if counts else 0.0,
        "recall": {f"{t}@{n}": recall_at(columns[n], t) for t in iou_thresholds for n in num_proposals},
        "recall_vs_proposals": {
            "num_proposals": curve_sizes,
            "recall": {str(t): [recall_at(columns[n], t) for n in curve_sizes] for t in iou_thresholds},
        },
        "recall_vs_iou": {
            "iou_thresholds": list(CURVE_IOU_THRESHOLDS),
            "recall": {
                str(n): [recall_at(columns[n], t) for t in CURVE_IOU_THRESHOLDS] for n in num_proposals
            },
        },
        "average_recall": {str(n): average_recall(columns[n]) for n in num_proposals},
        "ar": average_recall(columns[largest]),
        "abo_per_class": abo_per_class,
        "mabo": float(np.mean(list(abo_per_class.values()))) if abo_per_class else 0.0,
        "average_best_overlap": float(final.mean()) if num_gt else 0.0,
    }
