"""The image batcher: what happens to images between the data set and a network, and back.

Every detector takes a list of images of any size (``float32 Tensor[3, H, W]`` in [0, 1]) and
returns detections in the frame of the images as given. The R-CNN family resizes each image so its
short side is ``min_size`` (long side at most ``max_size``), normalises and pads them into one batch
(:class:`ImageBatcher`); the classification-style nets (localizer, OverFeat windows, DeepPose)
warp an image to their fixed window (:func:`resize_to_window`). Both map outputs back.

Shape letters: B images, H x W image size, S window side.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.data.images import resize_image, scaled_size, warp_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class InputSizeConfig:
    """The size an R-CNN-family detector resizes its images to: short side ``min_size``, long side at
    most ``max_size`` (Fast R-CNN section 5.2, single scale; the papers use 600/1000 or 800/1333, a
    2-core CPU trains from scratch at about 320/427)."""

    min_size: int = 320
    max_size: int = 427
    # Training only: each batch's sides are scaled by a factor drawn uniformly from
    # [1 - scale_jitter, 1 + scale_jitter] (multi-scale training; 0 trains at the one size).
    scale_jitter: float = 0.0


class ImageBatcher(nn.Module):
    """Resize, normalise and pad a list of images into one batch, and map detections back.

    Each image is scaled so its short side is ``min_size`` unless its long side would exceed
    ``max_size``, then padded at the bottom/right to a multiple of ``size_divisible`` (the
    backbone's largest stride). Target boxes (and ``"proposals"``) are scaled with the image;
    detections are scaled back to the input frame. In training mode with ``scale_jitter`` > 0, both
    sides of a batch are scaled by one factor from ``[1 - j, 1 + j]`` (scale augmentation, see
    :meth:`jitter_factor`; evaluation always uses ``min_size``/``max_size``).
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        size_divisible: int = 32,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        scale_jitter: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= scale_jitter < 1.0:
            raise ValueError(f"scale_jitter must lie in [0, 1), got {scale_jitter}")
        self.min_size, self.max_size, self.size_divisible = min_size, max_size, size_divisible
        self.scale_jitter = scale_jitter
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def scale_for(self, height: int, width: int, factor: float = 1.0) -> float:
        return factor * min(self.min_size / min(height, width), self.max_size / max(height, width))

    def jitter_factor(self) -> float:
        """The factor this batch's sides are scaled by: 1 unless training with ``scale_jitter``.
        The short sides drawn are the multiples of ``size_divisible`` within ``min_size * (1 +- j)``,
        so a batch is never padded beyond its largest image's short side."""
        if not self.training or self.scale_jitter <= 0:
            return 1.0
        step = self.size_divisible
        low = math.ceil(self.min_size * (1 - self.scale_jitter) / step)
        high = math.floor(self.min_size * (1 + self.scale_jitter) / step)
        if high < low:
            return 1.0
        side = step * int(torch.randint(low, high + 1, ()).item())
        return side / self.min_size

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, factor: float | None = None
    ) -> tuple[Tensor, list[tuple[int, int]], list[float], list[dict] | None]:
        """-> (batch ``Tensor[B, 3, H, W]``, resized sizes ``(h, w)``, scales, scaled targets).
        ``factor`` scales both sides beyond ``min_size``/``max_size`` (default: :meth:`jitter_factor`)."""
        resized, sizes, scales = [], [], []
        factor = self.jitter_factor() if factor is None else factor
        for image in images:
            check_image(image)
            height, width = image.shape[-2:]
            scale = self.scale_for(height, width, factor)
            new_size = scaled_size(height, width, scale)
            image = resize_image(image, new_size)
            resized.append((image - self.mean) / self.std)
            sizes.append(new_size)
            scales.append(scale)
        divisor = self.size_divisible
        batch_height = -(-max(s[0] for s in sizes) // divisor) * divisor
        batch_width = -(-max(s[1] for s in sizes) // divisor) * divisor
        batch = resized[0].new_zeros((len(resized), 3, batch_height, batch_width))
        for index, image in enumerate(resized):
            batch[index, :, : image.shape[1], : image.shape[2]] = image
        if targets is not None:
            targets = [self._scale_target(target, scale) for target, scale in zip(targets, scales)]
        return batch, sizes, scales, targets

    @staticmethod
    def _scale_target(target: dict, scale: float) -> dict:
        scaled = dict(target)
        for key in ("boxes", "proposals"):
            if key in scaled:
                scaled[key] = scaled[key].float().reshape(-1, 4) * scale
        return scaled

    def export_settings(self) -> dict:
        """What :mod:`detlab.export.runtime` needs to resize, normalise and pad as this batcher does."""
        return {
            "resize": "batcher",
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size_divisible": self.size_divisible,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    @staticmethod
    def restore(
        detections: list[dict[str, Tensor]], scales: list[float], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Map detection boxes from the resized frame back to the frame of the images as given."""
        restored = []
        for detection, scale, size in zip(detections, scales, original_sizes):
            restored.append({**detection, "boxes": box_ops.clip(detection["boxes"] / scale, size)})
        return restored


def batcher_from_config(config: InputSizeConfig, strides: list[float]) -> ImageBatcher:
    """An :class:`ImageBatcher` padding to a multiple of the largest of the backbone's ``strides``
    (``config`` holds numbers, no ``"auto"``: :func:`detlab.models.data_fit.concrete`)."""
    return ImageBatcher(
        config.min_size, config.max_size, size_divisible=int(max(strides)), scale_jitter=config.scale_jitter
    )


def max_size_for(min_size: int) -> int:
    """The long-side limit that keeps :class:`InputSizeConfig`'s default 4:3 for ``min_size``."""
    return int(round(min_size * InputSizeConfig.max_size / InputSizeConfig.min_size))


def check_image(image: Tensor) -> None:
    """The model input contract: ``Tensor[3, H, W]`` (float in [0, 1])."""
    if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(
            f"expected images as Tensor[3, H, W], got {shape}; "
            "detlab.load(...).predict takes paths, PIL images and numpy arrays too"
        )


def resize_to_window(image: Tensor, window_size: int) -> Tensor:
    """``Tensor[3, H, W] -> Tensor[3, S, S]`` with :func:`detlab.data.images.warp_image` (box
    coordinates normalised by the image size are unchanged by the warp): the same warp as the data
    layer's ``resize_to``, so a model sees its training images (warped in advance) and its test
    images alike."""
    check_image(image)
    return warp_image(image, (window_size, window_size))


def warp_batch(images: list[Tensor], window_size: int) -> tuple[Tensor, Tensor]:
    """Images of any sizes -> ``(Tensor[B, 3, S, S], sizes Tensor[B, 4])`` where ``sizes`` holds
    ``(W, H, W, H)`` of each original image: multiply normalised xyxy boxes by it to get pixels."""
    windows = torch.stack([resize_to_window(image, window_size) for image in images])
    sizes = torch.tensor(
        [[image.shape[-1], image.shape[-2]] * 2 for image in images],
        dtype=windows.dtype,
        device=windows.device,
    )
    return windows, sizes
