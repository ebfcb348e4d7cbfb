"""The one sample schema every reader produces and every method consumes.

A data set is a list of :class:`Record` (one per image, annotations already parsed and validated)
plus the list of class names. Labels are ``1..C`` indices into ``classes`` (label ``k`` is
``classes[k - 1]``); 0 is reserved for background. Images are decoded lazily in ``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from detlab.data.images import load_image


def _empty_boxes() -> Tensor:
    return torch.zeros((0, 4), dtype=torch.float32)


def _empty_labels() -> Tensor:
    return torch.zeros((0,), dtype=torch.int64)


def _empty_flags() -> Tensor:
    return torch.zeros((0,), dtype=torch.bool)


@dataclass
class Record:
    """One image and its ground truth.

    ``boxes``: ``Tensor[N, 4]`` float32, absolute pixels, ``(x1, y1, x2, y2)``;
    ``labels``: int64 ``Tensor[N]`` in ``1..C``; ``difficult``/``iscrowd``: bool ``Tensor[N]``.
    ``keypoints`` (optional): ``Tensor[N, J, 2]`` absolute pixel ``(x, y)`` per object.
    """

    image_id: str | int
    image_path: Path
    width: int
    height: int
    boxes: Tensor = field(default_factory=_empty_boxes)
    labels: Tensor = field(default_factory=_empty_labels)
    difficult: Tensor = field(default_factory=_empty_flags)
    iscrowd: Tensor = field(default_factory=_empty_flags)
    keypoints: Tensor | None = None

    def target(self) -> dict:
        """The detector-contract target dict for this record."""
        target = {
            "boxes": self.boxes.clone(),
            "labels": self.labels.clone(),
            "image_id": self.image_id,
            "difficult": self.difficult.clone(),
            "iscrowd": self.iscrowd.clone(),
        }
        if self.keypoints is not None:
            target["keypoints"] = self.keypoints.clone()
        return target


class DetectionDataset(torch.utils.data.Dataset):
    """A list of records and class names; ``dataset[i] -> (image Tensor[3, H, W], target)``.

    ``transforms`` (optional) is called as ``transforms(image, target) -> (image, target)``; the
    ones in :mod:`detlab.data.transforms` move boxes with the image.
    """

    def __init__(
        self,
        records: list[Record],
        classes: list[str],
        transforms: Callable | None = None,
        name: str = "",
    ):
        self.records = list(records)
        self.classes = list(classes)
        self.transforms = transforms
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        record = self.records[index]
        image = load_image(record.image_path)
        target = record.target()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def with_transforms(self, transforms: Callable | None) -> DetectionDataset:
        """The same records and classes with other transforms (records are shared, not copied)."""
        return DetectionDataset(self.records, self.classes, transforms, self.name)

    def subset(self, indices) -> DetectionDataset:
        return DetectionDataset([self.records[i] for i in indices], self.classes, self.transforms, self.name)

    def __repr__(self) -> str:
        num_objects = sum(len(r.boxes) for r in self.records)
        return (
            f"DetectionDataset({self.name or 'unnamed'}: {len(self)} images, {num_objects} objects, "
            f"classes={self.classes})"
        )
