"""Tiles of large images: where they lie, how the detections of overlapping tiles become one set
(tiled, or "sliced", inference), and how a box is cut to a tile (tiled training sets).

Small objects in a large image shrink below what a detector can see when the whole image is
resized to the network's input; cutting the image into overlapping tiles and running the detector
on each at its own resolution keeps them large enough (Akyon et al. 2022, "Slicing Aided Hyper
Inference"). The work around the network is plain numpy, so the ONNX runtime
(:mod:`detlab.export.runtime`, no torch) tiles with the same code as :class:`Predictor`.

Boxes are ``(x1, y1, x2, y2)`` pixels. Shape letters: T tiles, K detections.

The merge rule (:func:`merge_detections`), per class, the best score first: a detection leads a
group and takes in every detection of another pass (another tile, or the full image: a pass's
own NMS already kept its detections apart) that overlaps the group's box with IoU at least the
model's own NMS threshold or, when one of the two was **cut by a tile edge** inside the image (it
touches an edge of its tile that is not the image's border), that covers at least
``match_threshold`` of the smaller box of the two (intersection over the smaller area). A
group's box is its leader's (``nms``) or, with ``fusion`` (the default), the box enclosing its
members once one of them is cut (the pieces of an object cut by a seam become the whole object;
whole views of an uncut object leave the leader's box as it is); its score is the leader's. So
an object on a seam, seen whole in one tile and cut in the next, or in two pieces, gives one
detection.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MERGES = ("fusion", "nms")


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How to tile an image for inference.

    ``size``: the tile side in pixels (an image side shorter than it is one tile of that side);
    ``overlap``: the share of a tile's side that neighbouring tiles share (an object up to about
    ``overlap * size`` across lies whole in some tile); ``full_image``: also run the model on the
    whole image (which it resizes as always: SAHI's "standard prediction", for the large objects
    that every tile cuts); ``merge``: ``fusion`` or ``nms`` (see the module's rule);
    ``match_threshold``: the intersection over the smaller box at which a cut box joins a group;
    ``batch_size``: tiles a forward pass."""

    size: int
    overlap: float = 0.2
    full_image: bool = False
    merge: str = "fusion"
    match_threshold: float = 0.5
    batch_size: int = 8

    def __post_init__(self):
        if self.size < 16:
            raise ValueError(f"--tile {self.size}: a tile side of at least 16 pixels, please")
        if not 0.0 <= self.overlap <= 0.75:
            raise ValueError(f"--overlap {self.overlap}: a share of the tile side in [0, 0.75]")
        if self.merge not in MERGES:
            raise ValueError(f"tile merge {self.merge!r}: choose one of {', '.join(MERGES)}")
        if not 0.0 < self.match_threshold <= 1.0:
            raise ValueError(f"match_threshold {self.match_threshold}: a share in (0, 1]")
        if self.batch_size < 1:
            raise ValueError(f"tiles a forward pass: at least 1, got {self.batch_size}")


def axis_starts(length: int, size: int, overlap: float) -> list[int]:
    """Where tiles of ``size`` start along an axis of ``length`` pixels: every ``size * (1 -
    overlap)`` pixels, the last one moved back to end at the border (so no tile leaves the image
    and the last two overlap at least as much as the others)."""
    if length <= size:
        return [0]
    stride = max(1, int(round(size * (1.0 - overlap))))
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def tile_windows(height: int, width: int, size: int, overlap: float) -> np.ndarray:
    """``int64[T, 4]`` the tiles ``(x1, y1, x2, y2)`` of an image, row by row; each ``size`` square,
    or the image's side where it is shorter."""
    rows = axis_starts(height, size, overlap)
    columns = axis_starts(width, size, overlap)
    tile_height, tile_width = min(size, height), min(size, width)
    return np.asarray(
        [[x, y, x + tile_width, y + tile_height] for y in rows for x in columns], dtype=np.int64
    ).reshape(-1, 4)


