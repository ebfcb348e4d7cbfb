"""Detection transforms on ``(image, target)`` pairs, built on ``torchvision.transforms.v2``.

Boxes travel as ``tv_tensors.BoundingBoxes``, so every geometric transform moves them exactly with
the pixels. Besides ``"boxes"``, a target may carry ``"proposals"`` (``Tensor[K, 4]``, for Fast
R-CNN's external proposals) and ``"keypoints"`` (``Tensor[N, J, 2]``); both move with the image too.
"""

from __future__ import annotations

import math

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


# RGB -> YIQ (NTSC): Y is the luma, (I, Q) the chroma plane, where a hue shift is a rotation.
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)


class RandomHueRotation(v2.Transform):
    """Hue jitter: the chroma plane of YIQ space rotated by ``h`` of a full turn, ``h`` uniform in
    ``[-hue, hue]``. It turns hues the way torchvision's ``adjust_hue`` does (the same direction,
    by about as much for saturated colours; not identical, as HSV's hue circle is a hexagon) and
    leaves gray pixels gray, but it is one 3x3 colour matrix an image instead of a round trip
    through HSV: about 10x faster on a 640 x 480 image (3 against 29 ms on one thread), where the
    HSV hue was most of a training sample's time. Images that do not have 3 channels pass
    unchanged; boxes are not touched."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, hue: float):
        super().__init__()
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.hue = float(hue)

    def make_params(self, flat_inputs: list) -> dict:
        return {"hue": (torch.rand(()).item() * 2.0 - 1.0) * self.hue}

    def transform(self, inpt: Tensor, params: dict) -> Tensor:
        if inpt.shape[-3] != 3 or params["hue"] == 0.0:
            return inpt
        return tv_tensors.wrap(rotate_hue(inpt.as_subclass(Tensor), params["hue"]), like=inpt)


def rotate_hue(image: Tensor, hue: float) -> Tensor:
    """``image`` (``Tensor[3, H, W]``, float in [0, 1] or uint8) with its hues shifted by ``hue``
    of a full turn (a rotation of YIQ's chroma plane; see :class:`RandomHueRotation`)."""
    angle = -2.0 * math.pi * hue  # YIQ's (I, Q) turn the other way round than HSV's hue
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = YIQ_TO_RGB @ rotation @ RGB_TO_YIQ
    scale = 1.0 if image.is_floating_point() else 255.0
    pixels = image.float().reshape(3, -1) / scale
    rotated = (matrix @ pixels).clamp_(0.0, 1.0).reshape(image.shape)
    if image.is_floating_point():
        return rotated.to(image.dtype)
    return (rotated * 255.0).round_().to(image.dtype)


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
    (brightness, contrast and saturation by up to 30%, then the hue by up to 0.05 of a turn,
    :class:`RandomHueRotation`).
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
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3))
        steps.append(RandomHueRotation(0.05))
    steps.append(v2.ToDtype(torch.float32, scale=False))
    return DetectionTransform(v2.Compose(steps))


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Batch differently sized images as lists (the detector contract takes lists)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
