"""Turning parsed annotations into validated :class:`Record` objects (shared by every reader).

Repairs, each reported as a warning and counted (documented in the README, "Bad input"):
- a class name with stray whitespace is stripped;
- a box that sticks out of the image is clipped to it;
- a zero-size box (zero width or height, e.g. a point) is dropped, and so is a box left with no
  area after clipping (it lies wholly outside the image).
A box whose corners are inverted (x2 < x1 or y2 < y1), a non-finite coordinate or an unknown
class is bad input: an error under ``on_bad='error'``, the image skipped under ``'skip'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.schema import Record


@dataclass
class RawObject:
    """One annotation as a reader found it; ``box`` is xyxy in pixels; ``where`` locates it in its file."""

    name: str
    box: list[float]
    difficult: bool = False
    iscrowd: bool = False
    where: str = ""
    keypoints: list[list[float]] | None = None  # [[x, y], ...] pixels, NaN where not labelled


def build_record(
    image_id: str | int,
    image_path: Path,
    width: int,
    height: int,
    objects: list[RawObject],
    classes: list[str],
    source: Path,
    problems: ProblemLog,
) -> Record | None:
    """Validate ``objects`` against the image size and class list; ``None`` if the image is skipped."""
    label_of = {name: index + 1 for index, name in enumerate(classes)}
    boxes, labels, difficult, iscrowd, keypoints = [], [], [], [], []
    try:
        for obj in objects:
            name = obj.name.strip()
            if name != obj.name:
                problems.fix(f"{source}: {obj.where}: class name {obj.name!r} stripped to {name!r}", "stripped class name")
            if name not in label_of:
                raise BadInputError(source, f"{obj.where}: unknown class {name!r} (known: {classes})")
            x1, y1, x2, y2 = obj.box
            if not all(math.isfinite(v) for v in obj.box):
                raise BadInputError(source, f"{obj.where}: non-finite coordinate in box {obj.box}")
            if x2 < x1 or y2 < y1:
                raise BadInputError(source, f"{obj.where}: inverted box {obj.box} (x2 < x1 or y2 < y1)")
            if x2 == x1 or y2 == y1:
                problems.fix(f"{source}: {obj.where}: zero-size box {obj.box} dropped", "zero-size box")
                continue
            clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
            if clipped != [x1, y1, x2, y2]:
                if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                    problems.fix(f"{source}: {obj.where}: box {obj.box} lies outside the {width}x{height} image, dropped", "box outside image")
                    continue
                problems.fix(f"{source}: {obj.where}: box {obj.box} clipped to the {width}x{height} image", "box clipped to image")
            boxes.append(clipped)
            labels.append(label_of[name])
            difficult.append(obj.difficult)
            iscrowd.append(obj.iscrowd)
            keypoints.append(obj.keypoints)
    except BadInputError as error:
        problems.bad(error, "bad annotation")
        return None
    with_points = [points for points in keypoints if points is not None]
    if with_points and (len(with_points) != len(keypoints) or len({len(p) for p in with_points}) != 1):
        problems.bad(BadInputError(source, "objects of one image must all have the same number of keypoints"),
                     "bad annotation")  # fmt: skip
        return None
    return Record(
        image_id=image_id,
        image_path=Path(image_path),
        width=int(width),
        height=int(height),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        difficult=torch.tensor(difficult, dtype=torch.bool),
        iscrowd=torch.tensor(iscrowd, dtype=torch.bool),
        keypoints=torch.tensor(keypoints, dtype=torch.float32).reshape(len(keypoints), -1, 2) if with_points else None,
    )
