"""Box operations shared by every method.

One convention inside detlab: ``Tensor[N, 4]`` float boxes in absolute pixels, ``(x1, y1, x2, y2)``.
Other formats (``xywh`` as in COCO, ``cxcywh`` as in YOLO and box regression) exist only at the
edges, through :func:`convert`.

Shape letters: N, M numbers of boxes; K number of classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision import ops

FORMATS = ("xyxy", "xywh", "cxcywh")

# exp(dw) overflows for large predicted deltas early in training; clamp as in Fast R-CNN code.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def convert(boxes: Tensor, source: str, target: str) -> Tensor:
    """Convert ``Tensor[N, 4]`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``."""
    for name in (source, target):
        if name not in FORMATS:
            raise ValueError(f"unknown box format {name!r}; expected one of {FORMATS}")
    if source == target:
        return boxes.clone()
    return ops.box_convert(boxes, in_fmt=source, out_fmt=target)


def area(boxes: Tensor) -> Tensor:
    """``Tensor[..., N, 4]`` xyxy -> ``Tensor[..., N]``; degenerate (inverted) boxes have area 0."""
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise shared area: ``Tensor[..., N, 4]``, ``Tensor[..., M, 4]`` xyxy -> ``Tensor[..., N, M]``."""
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    return size[..., 0] * size[..., 1]


def iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union: ``Tensor[..., N, 4]``, ``Tensor[..., M, 4]`` ->
    ``Tensor[..., N, M]`` (leading dimensions broadcast: a batch of images at once).

    Pairs whose union is empty (two zero-area boxes) get IoU 0 rather than NaN.
    """
    area1, area2 = area(boxes1), area(boxes2)
    shared = intersection(boxes1, boxes2)
    union = area1[..., :, None] + area2[..., None, :] - shared
    return torch.where(union > 0, shared / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def clip(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes to an image of ``(height, width)``."""
    return ops.clip_boxes_to_image(boxes, image_size)


def clip_each(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip xyxy ``boxes`` ``Tensor[..., 4]``, each to its own image of ``sizes`` ``Tensor[..., 2]``
    ``(height, width)`` (broadcast against the boxes' leading axes): :func:`clip` of a batch of
    images at once, in tensor operations only (so ONNX export keeps the batch size free)."""
    sizes = sizes.to(boxes.dtype)
    widths, heights = sizes[..., 1:2], sizes[..., 0:1]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), widths)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), heights)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def remove_small(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (``Tensor[K]`` int64) of boxes whose width and height are both at least ``min_size``."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of kept boxes, highest score first (``torchvision.ops.nms``)."""
    return ops.nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other."""
    return ops.batched_nms(boxes.float(), scores.float(), labels, iou_threshold)


def merge_boxes(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """OverFeat-style merging (Sermanet et al. 2014, section 4.3), one class at a time.

    Greedily, the highest-scoring remaining box gathers every remaining box of its class that
    overlaps it with IoU >= ``iou_threshold``; the group becomes one box, the score-weighted mean
    of its members' coordinates, scored with the sum of their scores (OverFeat accumulates the
    confidence of the merged bounding boxes). Unlike NMS, which keeps one box and throws its
    neighbours away, merging lets many weak, slightly shifted windows vote for a better box.

    Returns ``(boxes Tensor[G, 4], scores Tensor[G], labels Tensor[G])``, highest score first.
    """
    out_boxes, out_scores, out_labels = [], [], []
    for label in labels.unique():
        mask = labels == label
        class_boxes, class_scores = boxes[mask].float(), scores[mask].float()
        order = class_scores.argsort(descending=True)
        class_boxes, class_scores = class_boxes[order], class_scores[order]
        remaining = torch.ones(len(class_boxes), dtype=torch.bool)
        for index in range(len(class_boxes)):
            if not remaining[index]:
                continue
            # One row of overlaps a group, not the whole V x V matrix: V votes take O(V) memory
            # (OverFeat's votes of a large image would need gigabytes for the matrix).
            overlaps = iou(class_boxes[index : index + 1], class_boxes)[0]
            group = remaining & (overlaps >= iou_threshold)
            group[index] = True
            remaining &= ~group
            weights = class_scores[group]
            merged = (class_boxes[group] * weights[:, None]).sum(0) / weights.sum().clamp(min=1e-12)
            out_boxes.append(merged)
            out_scores.append(weights.sum())
            out_labels.append(label)
    if not out_boxes:
        return boxes.new_zeros((0, 4)).float(), scores.new_zeros((0,)).float(), labels.new_zeros((0,))
    merged_boxes, merged_scores = torch.stack(out_boxes), torch.stack(out_scores)
    merged_labels = torch.stack(out_labels)
    order = merged_scores.argsort(descending=True)
    return merged_boxes[order], merged_scores[order], merged_labels[order]


class BoxCoder:
    """R-CNN box parameterisation (Girshick et al. 2014, appendix C).

    A target box ``G`` is encoded relative to a reference box ``P`` (a proposal or an anchor) as
    ``dx = wx * (Gx - Px) / Pw``, ``dy = wy * (Gy - Py) / Ph``, ``dw = ww * log(Gw / Pw)``,
    ``dh = wh * log(Gh / Ph)`` with centres ``(x, y)`` and sizes ``(w, h)``. The weights rescale the
    deltas so their loss is balanced (Fast R-CNN uses (10, 10, 5, 5)); ``dw``/``dh`` are clamped
    before ``exp`` so a wild prediction cannot overflow.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ):
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """``Tensor[N, 4]`` xyxy references and matched targets -> ``Tensor[N, 4]`` deltas."""
        wx, wy, ww, wh = self.weights
        dtype = torch.promote_types(torch.promote_types(reference.dtype, target.dtype), torch.float32)
        ref = convert(reference.to(dtype), "xyxy", "cxcywh")
        tgt = convert(target.to(dtype), "xyxy", "cxcywh")
        dx = wx * (tgt[:, 0] - ref[:, 0]) / ref[:, 2]
        dy = wy * (tgt[:, 1] - ref[:, 1]) / ref[:, 3]
        dw = ww * torch.log(tgt[:, 2] / ref[:, 2])
        dh = wh * torch.log(tgt[:, 3] / ref[:, 3])
        return torch.stack([dx, dy, dw, dh], dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Deltas ``Tensor[N, 4 * K]`` (K >= 1 sets, e.g. one per class) on references
        ``Tensor[N, 4]`` -> xyxy boxes ``Tensor[N, 4 * K]``, float32 (or wider) whatever the
        deltas' dtype: under autocast the deltas are float16, which has 11 significant bits, so a
        coordinate near 1000 px would be rounded to half a pixel, and a clamped ``exp(dw)`` times a
        large reference width can pass its maximum, 65504."""
        wx, wy, ww, wh = self.weights
        dtype = torch.promote_types(torch.promote_types(deltas.dtype, reference.dtype), torch.float32)
        deltas = deltas.to(dtype)
        ref = convert(reference.to(dtype), "xyxy", "cxcywh")
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx = dx * ref[:, 2:3] + ref[:, 0:1]
        cy = dy * ref[:, 3:4] + ref[:, 1:2]
        w = torch.exp(dw) * ref[:, 2:3]
        h = torch.exp(dh) * ref[:, 3:4]
        out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2)
        return out.reshape(deltas.shape)