def cut_by_tile(boxes: np.ndarray, window, image_size: tuple[int, int], margin: float) -> np.ndarray:
    """``bool[K]``: which ``boxes`` (image pixels) touch, within ``margin`` pixels, an edge of
    their tile ``window`` that lies inside the image (the object may go on beyond it)."""
    x1, y1, x2, y2 = (float(value) for value in window)
    height, width = image_size
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return (
        ((boxes[:, 0] <= x1 + margin) & (x1 > 0))
        | ((boxes[:, 1] <= y1 + margin) & (y1 > 0))
        | ((boxes[:, 2] >= x2 - margin) & (x2 < width))
        | ((boxes[:, 3] >= y2 - margin) & (y2 < height))
    )


def edge_margin(size: int) -> float:
    """How near a tile's edge a box counts as cut: 2 pixels, or 1% of a larger tile's side (a
    model's box edge is that far from the object's)."""
    return max(2.0, 0.01 * size)


def overlaps(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(IoU, intersection over the smaller area)`` of ``box`` ``[4]`` with each of ``others`` ``[K, 4]``."""
    left_top = np.maximum(box[:2], others[:, :2])
    right_bottom = np.minimum(box[2:], others[:, 2:])
    intersection = np.clip(right_bottom - left_top, 0, None).prod(axis=1)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 0.0)
    other_areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(
        others[:, 3] - others[:, 1], 0, None
    )
    union = area + other_areas - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)
    smaller = np.minimum(area, other_areas)
    ios = np.where(smaller > 0, intersection / np.maximum(smaller, 1e-12), 0.0)
    return iou, ios


@dataclasses.dataclass
class PassDetections:
    """Detections of every pass over one image, in the image's pixels: ``boxes float32[K, 4]``,
    ``scores float32[K]``, ``labels int64[K]``, ``passes int64[K]`` (which tile, or the full
    image, found each) and ``cut bool[K]`` (cut by its tile's edge)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    passes: np.ndarray
    cut: np.ndarray

    @classmethod
    def gather(cls, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> PassDetections:
        """From ``[(boxes, scores, labels, cut), ...]``, one a pass, in pass order."""
        if not parts:
            empty = np.zeros((0,), np.float32)
            return cls(
                np.zeros((0, 4), np.float32), empty, empty.astype(np.int64), empty.astype(np.int64), empty > 0
            )
        return cls(
            np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4) for boxes, _, _, _ in parts]),
            np.concatenate([np.asarray(scores, np.float32).reshape(-1) for _, scores, _, _ in parts]),
            np.concatenate([np.asarray(labels, np.int64).reshape(-1) for _, _, labels, _ in parts]),
            np.concatenate(
                [np.full(len(scores), index, np.int64) for index, (_, scores, _, _) in enumerate(parts)]
            ),
            np.concatenate([np.asarray(cut, bool).reshape(-1) for _, _, _, cut in parts]),
        )


