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


# The luma weights of ITU-R BT.601, as torchvision's grayscale conversion uses them.
GRAY_WEIGHTS = torch.tensor([0.2989, 0.587, 0.114])


class RandomColourJitter(v2.Transform):
    """Photometric jitter as one colour matrix an image: brightness, contrast and saturation
    factors drawn uniformly in ``[1 - x, 1 + x]`` and a hue shift in ``[-hue, hue]`` of a turn,
    applied in that order by :func:`jitter_colours`.

    It gives what torchvision's ``ColorJitter`` gives with a fixed order of the steps (a test checks
    the two agree where no pixel is clipped), but the four steps are affine in the pixel values, so
    they fold into one 3x3 matrix and an offset: two passes over an image instead of a dozen. On
    one thread, a 192 x 192 image took 0.27 ms against 0.67 ms for torchvision's three steps
    followed by the same hue rotation, and 5.0 ms for ``ColorJitter`` with its HSV hue
    (``benchmarks/bench_transforms.py``). The difference: values are clipped to [0, 1] once, at the
    end, not after every step. The hue turns YIQ's chroma plane (:func:`hue_matrix`):
    it turns hues the way torchvision's ``adjust_hue`` does (the same direction, by about as much
    for saturated colours; not identical, as HSV's hue circle is a hexagon) and keeps grays gray.
    Images without 3 channels get brightness and contrast only; boxes are not touched."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
    ):
        super().__init__()
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.ranges = (float(brightness), float(contrast), float(saturation))
        self.hue = float(hue)

    def make_params(self, flat_inputs: list) -> dict:
        draws = (torch.rand(4) * 2.0 - 1.0).tolist()
        brightness, contrast, saturation = (1.0 + spread * draw for spread, draw in zip(self.ranges, draws))
        return {
            "brightness": brightness,
            "contrast": contrast,
            "saturation": saturation,
            "hue": self.hue * draws[3],
        }

    def transform(self, inpt: Tensor, params: dict) -> Tensor:
        return tv_tensors.wrap(jitter_colours(inpt.as_subclass(Tensor), **params), like=inpt)


def hue_matrix(hue: float) -> Tensor:
    """The 3x3 RGB matrix that shifts hues by ``hue`` of a full turn: a rotation of YIQ's chroma plane."""
    angle = -2.0 * math.pi * hue  # YIQ's (I, Q) turn the other way round than HSV's hue
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    return YIQ_TO_RGB @ rotation @ RGB_TO_YIQ


def jitter_colours(
    image: Tensor, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0
) -> Tensor:
    """``image`` (``Tensor[C, H, W]``, float in [0, 1] or uint8) with, in this order, its values
    scaled by ``brightness``, blended with its mean gray level by ``contrast``, blended with each
    pixel's gray by ``saturation`` and its hues shifted by ``hue`` of a turn (the last two for 3
    channels only); torchvision's definitions of the first three, folded into one matrix and
    offset, clipped once at the end."""
    channels = image.shape[-3]
    scale = 1.0 if image.is_floating_point() else 255.0
    pixels = image.float().reshape(channels, -1)
    if scale != 1.0:
        pixels = pixels / scale
    if channels == 3:
        weights = GRAY_WEIGHTS
        blend = saturation * torch.eye(3) + (1.0 - saturation) * torch.ones(3, 1) * weights
        colour = hue_matrix(hue) @ blend if hue else blend
    else:
        weights = torch.full((channels,), 1.0 / channels)
        colour = torch.eye(channels)
    # brightness: x b; contrast: c x + (1 - c) mean gray of x b; then the colour matrix
    mean_gray = float(pixels.mean(1) @ weights) * brightness
    matrix = colour * (brightness * contrast)
    offset = colour.sum(1, keepdim=True) * ((1.0 - contrast) * mean_gray)
    out = torch.addmm(offset, matrix, pixels).clamp_(0.0, 1.0).reshape(image.shape)
    if image.is_floating_point():
        return out.to(image.dtype)
    return (out * 255.0).round_().to(image.dtype)


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
    (brightness, contrast and saturation by up to 30%, then the hue by up to 0.05 of a turn, as
    one colour matrix, :class:`RandomColourJitter`).
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
        steps.append(RandomColourJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    steps.append(v2.ToDtype(torch.float32, scale=False))
    return DetectionTransform(v2.Compose(steps))


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Batch differently sized images as lists (the detector contract takes lists)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
