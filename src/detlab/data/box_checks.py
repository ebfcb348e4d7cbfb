"""Problems of the boxes themselves, with no model: one object boxed twice, boxed under two classes,
boxes whose size or shape is an outlier for their class, and how unevenly the classes are spread.

Every function works on the boxes of a whole data set at once, flattened: ``boxes`` float
``[B, 4]`` ``(x1, y1, x2, y2)`` pixels, ``image_index`` int ``[B]`` (which image each box is on),
``labels`` int ``[B]``. Shape letters: B boxes, P pairs.
"""

from __future__ import annotations

import numpy as np

from detlab.box_arrays import group_pairs, xywh_iou, xyxy_to_xywh

# Iglewicz and Hoaglin's modified z-score: 0.6745 makes the MAD of a normal sample its standard
# deviation, and 3.5 is their cut for an outlier.
MAD_TO_SIGMA = 0.6745
MEAN_AD_TO_SIGMA = 1.253314  # their fallback when over half the values are equal (MAD = 0)
BORDER_PIXELS = 2.0


def overlapping_pairs(
    boxes: np.ndarray, image_index: np.ndarray, min_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of boxes on one image with IoU above ``min_iou``: ``(first [P], second [P], iou [P])``,
    ``first < second`` (indices into ``boxes``), any classes."""
    image_index = np.asarray(image_index, dtype=np.int64)
    first, second = group_pairs(image_index, image_index)
    keep = first < second
    first, second = first[keep], second[keep]
    xywh = xyxy_to_xywh(boxes)
    iou = xywh_iou(xywh[first], xywh[second])
    above = iou > min_iou
    return first[above], second[above], iou[above]


def robust_z(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Modified z-scores ``0.6745 (x - median) / MAD`` of ``values`` ``[B]``, the median and MAD (median
    absolute deviation) taken over ``reference`` (default: ``values``). Where the MAD is 0 (over
    half the values equal), the mean absolute deviation times 1.2533 stands in; all zeros when the
    reference does not vary at all."""
    values = np.asarray(values, dtype=np.float64)
    reference = values if reference is None else np.asarray(reference, dtype=np.float64)
    if len(reference) == 0:
        return np.zeros_like(values)
    median = np.median(reference)
    mad = np.median(np.abs(reference - median))
    if mad > 0:
        return MAD_TO_SIGMA * (values - median) / mad
    mean_ad = np.abs(reference - median).mean()
    return (values - median) / (MEAN_AD_TO_SIGMA * mean_ad) if mean_ad > 0 else np.zeros_like(values)


def touches_border(boxes: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """bool ``[B]``: the box reaches within 2 pixels of its image's edge (``image_sizes``:
    ``[B, 2]`` ``(width, height)`` of each box's image); such an object is cut by the frame."""
    width, height = image_sizes[:, 0], image_sizes[:, 1]
    return (
        (boxes[:, 0] <= BORDER_PIXELS)
        | (boxes[:, 1] <= BORDER_PIXELS)
        | (boxes[:, 2] >= width - BORDER_PIXELS)
        | (boxes[:, 3] >= height - BORDER_PIXELS)
    )


def size_and_aspect_outliers(
    boxes: np.ndarray,
    labels: np.ndarray,
    image_sizes: np.ndarray,
    max_z: float = 3.5,
    min_boxes: int = 10,
) -> list[tuple[int, str, float, float]]:
    """Boxes whose size or aspect ratio is an outlier for their class: ``(box index, "size" or
    "aspect", value, robust z)``, largest ``|z|`` first.

    Size is ``sqrt(box area / image area)`` (so images of different resolutions compare), aspect is
    ``width / height``; both are judged on a log scale, where "twice as large" and "half as large"
    are equally far. Classes with fewer than ``min_boxes`` boxes are not judged. A box cut by the
    image border may have any aspect and be small, so it is flagged only for being too large, and
    the median and MAD of a class come from its uncut boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    features = {
        "size": np.log(np.sqrt(widths * heights / (sizes[:, 0] * sizes[:, 1]))),
        "aspect": np.log(widths / heights),
    }
    cut = touches_border(boxes, sizes)
    found = []
    for label in np.unique(labels):
        members = np.flatnonzero((labels == label) & ~cut)
        if len(members) < min_boxes:
            continue
        everyone = np.flatnonzero(labels == label)
        for name, values in features.items():
            z = robust_z(values[everyone], reference=values[members])
            if not np.any(z):
                continue
            for index, score in zip(everyone.tolist(), z.tolist()):
                flagged = abs(score) > max_z if not cut[index] else (name == "size" and score > max_z)
                if flagged:
                    found.append((index, name, float(np.exp(values[index])), round(score, 2)))
    found.sort(key=lambda item: -abs(item[3]))
    return found


def class_table(labels_by_split: dict[str, np.ndarray], classes: list[str]) -> list[dict]:
    """Objects per class and split, for the imbalance table: one row per class
    ``{"class", "<split>": count..., "total", "share", "vs_largest"}`` (``share`` of all objects,
    ``vs_largest``: the largest class's count over this one's; ``inf`` for an absent class)."""
    totals = np.zeros(len(classes), dtype=np.int64)
    per_split = {}
    for split, labels in labels_by_split.items():
        counts = np.bincount(np.asarray(labels, dtype=np.int64) - 1, minlength=len(classes))[: len(classes)]
        per_split[split] = counts
        totals += counts
    largest, everything = max(totals.max(initial=0), 1), max(totals.sum(), 1)
    rows = []
    for index, name in enumerate(classes):
        row = {"class": name, **{split: int(counts[index]) for split, counts in per_split.items()}}
        row["total"] = int(totals[index])
        row["share"] = round(float(totals[index] / everything), 4)
        row["vs_largest"] = round(float(largest / totals[index]), 2) if totals[index] else float("inf")
        rows.append(row)
    return rows
