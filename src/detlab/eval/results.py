"""COCO results entries: the one writer of detector outputs as ``{"image_id", "category_id", "bbox", "score"}``.

A COCO results file is a list of such entries, ``bbox`` being ``[x, y, width, height]`` in pixels
(the format of the COCO detection challenge and of ``COCO.loadRes``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from detlab.box_arrays import xyxy_to_xywh


def coco_result_entries(
    boxes: ArrayLike,
    scores: ArrayLike,
    labels: ArrayLike,
    image_id,
    category_ids: list | None = None,
    decimals: int | None = None,
) -> list[dict]:
    """One image's detections as COCO result entries, in the given order.

    Args:
        boxes: ``[K, 4]`` ``(x1, y1, x2, y2)`` pixels; scores: ``[K]``; labels: int ``[K]`` in ``1..C``.
        image_id: written as given into every entry.
        category_ids: the COCO category id of each class (``category_ids[label - 1]``); without it
            the label itself is the category id.
        decimals: when given, round each bbox value to ``decimals`` places and the score to
            ``decimals + 3`` (smaller files; scores keep enough places to rank detections).

    Returns ``[{"image_id", "category_id": int, "bbox": [x, y, w, h], "score": float}]``, K entries.
    """
    xywh = xyxy_to_xywh(boxes).tolist()
    scores = np.asarray(scores, np.float64).reshape(-1).tolist()
    labels = np.asarray(labels, np.int64).reshape(-1).tolist()
    if not len(xywh) == len(scores) == len(labels):
        raise ValueError(
            f"{len(xywh)} boxes, {len(scores)} scores and {len(labels)} labels; give one of each"
        )
    if category_ids is not None and labels and not 1 <= min(labels) <= max(labels) <= len(category_ids):
        raise ValueError(
            f"labels must be in 1..{len(category_ids)} (one category id each), got {sorted(set(labels))}"
        )
    entries = []
    for box, score, label in zip(xywh, scores, labels):
        if decimals is not None:
            box, score = [round(value, decimals) for value in box], round(score, decimals + 3)
        category_id = label if category_ids is None else category_ids[label - 1]
        entries.append({"image_id": image_id, "category_id": category_id, "bbox": box, "score": score})
    return entries
