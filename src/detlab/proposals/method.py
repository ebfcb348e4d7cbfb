"""The one interface of every proposal method: ``propose(image) -> Tensor[K, 4]`` best first.

A method only implements ``_generate(image, rng)`` on a prepared ``float32 [H, W, 3]`` numpy
image; this base class does what is common to all of them, so every method treats input and
output alike:

- input: every form :func:`detlab.data.images.to_image_tensor` takes: a path, a PIL image, a numpy
  array ``H x W x 3`` (RGB, channels last; also RGBA and greyscale) or a tensor ``[3, H, W]``
  (channels first; also ``[1, H, W]`` / ``[H, W]`` greyscale and ``[4, H, W]`` RGBA composited on
  white, as the image loader does), float in [0, 1] or uint8;
- very large images are shrunk so their longer side is ``max_side`` before the method runs, and
  the boxes are mapped back to the original pixels;
- output: boxes clipped to the image, without those narrower or lower than ``min_size``, without
  exact duplicates, at most ``max_proposals`` of them, best first; deterministic for a ``seed``.

Shape letters: K proposals, H and W image height and width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from detlab.data.images import to_image_tensor

DEFAULT_MAX_SIDE = 2048


def image_to_array(image: Tensor | np.ndarray | Image.Image | str | Path) -> np.ndarray:
    """Any accepted image (see :func:`detlab.data.images.to_image_tensor`) -> ``float32 [H, W, 3]``
    RGB in [0, 1] (a new array).

    Raises ``ValueError`` for what is not an image and for empty images.
    """
    tensor = to_image_tensor(image).cpu()
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy(), dtype=np.float32)


def resize_array(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize ``[H, W, 3]`` by ``scale`` with anti-aliasing (at least one pixel a side)."""
    height, width = image.shape[:2]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", antialias=True)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).clamp(0, 1).numpy())


def finish_boxes(
    boxes: np.ndarray,
    scores: np.ndarray | None,
    height: int,
    width: int,
    min_size: float,
    max_proposals: int | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Clip, drop small boxes and exact duplicates (keeping the first), cut to ``max_proposals``.

    ``boxes``: ``[K, 4]`` xyxy in the order of preference. ``min_size`` never exceeds the image's
    shorter side, so a tiny image still gets its boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    min_size = max(min(float(min_size), float(height), float(width)), 1e-6)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    order = np.flatnonzero(keep)
    if len(order):
        _, first = np.unique(boxes[order], axis=0, return_index=True)
        order = order[np.sort(first)]
    if max_proposals is not None:
        order = order[:max_proposals]
    return boxes[order], None if scores is None else np.asarray(scores, dtype=np.float32)[order]


class ProposalMethod:
    """Base class: subclasses set ``name`` and implement ``_generate``.

    Args:
        max_proposals: keep at most this many boxes (``None`` keeps all).
        min_size: drop boxes narrower or lower than this many pixels (original image pixels).
        seed: seeds every random choice, so the same image gives the same boxes.
        max_side: images whose longer side is larger are shrunk to it first (``None``: never).
    """

    name = "base"

    def __init__(
        self,
        max_proposals: int | None = 2000,
        min_size: float = 4.0,
        seed: int = 0,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ):
        if max_proposals is not None and max_proposals < 1:
            raise ValueError(f"max_proposals must be a positive number or None, got {max_proposals}")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        if max_side is not None and max_side < 8:
            raise ValueError(f"max_side must be at least 8 pixels or None, got {max_side}")
        self.max_proposals, self.min_size, self.seed, self.max_side = max_proposals, min_size, seed, max_side

    def settings(self) -> dict:
        """Everything that changes the output; stored with cached proposals."""
        return {
            "name": self.name,
            "max_proposals": self.max_proposals,
            "min_size": self.min_size,
            "seed": self.seed,
            "max_side": self.max_side,
        }

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` ``float32 [H, W, 3]`` -> boxes ``[K, 4]`` xyxy best first, scores ``[K]`` or None."""
        raise NotImplementedError

    def propose_scored(
        self, image: Tensor | np.ndarray | Image.Image | str | Path
    ) -> tuple[Tensor, Tensor | None]:
        """``image`` -> (boxes ``float32 Tensor[K, 4]`` xyxy best first, scores ``Tensor[K]`` or None)."""
        array = image_to_array(image)
        height, width = array.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            array = resize_array(array, scale)
        boxes, scores = self._generate(array, np.random.default_rng(self.seed))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if scale != 1.0:
            # Map back to the original pixels: a box edge at pixel edge e sits at e / scale.
            boxes = boxes * np.array([width / array.shape[1], height / array.shape[0]] * 2)
        boxes, scores = finish_boxes(boxes, scores, height, width, self.min_size, self.max_proposals)
        return torch.from_numpy(boxes), None if scores is None else torch.from_numpy(scores)

    def propose(self, image: Tensor | np.ndarray | Image.Image | str | Path) -> Tensor:
        """``image`` -> ``float32 Tensor[K, 4]`` absolute ``(x1, y1, x2, y2)``, best first."""
        return self.propose_scored(image)[0]

    def __call__(self, image: Tensor | np.ndarray | Image.Image | str | Path) -> Tensor:
        return self.propose(image)

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.settings().items() if key != "name")
        return f"{type(self).__name__}({options})"


def _propose_timed(job: tuple) -> tuple[Tensor, float]:
    """One image file's proposals and the seconds ``propose`` took (decoding excluded)."""
    import time

    from detlab.data.images import load_image

    method, path = job
    image = load_image(path)
    start = time.perf_counter()
    boxes = method.propose(image)
    return boxes, time.perf_counter() - start


def _one_thread() -> None:
    torch.set_num_threads(1)  # the processes share the cores, one each


def propose_files(method: ProposalMethod, paths: list, workers: int = 1):
    """Yield ``(position, boxes Tensor[K, 4], seconds)`` for each of ``paths``, in order.

    ``workers > 1`` runs that many processes (spawned, one thread each) over the files; one
    worker runs them here. ``seconds`` is the time of ``method.propose`` alone. Stopping the
    iteration (or an interrupt) ends the processes; what the caller stored so far is kept.
    """
    workers = max(1, min(int(workers), len(paths)))
    jobs = [(method, str(path)) for path in paths]
    if workers == 1:
        for position, job in enumerate(jobs):
            yield (position, *_propose_timed(job))
        return
    from multiprocessing import get_context

    with get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
        for position, (boxes, seconds) in enumerate(pool.imap(_propose_timed, jobs)):
            yield position, boxes, seconds
