"""Box operations on numpy arrays, for the parts of detlab that run without torch: the evaluators,
proposal recall and the ONNX runtime. :mod:`detlab.boxes` is the same for tensors.

Boxes are ``[N, 4]`` absolute pixels, ``(x1, y1, x2, y2)``, unless a name says ``xywh`` (COCO's
``(x, y, width, height)``, which the COCO evaluator keeps so its arithmetic matches the COCO API
to the last bit).

Shape letters: N, M numbers of boxes; P pairs of boxes.
"""

from __future__ import annotations

import numpy as np


def as_numpy(value, dtype=None) -> np.ndarray:
    """A numpy array of ``value``: a torch tensor (on any device; recognised without importing
    torch, so evaluating files never loads it), an array or a nested list."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``[N, 4]`` ``(x1, y1, x2, y2)`` (array, list or tensor) -> float64 ``[N, 4]`` ``(x, y, width, height)``."""
    boxes = as_numpy(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_iou(boxes1: np.ndarray, boxes2: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of xywh boxes, element by element with numpy broadcasting: ``[P, 4]`` and ``[P, 4]``
    give ``[P]`` (matched pairs), ``[N, 1, 4]`` and ``[1, M, 4]`` give ``[N, M]``.

    Where ``crowd`` (broadcast like the boxes' leading axes) is true, the union is the first
    box's own area (COCO's rule: a detection inside a crowd region is fully "covered" by it).
    The arithmetic is ordered as in the COCO API's box IoU, so results agree to the last bit;
    boxes that do not overlap, or whose union is empty, give 0.
    """
    area1 = boxes1[..., 2] * boxes1[..., 3]
    area2 = boxes2[..., 2] * boxes2[..., 3]
    width = np.minimum(boxes1[..., 2] + boxes1[..., 0], boxes2[..., 2] + boxes2[..., 0]) - np.maximum(
        boxes1[..., 0], boxes2[..., 0]
    )
    height = np.minimum(boxes1[..., 3] + boxes1[..., 1], boxes2[..., 3] + boxes2[..., 1]) - np.maximum(
        boxes1[..., 1], boxes2[..., 1]
    )
    overlapping = (width > 0) & (height > 0)
    intersection = np.where(overlapping, width * height, 0.0)
    union = area1 + area2 - intersection
    if crowd is not None:
        union = np.where(crowd, area1, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping & (union > 0), intersection / np.where(union > 0, union, 1.0), 0.0)


def iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: ``[N, 4]`` and ``[M, 4]`` -> float64 ``[N, M]``; pairs that do not
    overlap, or whose union is empty, give 0 (as :func:`detlab.boxes.iou`)."""
    first = xyxy_to_xywh(boxes1)[:, None, :]
    second = xyxy_to_xywh(boxes2)[None, :, :]
    return xywh_iou(first, second)


def clip(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """xyxy boxes ``[N, 4]`` clipped to an image of ``(height, width)``."""
    height, width = size
    return np.stack(
        [
            boxes[:, 0].clip(0, width),
            boxes[:, 1].clip(0, height),
            boxes[:, 2].clip(0, width),
            boxes[:, 3].clip(0, height),
        ],
        axis=1,
    )


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices (int64) of the kept boxes, best first: greedy NMS, a box goes when its IoU with a
    kept better one is above ``iou_threshold`` (``torchvision.ops.nms``'s rule; ties in score keep
    the earlier box)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        width = np.clip(
            np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None
        )
        height = np.clip(
            np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None
        )
        overlap = width * height
        with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: NaN, which suppresses nothing
            overlaps = overlap / (areas[best] + areas[rest] - overlap)
        order = rest[~(overlaps > iou_threshold)]
    return np.asarray(kept, dtype=np.int64)


def class_wise_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """:func:`nms` per label (boxes of different labels never suppress each other), best first."""
    kept = [
        np.flatnonzero(labels == label)[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
        for label in np.unique(labels)
    ]
    kept = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")]


def group_pairs(det_groups: np.ndarray, gt_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``(detection, ground truth)`` index pairs that share a group key.

    ``det_groups``: int ``[D]``; ``gt_groups``: int ``[G]``. Returns ``(pair_det [P], pair_gt [P])``,
    sorted by detection index, then by ground-truth index (so by file order within a group).
    """
    gt_order = np.argsort(gt_groups, kind="stable")
    sorted_groups = gt_groups[gt_order]
    starts = np.searchsorted(sorted_groups, det_groups, side="left")
    counts = np.searchsorted(sorted_groups, det_groups, side="right") - starts
    pair_det = np.repeat(np.arange(len(det_groups)), counts)
    # offset of each pair inside its detection's run of ground truth
    run_starts = np.repeat(np.cumsum(counts) - counts, counts)
    offsets = np.arange(len(pair_det)) - run_starts
    pair_gt = gt_order[np.repeat(starts, counts) + offsets]
    return pair_det, pair_gt
