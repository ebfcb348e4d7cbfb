"""Mosaic augmentation (the idea of YOLOv4/v5): four training images tiled around a random centre.

:class:`MosaicDataset` wraps any data set of the sample schema (``dataset[i] -> (image, target)``)
so every detector can train on mosaics. A mosaic of image ``i`` and three images drawn at random:

1. each image is resized (aspect kept, bilinear, antialiased) so its longer side is ``size``;
2. the four are placed on a ``2 size x 2 size`` gray canvas around a random centre ``(xc, yc)``
   (uniform in ``[size / 2, 3 size / 2]``), one per quadrant, each touching the centre with a corner
   (image ``i``'s bottom-right corner, the second image's bottom-left, the third's top-right, the
   fourth's top-left), and cut by the canvas border;
3. a random zoom ``s`` (uniform in ``scale``) picks the square of side ``size / s`` centred on the
   canvas centre (at most the whole canvas), which is resized to ``size x size``.

Boxes are moved exactly like the pixels, clipped to the output, and dropped when what is left is
thinner than ``min_side`` pixels or smaller than ``min_visible`` of the box before clipping.
Every random draw comes from torch's global generator, so :class:`detlab.engine.sampling.
SeededSamples` makes the mosaics reproducible per ``(seed, epoch, index)``, across resumes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

FILL = 114 / 255  # the gray around and between the images (0.447)
OBJECT_KEYS = ("labels", "difficult", "iscrowd")  # per-object entries kept for the kept boxes


class MosaicDataset(Dataset):
    """``dataset`` whose samples are, with probability ``probability``, mosaics of four images.

    Args:
        dataset: any data set of the sample schema (images ``float32 Tensor[3, H, W]`` in [0, 1] of
            any size; targets with ``boxes`` xyxy in pixels, ``labels``, ``difficult``, ``iscrowd``).
        size: a mosaic is ``size x size`` pixels; each image is resized so its longer side is ``size``.
        probability: the share of samples that are mosaics; the others are ``dataset[i]`` unchanged.
        scale: the range of the random zoom ``s``: the output shows a ``size / s`` square of the
            ``2 size`` canvas (``s < 1``: zoomed out, ``s > 1``: zoomed in).
        off_after: no mosaics once the training progress (:meth:`set_progress`) reaches it, so the
            last part of training sees the images as they are.
        min_side, min_visible: a box is dropped when its clipped width or height is below
            ``min_side`` output pixels, or its clipped area below ``min_visible`` of its area
            before clipping (both in output pixels).

    ``len``, ``classes``, ``records``, ``num_classes``, ``name``... are the wrapped data set's;
    :meth:`with_transforms`, :meth:`with_options` and :meth:`subset` wrap the wrapped data set's
    result in the same mosaic.
    """

    def __init__(
        self,
        dataset: Dataset,
        size: int,
        probability: float = 1.0,
        scale: tuple[float, float] = (0.5, 1.5),
        off_after: float = 0.85,
        min_side: float = 2.0,
        min_visible: float = 0.25,
    ):
        low, high = (float(value) for value in scale)
        if int(size) < 1:
            raise ValueError(f"mosaic size must be at least 1, got {size}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mosaic probability must be in [0, 1], got {probability}")
        if not 0.0 < low <= high:
            raise ValueError(f"mosaic scale must be (low, high) with 0 < low <= high, got {scale}")
        self.dataset = dataset
        self.size = int(size)
        self.probability = float(probability)
        self.scale = (low, high)
        self.off_after = float(off_after)
        self.min_side = float(min_side)
        self.min_visible = float(min_visible)
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        """The share of the training budget spent so far (0..1); mosaics stop at ``off_after``."""
        self.progress = float(fraction)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if self.probability <= 0.0 or self.progress >= self.off_after:
            return self.dataset[index]
        if self.probability < 1.0 and torch.rand(()).item() >= self.probability:
            return self.dataset[index]
        # All of the mosaic's own draws come before the images are read, so the draws of the wrapped
        # data set's transforms do not move the geometry.
        others = torch.randint(len(self.dataset), (3,)).tolist()
        centre = torch.randint(math.ceil(self.size / 2), math.floor(1.5 * self.size) + 1, (2,)).tolist()
        low, high = self.scale
        zoom = low + (high - low) * torch.rand(()).item()
        samples = [self.dataset[j] for j in (index, *others)]
        return self.compose(samples, (centre[0], centre[1]), zoom)

    def compose(
        self, samples: list[tuple[Tensor, dict]], centre: tuple[int, int], zoom: float
    ) -> tuple[Tensor, dict]:
        """The mosaic of four ``(image, target)`` samples around canvas point ``centre = (xc, yc)``
        (integer pixels) at zoom ``zoom``: the drawing-free part of ``__getitem__``. The first
        sample goes top left (and gives the ``image_id``), then top right, bottom left, bottom right."""
        size = self.size
        # The crop: a square of side size / zoom centred on the canvas centre. Centred and at most
        # the canvas, it lies inside the canvas, so it is never shifted (only a zoom below 1/2
        # would make it larger than the canvas, and then it is the whole canvas).
        side = min(max(round(size / zoom), 1), 2 * size)
        origin = (2 * size - side) // 2  # canvas coordinate of the crop's top-left corner
        canvas = torch.full((samples[0][0].shape[0], side, side), FILL, dtype=torch.float32)
        xc, yc = centre[0] - origin, centre[1] - origin  # the centre in crop coordinates
        factor = size / side  # crop -> output
        moved: dict[str, list[Tensor]] = {"boxes": [], "keypoints": [], "proposals": []}
        objects: dict[str, list[Tensor]] = {key: [] for key in OBJECT_KEYS}
        for quadrant, (image, target) in enumerate(samples):
            height, width = image.shape[-2:]
            ratio = size / max(height, width)
            new_height, new_width = max(1, round(height * ratio)), max(1, round(width * ratio))
            if (new_height, new_width) != (height, width):
                image = F.interpolate(
                    image[None].float(),
                    size=(new_height, new_width),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
            left = xc - new_width if quadrant in (0, 2) else xc
            top = yc - new_height if quadrant in (0, 1) else yc
            x1, y1 = max(left, 0), max(top, 0)
            x2, y2 = min(left + new_width, side), min(top + new_height, side)
            if x1 < x2 and y1 < y2:
                canvas[:, y1:y2, x1:x2] = image[:, y1 - top : y2 - top, x1 - left : x2 - left]
            # Pixel (x, y) of the image lands at output (x * gain_x + shift_x, y * gain_y + shift_y).
            gain = torch.tensor([new_width / width * factor, new_height / height * factor])
            shift = torch.tensor([left * factor, top * factor])
            boxes = target["boxes"].float().reshape(-1, 4)
            # A box sticking out of its own image would reach into its neighbour's quadrant.
            boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height]))
            moved["boxes"].append(boxes * gain.repeat(2) + shift.repeat(2))
            for key in ("keypoints", "proposals"):
                if target.get(key) is not None:
                    points = target[key].float()
                    points = points.reshape(-1, 4) if key == "proposals" else points
                    repeat = 2 if key == "proposals" else 1
                    moved[key].append(points * gain.repeat(repeat) + shift.repeat(repeat))
            count = len(boxes)
            for key in OBJECT_KEYS:
                default = torch.zeros(count, dtype=torch.int64 if key == "labels" else torch.bool)
                objects[key].append(target.get(key, default).reshape(-1))
        output = canvas
        if side != size:
            output = F.interpolate(
                canvas[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0.0, 1.0)

        clipped, keep = self.clip_boxes(torch.cat(moved["boxes"]))
        first = samples[0][1]
        result = {"boxes": clipped[keep], "labels": torch.cat(objects["labels"]).to(torch.int64)[keep]}
        result["image_id"] = first.get("image_id")
        for key in ("difficult", "iscrowd"):
            dtype = first[key].dtype if isinstance(first.get(key), Tensor) else torch.bool
            result[key] = torch.cat(objects[key]).to(dtype)[keep]
        if len(moved["keypoints"]) == len(samples):  # only when every image has them
            result["keypoints"] = torch.cat(moved["keypoints"])[keep]
        if len(moved["proposals"]) == len(samples):
            proposals = torch.cat(moved["proposals"]).clamp(0.0, float(size))
            sizes = proposals[:, 2:] - proposals[:, :2]
            result["proposals"] = proposals[(sizes > 0).all(dim=1)]
        return output, result

    def clip_boxes(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """``boxes`` (output pixels) clipped to the output, and which of them to keep: those
        still at least ``min_side`` wide and high with ``min_visible`` of their area left."""
        clipped = boxes.clamp(0.0, float(self.size))
        widths, heights = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (
            (widths > 0)
            & (heights > 0)
            & (widths >= self.min_side)
            & (heights >= self.min_side)
            & (widths * heights >= self.min_visible * area_before)
        )
        return clipped, keep

    def with_transforms(self, transforms) -> MosaicDataset:
        """The wrapped data set's ``with_transforms(transforms)``, in the same mosaic."""
        return self._wrap(self.dataset.with_transforms(transforms))

    def without_augmentation(self):
        """The wrapped data set's images as stored: no mosaics, no transforms."""
        return self.dataset.without_augmentation()

    def with_options(self, **options) -> MosaicDataset:
        """The wrapped data set's ``with_options(**options)``, in the same mosaic."""
        return self._wrap(self.dataset.with_options(**options))

    def subset(self, indices) -> MosaicDataset:
        """The wrapped data set's ``subset(indices)`` (the other three images come from it too)."""
        return self._wrap(self.dataset.subset(indices))

    def _wrap(self, dataset: Dataset) -> MosaicDataset:
        copy = MosaicDataset(
            dataset, self.size, self.probability, self.scale, self.off_after, self.min_side, self.min_visible
        )
        copy.progress = self.progress
        return copy

    def __getattr__(self, name: str):
        # Called only when normal lookup fails. Dunder names (pickle's and copy's probes) and the
        # wrapped data set itself (absent while unpickling, before __dict__ is restored) are not
        # delegated: that would recurse.
        dataset = self.__dict__.get("dataset")
        if name.startswith("__") or name == "dataset" or dataset is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return (
            f"MosaicDataset({self.dataset!r}, size={self.size}, probability={self.probability}, "
            f"scale={self.scale}, off_after={self.off_after})"
        )
