"""Detection transforms on ``(image, target)`` pairs, built on ``torchvision.transforms.v2``.

Boxes travel as ``tv_tensors.BoundingBoxes``, so every geometric transform moves them exactly with
the pixels. Besides ``"boxes"``, a target may carry ``"proposals"`` (``Tensor[K, 4]``, for Fast
R-CNN's external proposals) and ``"keypoints"`` (``Tensor[N, J, 2]``); both move with the image too.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

BOX_KEYS = ("boxes", "proposals")


class DetectionTransform:
    """Apply a v2 pipeline to ``image`` and the box-like entries of ``target``; returns plain tensors."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        canvas = tuple(image.shape[-2:])
        wrapped = {key: value for key, value in target.items()}
        for key in BOX_KEYS:
            if key in target:
                wrapped[key] = tv_tensors.BoundingBoxes(target[key], format="XYXY", canvas_size=canvas)
        if "keypoints" in target:
            # Keypoints ride along as zero-size boxes, which every geometric v2 transform handles.
            points = target["keypoints"].reshape(-1, 2)
            wrapped["keypoints"] = tv_tensors.BoundingBoxes(
                torch.cat([points, points], dim=1), format="XYXY", canvas_size=canvas
            )
        out_image, out_target = self.pipeline(tv_tensors.Image(image), wrapped)
        result = {}
        for key, value in out_target.items():
            result[key] = value.as_subclass(Tensor) if isinstance(value, Tensor) else value
        if "keypoints" in target:
            result["keypoints"] = result["keypoints"][:, :2].reshape(target["keypoints"].shape)
        return out_image.as_subclass(Tensor), result

    def __repr__(self) -> str:
        return f"DetectionTransform({self.pipeline})"


def build_transforms(
    train: bool,
    min_size: int = 0,
    max_size: int | None = None,
    horizontal_flip: bool = True,
    scale_jitter: tuple[int, ...] = (),
    photometric: bool = False,
    vertical_flip: bool = False,
    rotate90: bool = False,
) -> DetectionTransform:
    """The standard detection pipeline.

    ``min_size``/``max_size``: resize so the shorter side is ``min_size`` while the longer side
    stays at most ``max_size`` (aspect kept); ``min_size=0`` keeps the original size (models that
    resize internally, like the R-CNN family here, want that at evaluation time).
    Training adds horizontal flips, vertical flips and random quarter turns (for data with no up
    and down), scale jitter (a random shorter side from ``scale_jitter``) and photometric jitter
    (brightness, contrast, saturation, hue).
    """
    steps: list[v2.Transform] = []
    if train and scale_jitter:
        steps.append(v2.RandomShortestSize(min_size=list(scale_jitter), max_size=max_size))
    elif min_size and max_size is not None and max_size <= min_size:
        # Then the longer side always binds; torchvision wants that said as size=None.
        steps.append(v2.Resize(size=None, max_size=max_size, antialias=True))
    elif min_size:
        steps.append(v2.Resize(size=min_size, max_size=max_size, antialias=True))
    if train and horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if train and vertical_flip:
        steps.append(v2.RandomVerticalFlip(0.5))
    if train and rotate90:
        steps.append(v2.RandomApply([v2.RandomRotation((90, 90), expand=True)], p=0.5))
    if train and photometric:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    steps.append(v2.ToDtype(torch.float32, scale=False))
    return DetectionTransform(v2.Compose(steps))


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Batch differently sized images as lists (the detector contract takes lists)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
