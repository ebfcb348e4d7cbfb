"""detlab's compiled Felzenszwalb-Huttenlocher segmentation against scikit-image's, the oracle:
the label maps must be identical, ties and the small-region pass included."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import felzenszwalb as skimage_felzenszwalb

from detlab.proposals.graph_segmentation import PixelGraph, felzenszwalb
from detlab.proposals.selective_search import convert_colour


def textured_scene(height: int, width: int, seed: int, levels: int | None = None) -> np.ndarray:
    """Blobs, gradients and noise, ``float32 [H, W, 3]`` in [0, 1]; with ``levels`` the values are
    quantised, so many edges have exactly equal weights (the case where the visiting order of
    ties decides the result)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([cols / width, rows / height, 0.5 + 0.3 * np.sin(rows / 7.0) * np.cos(cols / 5.0)], -1)
    for _ in range(6):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        image[top : top + rng.integers(5, height // 2), left : left + rng.integers(5, width // 2)] = (
            rng.random(3)
        )
    image = (image + rng.normal(0, 0.05, image.shape)).clip(0, 1).astype(np.float32)
    if levels:
        image = np.round(image * levels) / levels
    return image


def skimage_labels(image: np.ndarray, k: float, min_size: int) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    axis = -1 if image.ndim == 3 else None
    return skimage_felzenszwalb(image, scale=k, sigma=0.8, min_size=min_size, channel_axis=axis)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("space", ["rgb", "hsv", "lab", "I", "H"])
@pytest.mark.parametrize("levels", [None, 16])
def test_labels_equal_skimage(seed, space, levels):
    image = convert_colour(textured_scene(61, 83, seed, levels), space)
    for k, min_size in ((20, 5), (100, 100), (300, 40)):
        expected = skimage_labels(image, k, min_size)
        got = felzenszwalb(image, k, sigma=0.8, min_size=min_size)
        assert got.dtype == np.int64 and got.shape == image.shape[:2]
        np.testing.assert_array_equal(got, expected)
        # Dense labels 0..R-1, numbered in raster order of each region's first pixel.
        first_pixels = np.unique(got.reshape(-1), return_index=True)[1]
        assert np.all(np.diff(first_pixels) > 0) and got.max() + 1 == len(first_pixels)


def test_one_graph_segmented_at_several_k_equals_separate_runs():
    image = convert_colour(textured_scene(50, 70, seed=3), "lab")
    graph = PixelGraph(image, sigma=0.8)
    counts = []
    for k in (50, 100, 150, 300):
        labels = graph.segment(k, min_size=k // 10)
        np.testing.assert_array_equal(labels, skimage_labels(image, k, k // 10))
        counts.append(labels.max() + 1)
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # larger k, fewer regions


def test_two_dimensional_input_and_degenerate_shapes():
    image = textured_scene(30, 40, seed=4)[..., 0]
    np.testing.assert_array_equal(felzenszwalb(image, 50, min_size=10), skimage_labels(image, 50, 10))
    np.testing.assert_array_equal(felzenszwalb(np.zeros((1, 1, 3)), 50), np.zeros((1, 1), dtype=np.int64))
    flat = felzenszwalb(np.full((9, 7, 3), 0.5), 50, min_size=1)
    assert flat.max() == 0  # a flat image is one region
    with pytest.raises(ValueError, match="image"):
        felzenszwalb(np.zeros((4, 4, 3, 2)), 50)
    with pytest.raises(ValueError, match="image"):
        felzenszwalb(np.zeros((0, 5, 3)), 50)
