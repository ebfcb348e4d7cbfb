"""The one sample schema every reader produces and every method consumes.

A data set is a list of :class:`Record` (one per image, annotations already parsed and validated)
plus the list of class names. Labels are ``1..C`` indices into ``classes`` (label ``k`` is
``classes[k - 1]``); 0 is reserved for background. Images are decoded lazily in ``__getitem__``,
optionally warped to a fixed size before the transforms (``resize_to``: for models with a fixed
input, so the augmentations work on small images; boxes and keypoints follow; the warped pixels are
rounded to 8 bits, as a saved image would be) and optionally kept in memory once prepared
(``cache_images``: as 8-bit pixels, so the cache changes no value).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from detlab.data.images import load_image, resize_image, scaled_size, warp_image


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
    ones in :mod:`detlab.data.transforms` move boxes with the image. ``resize_to``: ``(H, W)`` every
    image is warped to before the transforms (aspect ratio not kept; pixels rounded to 8 bits), or
    an ``int``: the longer side every image is resized to (aspect kept, the detectors' batcher's
    resize, :func:`detlab.data.images.resize_image`).
    ``cache_images``: keep each prepared image (uint8: decoded, and warped) in memory after its
    first use; the values are the same as without the cache. ``proposals``: a function giving a
    record's proposal boxes, attached to its target (for Fast R-CNN and R-CNN).
    """

    def __init__(
        self,
        records: list[Record],
        classes: list[str],
        transforms: Callable | None = None,
        name: str = "",
        resize_to: tuple[int, int] | int | None = None,
        cache_images: bool = False,
        proposals: Callable[[Record], Tensor] | None = None,
    ):
        self.records = list(records)
        self.classes = list(classes)
        self.transforms = transforms
        self.name = name
        self.resize_to = (
            (resize_to if isinstance(resize_to, int) else tuple(resize_to)) if resize_to else None
        )
        self.cache_images = cache_images
        self.proposals = proposals
        self._decoded: dict[int, tuple[Tensor, tuple[int, int]]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, (height, width) = self._image_and_size(index)
        target = self.records[index].target()
        if self.proposals is not None:
            target["proposals"] = self.proposals(self.records[index]).float().reshape(-1, 4)
        if self.resize_to is not None:
            target = _scale_target(target, image.shape[-1] / width, image.shape[-2] / height)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def image(self, index: int) -> Tensor:
        """Record ``index``'s image, ``float32 Tensor[3, H, W]`` in [0, 1], warped to ``resize_to``
        when set (no transform)."""
        return self._image_and_size(index)[0]

    def _image_and_size(self, index: int) -> tuple[Tensor, tuple[int, int]]:
        """The prepared image and the ``(H, W)`` it was decoded at."""
        prepared = self._decoded.get(index)
        if prepared is None:
            prepared = self._prepared(index)
            if self.cache_images:
                self._decoded[index] = prepared
        pixels, size = prepared
        return pixels.float().div_(255.0), size

    def _prepared(self, index: int) -> tuple[Tensor, tuple[int, int]]:
        """The decoded (and warped) image as uint8, and its decoded size: the loader divides 8-bit
        pixels by 255, so this loses nothing but the warp's fractions."""
        image = load_image(self.records[index].image_path)
        size = tuple(image.shape[-2:])
        if isinstance(self.resize_to, int):
            image = resize_image(image, scaled_size(*size, self.resize_to / max(size)))
        elif self.resize_to is not None:
            image = warp_image(image, self.resize_to)
        return (image * 255).round_().clamp_(0, 255).to(torch.uint8), size

    def with_transforms(self, transforms: Callable | None) -> DetectionDataset:
        """The same records and classes with other transforms (records are shared, not copied)."""
        return self._copy(self.records, transforms=transforms)

    def without_augmentation(self) -> DetectionDataset:
        """The images as stored (a training step that measures the data rather than learns from it)."""
        return self.with_transforms(None)

    def with_options(self, **options) -> DetectionDataset:
        """The same records, classes and transforms with other ``resize_to``, ``cache_images`` or
        ``proposals`` (``record -> Tensor[K, 4]`` in the stored image's pixels, added to each
        target as ``"proposals"`` before the transforms, which move them with the image)."""
        unknown = set(options) - {"resize_to", "cache_images", "proposals"}
        if unknown:
            raise TypeError(f"unknown data set options {sorted(unknown)}")
        return self._copy(self.records, **options)

    def subset(self, indices) -> DetectionDataset:
        return self._copy([self.records[i] for i in indices])

    def _copy(self, records: list[Record], **changes) -> DetectionDataset:
        options = {
            "transforms": self.transforms,
            "name": self.name,
            "resize_to": self.resize_to,
            "cache_images": self.cache_images,
            "proposals": self.proposals,
            **changes,
        }
        copy = DetectionDataset(records, self.classes, **options)
        for attribute in ("category_ids", "problems", "keypoint_names"):
            if hasattr(self, attribute):
                setattr(copy, attribute, getattr(self, attribute))
        return copy

    def __repr__(self) -> str:
        num_objects = sum(len(r.boxes) for r in self.records)
        return (
            f"DetectionDataset({self.name or 'unnamed'}: {len(self)} images, {num_objects} objects, "
            f"classes={self.classes})"
        )


def _scale_target(target: dict, scale_x: float, scale_y: float) -> dict:
    """``target`` with its boxes, proposals and keypoints scaled by ``(scale_x, scale_y)``."""
    if scale_x == 1.0 and scale_y == 1.0:
        return target
    target = dict(target)
    for key in ("boxes", "proposals"):
        if key in target:
            target[key] = target[key] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    if target.get("keypoints") is not None:
        target["keypoints"] = target["keypoints"] * torch.tensor([scale_x, scale_y])
    return target
