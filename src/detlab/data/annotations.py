"""Annotations as readers find them, checked against the image and the class list, without torch.

Shared by every reader (:mod:`detlab.data.records` turns the checked objects into a
:class:`~detlab.data.schema.Record`) and by the torch-free evaluation of a VOC folder
(:func:`detlab.data.voc_files.read_voc_annotations`).

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

import numpy as np

from detlab.data.errors import BadInputError, ProblemLog


@dataclass
class RawObject:
    """One annotation as a reader found it; ``box`` is xyxy in pixels; ``where`` locates it in its file."""

    name: str
    box: list[float]
    difficult: bool = False
    iscrowd: bool = False
    where: str = ""
    keypoints: list[list[float]] | None = None  # [[x, y], ...] pixels, NaN where not labelled


@dataclass
class CheckedObjects:
    """The objects of one image that passed :func:`check_objects`, as plain lists."""

    boxes: list[list[float]]
    labels: list[int]  # 1..C
    difficult: list[bool]
    iscrowd: list[bool]
    keypoints: list[list[list[float]]] | None  # per object, or None when no object has keypoints


def check_objects(
    objects: list[RawObject], width: int, height: int, classes: list[str], source: Path, problems: ProblemLog
) -> CheckedObjects | None:
    """Validate ``objects`` against the image size and class list; ``None`` if the image is skipped."""
    label_of = {name: index + 1 for index, name in enumerate(classes)}
    boxes, labels, difficult, iscrowd, keypoints = [], [], [], [], []
    try:
        for obj in objects:
            name = obj.name.strip()
            if name != obj.name:
                problems.fix(
                    f"{source}: {obj.where}: class name {obj.name!r} stripped to {name!r}",
                    "stripped class name",
                )
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
            clipped = [
                min(max(x1, 0.0), width),
                min(max(y1, 0.0), height),
                min(max(x2, 0.0), width),
                min(max(y2, 0.0), height),
            ]
            if clipped != [x1, y1, x2, y2]:
                if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                    problems.fix(
                        f"{source}: {obj.where}: box {obj.box} lies outside the {width}x{height} image, dropped",
                        "box outside image",
                    )
                    continue
                problems.fix(
                    f"{source}: {obj.where}: box {obj.box} clipped to the {width}x{height} image",
                    "box clipped to image",
                )
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
        problems.bad(
            BadInputError(source, "objects of one image must all have the same number of keypoints"),
            "bad annotation",
        )
        return None
    return CheckedObjects(boxes, labels, difficult, iscrowd, keypoints if with_points else None)


@dataclass
class AnnotatedImage:
    """One image's checked annotations as numpy arrays: what evaluation needs of a record."""

    image_id: str | int
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N], 1..C
    difficult: np.ndarray  # bool [N]
    iscrowd: np.ndarray  # bool [N]

    def target(self) -> dict:
        """The target dict of the detector contract, with numpy arrays (copies)."""
        return {
            "boxes": self.boxes.copy(),
            "labels": self.labels.copy(),
            "image_id": self.image_id,
            "difficult": self.difficult.copy(),
            "iscrowd": self.iscrowd.copy(),
        }


@dataclass
class AnnotationSet:
    """A data set's annotations without images or torch; duck-types what
    :func:`detlab.eval.evaluate.problem_from_dataset` reads of a ``DetectionDataset``."""

    records: list[AnnotatedImage]
    classes: list[str]
    name: str = ""
    problems: ProblemLog | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)


def annotated_image(image_id, image_path, width, height, checked: CheckedObjects) -> AnnotatedImage:
    return AnnotatedImage(
        image_id=image_id,
        image_path=Path(image_path),
        width=int(width),
        height=int(height),
        boxes=np.asarray(checked.boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(checked.labels, np.int64),
        difficult=np.asarray(checked.difficult, bool),
        iscrowd=np.asarray(checked.iscrowd, bool),
    )


def coco_image_ids(dataset) -> list[int]:
    """Integer ids used in COCO files for ``dataset``'s records: their own ids if all are ints,
    else 1..N in record order (the ids :func:`detlab.data.write_coco` writes)."""
    if all(isinstance(r.image_id, int) for r in dataset.records):
        return [r.image_id for r in dataset.records]
    return list(range(1, len(dataset.records) + 1))


def coco_category_ids(dataset) -> list[int]:
    """COCO category id of each label 1..C (the original ids for a COCO-read dataset, else 1..C)."""
    return list(getattr(dataset, "category_ids", None) or range(1, dataset.num_classes + 1))
