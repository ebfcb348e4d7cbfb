"""Baseline proposal methods, as in Hosang et al., "What makes for effective detection
proposals?" (TPAMI 2016, section 2.2): boxes that know nothing (or little) about objects, the
floor any real proposal method must clear.

- :class:`SlidingWindows`: a regular grid of windows at several scales and aspect ratios;
- :class:`UniformBoxes`: boxes drawn uniformly over the image;
- :class:`GaussianBoxes`: box centre and log-size drawn from a Gaussian, by default a broad
  one, or one fitted to ground-truth boxes with :meth:`GaussianBoxes.fit`;
- :class:`SuperpixelBoxes`: the bounding box of each Felzenszwalb-Huttenlocher superpixel at
  several scales (single regions, no grouping: Selective Search without its hierarchy).

All follow :class:`detlab.proposals.method.ProposalMethod`.
Shape letters: K boxes; H, W image height and width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from torch import Tensor

from detlab.proposals.method import ProposalMethod
from detlab.proposals.selective_search import segment


class SlidingWindows(ProposalMethod):
    """Windows of side ``scale * sqrt(H * W)`` (for aspect ratio 1; ratio = width / height keeps
    the area), stepped by ``stride * side``; larger scales first, a seeded shuffle within a scale
    so a cut at ``max_proposals`` does not favour the top-left corner.
    """

    name = "sliding"

    def __init__(
        self,
        scales: Sequence[float] = (0.9, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: float = 0.5,
        **options,
    ):
        super().__init__(**options)
        if (
            not scales
            or min(scales) <= 0
            or not aspect_ratios
            or min(aspect_ratios) <= 0
            or not 0 < stride <= 1
        ):
            raise ValueError("scales and aspect_ratios must be positive and stride in (0, 1]")
        self.scales, self.aspect_ratios, self.stride = tuple(scales), tuple(aspect_ratios), stride

    def settings(self) -> dict:
        return {
            **super().settings(),
            "scales": list(self.scales),
            "aspect_ratios": list(self.aspect_ratios),
            "stride": self.stride,
        }

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        height, width = image.shape[:2]
        per_scale = []
        for scale in sorted(self.scales, reverse=True):
            boxes = []
            for ratio in self.aspect_ratios:
                box_width = min(scale * np.sqrt(height * width * ratio), width)
                box_height = min(scale * np.sqrt(height * width / ratio), height)
                xs = np.arange(0.0, width - box_width + 1e-6, max(self.stride * box_width, 1.0))
                ys = np.arange(0.0, height - box_height + 1e-6, max(self.stride * box_height, 1.0))
                # Centre the grid so the unused margin is split between both sides.
                xs += (width - box_width - xs[-1]) / 2
                ys += (height - box_height - ys[-1]) / 2
                left, top = np.meshgrid(xs, ys)
                left, top = left.reshape(-1), top.reshape(-1)
                boxes.append(np.stack([left, top, left + box_width, top + box_height], 1))
            boxes = np.concatenate(boxes)
            per_scale.append(boxes[rng.permutation(len(boxes))])
        return np.concatenate(per_scale), None


class UniformBoxes(ProposalMethod):
    """Boxes whose two x edges and two y edges are independent uniform draws over the image."""

    name = "uniform"

    def __init__(self, num_samples: int = 10000, **options):
        super().__init__(**options)
        self.num_samples = num_samples

    def settings(self) -> dict:
        return {**super().settings(), "num_samples": self.num_samples}

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        height, width = image.shape[:2]
        xs = np.sort(rng.uniform(0, width, size=(self.num_samples, 2)), axis=1)
        ys = np.sort(rng.uniform(0, height, size=(self.num_samples, 2)), axis=1)
        return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1), None


class GaussianBoxes(ProposalMethod):
    """Boxes from a Gaussian over ``(cx / W, cy / H, log(w / W), log(h / H))``.

    ``mean`` ``[4]`` and ``covariance`` ``[4, 4]`` default to a broad prior (centred boxes a
    quarter of the image wide, wide spread); :meth:`fit` estimates them from ground truth, which
    is Hosang's "Gaussian" baseline.
    """

    name = "gaussian"

    def __init__(
        self,
        mean: Sequence[float] = (0.5, 0.5, np.log(0.25), np.log(0.25)),
        covariance: Sequence[Sequence[float]] | None = None,
        num_samples: int = 10000,
        **options,
    ):
        super().__init__(**options)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(4)
        default = np.diag([0.25**2, 0.25**2, 0.8**2, 0.8**2])
        self.covariance = (
            default if covariance is None else np.asarray(covariance, dtype=np.float64).reshape(4, 4)
        )
        self.num_samples = num_samples

    @classmethod
    def fit(
        cls, boxes: Sequence[Tensor | np.ndarray], image_sizes: Sequence[tuple[int, int]], **options
    ) -> GaussianBoxes:
        """Fit to ground truth: ``boxes`` per image ``[N, 4]`` xyxy, ``image_sizes`` per image ``(H, W)``."""
        rows = []
        for image_boxes, (height, width) in zip(boxes, image_sizes):
            image_boxes = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4)
            box_width = image_boxes[:, 2] - image_boxes[:, 0]
            box_height = image_boxes[:, 3] - image_boxes[:, 1]
            valid = (box_width > 0) & (box_height > 0)
            rows.append(
                np.stack(
                    [
                        (image_boxes[valid, 0] + image_boxes[valid, 2]) / 2 / width,
                        (image_boxes[valid, 1] + image_boxes[valid, 3]) / 2 / height,
                        np.log(box_width[valid] / width),
                        np.log(box_height[valid] / height),
                    ],
                    1,
                )
            )
        samples = np.concatenate(rows) if rows else np.zeros((0, 4))
        if len(samples) < 2:
            raise ValueError(
                f"fitting a Gaussian needs at least 2 non-empty ground-truth boxes, got {len(samples)}"
            )
        return cls(mean=samples.mean(0), covariance=np.cov(samples, rowvar=False), **options)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "mean": self.mean.round(6).tolist(),
            "covariance": self.covariance.round(6).tolist(),
            "num_samples": self.num_samples,
        }

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        height, width = image.shape[:2]
        samples = rng.multivariate_normal(self.mean, self.covariance, size=self.num_samples, method="eigh")
        centre_x, centre_y = samples[:, 0] * width, samples[:, 1] * height
        box_width, box_height = np.exp(samples[:, 2]) * width, np.exp(samples[:, 3]) * height
        boxes = np.stack(
            [
                centre_x - box_width / 2,
                centre_y - box_height / 2,
                centre_x + box_width / 2,
                centre_y + box_height / 2,
            ],
            1,
        )
        return boxes, None


class SuperpixelBoxes(ProposalMethod):
    """Bounding boxes of single Felzenszwalb-Huttenlocher superpixels (RGB) at several ``ks``,
    coarse scales first and larger superpixels first within a scale; the score is the
    superpixel's share of the image."""

    name = "superpixels"

    def __init__(self, ks: Sequence[int] = (800, 400, 200, 100, 50), **options):
        super().__init__(**options)
        if not ks or min(ks) <= 0:
            raise ValueError(f"ks must be positive segmentation scales, got {ks}")
        self.ks = tuple(ks)

    def settings(self) -> dict:
        return {**super().settings(), "ks": list(self.ks)}

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = [], []
        for k in sorted(self.ks, reverse=True):
            labels = segment(image, k)
            sizes = np.bincount(labels.reshape(-1))
            regions = ndimage.find_objects(labels + 1)
            for region in np.argsort(-sizes, kind="stable"):
                rows, cols = regions[region]
                boxes.append((cols.start, rows.start, cols.stop, rows.stop))
            scores.append(np.sort(sizes)[::-1] / labels.size)
        return np.asarray(boxes, dtype=np.float64), np.concatenate(scores)