def merge_detections(
    found: PassDetections, tiling: Tiling, iou_threshold: float, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The module's merge rule over one image's passes -> ``(boxes float32[K, 4], scores
    float32[K], labels int64[K], members int64[K])``, best first, at most ``limit``; ``members``:
    how many detections each group joined."""
    boxes, scores, labels = found.boxes, found.scores, found.labels
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(len(scores), dtype=bool)
    kept_boxes, kept, members = [], [], []
    for leader in order:
        if taken[leader]:
            continue
        taken[leader] = True
        group_box = boxes[leader].copy()
        group = [leader]
        while True:  # the group's box may grow (fusion) and reach further pieces
            candidates = np.flatnonzero(~taken & (labels == labels[leader]))
            if not len(candidates):
                break
            iou, ios = overlaps(group_box, boxes[candidates])
            # a pass's own NMS already kept its detections apart: only other passes' may join
            other_pass = ~np.isin(found.passes[candidates], found.passes[group])
            cut = found.cut[candidates] | found.cut[group].any()
            joins = other_pass & ((iou >= iou_threshold) | (cut & (ios >= tiling.match_threshold)))
            joining = candidates[joins]
            if not len(joining):
                break
            taken[joining] = True
            if tiling.merge == "nms":
                group.extend(joining.tolist())
                break
            # whole views of an uncut object leave its box as it is; pieces make it grow
            growing = joining if found.cut[group].any() else joining[found.cut[joining]]
            group.extend(joining.tolist())
            if len(growing):
                group_box = np.concatenate(
                    [
                        np.minimum(group_box[:2], boxes[growing, :2].min(0)),
                        np.maximum(group_box[2:], boxes[growing, 2:].max(0)),
                    ]
                )
        kept_boxes.append(group_box)
        kept.append(leader)
        members.append(len(group))
        if len(kept) == limit:
            break
    if not kept:
        return (
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), np.int64),
        )
    kept = np.asarray(kept)
    return np.stack(kept_boxes).astype(np.float32), scores[kept], labels[kept], np.asarray(members, np.int64)


def merge_tiles(
    windows: np.ndarray,
    image_size: tuple[int, int],
    outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    whole: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    tiling: Tiling,
    iou_threshold: float,
    limit: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections from its tiles -> ``(boxes float32[K, 4], scores float32[K], labels
    int64[K])`` in the image's pixels (:func:`merge_detections`). ``outputs``: ``(boxes [K_t, 4] in
    the tile's pixels, scores, labels)`` of each of ``windows`` ``[T, 4]``; ``whole``: the full
    image's, or ``None``; ``image_size``: ``(height, width)``."""
    margin = edge_margin(int((windows[0, 2:] - windows[0, :2]).max()))
    parts = []
    for window, (boxes, scores, labels) in zip(windows, outputs):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) + window[[0, 1, 0, 1]].astype(np.float32)
        parts.append((boxes, scores, labels, cut_by_tile(boxes, window, image_size, margin)))
    if whole is not None:  # uncut: the whole image holds every object whole
        parts.append((*whole, np.zeros(len(whole[1]), dtype=bool)))
    boxes, scores, labels, _ = merge_detections(PassDetections.gather(parts), tiling, iou_threshold, limit)
    return boxes, scores, labels


def clip_to_window(
    boxes: np.ndarray, window, min_visible: float, min_side: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth ``boxes`` ``[K, 4]`` (image pixels) in the tile ``window``: ``(kept boxes in
    the tile's pixels [M, 4], index of each in boxes [M], cut bool[M])``. A box is kept when at
    least ``min_visible`` of its area lies in the tile and both sides of that part are at least
    ``min_side`` pixels (a tiny sliver of an object teaches nothing and cannot be scored); its
    kept part is the box clipped to the tile; ``cut``: it lost part of its area."""
    x1, y1, x2, y2 = (float(value) for value in window)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = np.stack(
        [
            np.clip(boxes[:, 0], x1, x2),
            np.clip(boxes[:, 1], y1, y2),
            np.clip(boxes[:, 2], x1, x2),
            np.clip(boxes[:, 3], y1, y2),
        ],
        axis=1,
    )
    sides = clipped[:, 2:] - clipped[:, :2]
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    visible = sides.clip(0, None).prod(axis=1)
    keep = (sides.min(axis=1) >= min_side) & (visible >= min_visible * np.maximum(area, 1e-12))
    index = np.flatnonzero(keep)
    shift = np.asarray([x1, y1, x1, y1], dtype=np.float32)
    return clipped[index] - shift, index, visible[index] < area[index] - 1e-6


def tiling_of(
    tile: int, overlap: float = 0.2, full_image: bool = False, merge: str = "fusion"
) -> Tiling | None:
    """The :class:`Tiling` of the options ``--tile SIZE --overlap F --tile-full-image --tile-merge
    RULE`` (``detlab.load(..., tile=SIZE, overlap=F, ...)``); ``None`` for ``tile`` 0: no tiles."""
    if not tile:
        return None
    return Tiling(int(tile), float(overlap), bool(full_image), merge)
