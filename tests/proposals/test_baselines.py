"""Baseline proposal methods and the shared output rules of every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detlab.proposals import (
    METHODS,
    GaussianBoxes,
    SlidingWindows,
    SuperpixelBoxes,
    UniformBoxes,
    build_method,
    propose,
)
from detlab.proposals.method import finish_boxes

IMAGE = torch.rand(3, 100, 100, generator=torch.Generator().manual_seed(0))


def test_sliding_windows_tile_the_image_as_computed_by_hand():
    # Scale 0.5 of sqrt(100 * 100) = 50 px squares, stepped by 50 px: exactly the four quadrants.
    boxes = SlidingWindows(scales=(0.5,), aspect_ratios=(1.0,), stride=1.0, max_proposals=None).propose(IMAGE)
    expected = {(0, 0, 50, 50), (50, 0, 100, 50), (0, 50, 50, 100), (50, 50, 100, 100)}
    assert {tuple(box) for box in boxes.int().tolist()} == expected
    # Stride 0.5 adds the windows halfway between: 3 x 3 positions.
    assert len(SlidingWindows(scales=(0.5,), aspect_ratios=(1.0,), stride=0.5).propose(IMAGE)) == 9


def test_sliding_windows_aspect_ratio_and_scale_order():
    boxes = SlidingWindows(scales=(0.2, 0.4), aspect_ratios=(2.0,), max_proposals=None).propose(IMAGE)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(widths / heights, torch.full_like(widths, 2.0))
    torch.testing.assert_close(widths * heights, torch.where(widths > 40, 1600.0, 400.0))
    assert (widths[1:] <= widths[:-1]).all()  # larger scale first


@pytest.mark.parametrize("method", [UniformBoxes, GaussianBoxes])
def test_random_baselines_are_seeded_and_inside_the_image(method):
    boxes = method(seed=3, max_proposals=500).propose(IMAGE)
    assert len(boxes) == 500
    assert torch.equal(boxes, method(seed=3, max_proposals=500).propose(IMAGE))
    assert not torch.equal(boxes, method(seed=4, max_proposals=500).propose(IMAGE))
    assert (boxes >= 0).all() and (boxes <= 100).all() and (boxes[:, 2:] - boxes[:, :2] >= 4).all()


def test_uniform_boxes_spread_over_the_image():
    boxes = UniformBoxes(num_samples=20000, max_proposals=None, min_size=0).propose(IMAGE)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    # Centres of two independent uniform edges average the middle; left edges average a third.
    assert centres.mean(0).tolist() == pytest.approx([50, 50], abs=1.5)
    assert boxes[:, 0].mean().item() == pytest.approx(100 / 3, abs=1.5)


def test_gaussian_fit_recovers_the_ground_truth_distribution():
    rng = np.random.default_rng(0)
    centres = rng.normal([0.3, 0.6], 0.05, (400, 2))
    sizes = np.exp(rng.normal(np.log([0.2, 0.1]), 0.1, (400, 2)))
    gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) * [200, 100, 200, 100]
    fitted = GaussianBoxes.fit([gt[:200], gt[200:]], [(100, 200), (100, 200)], max_proposals=None, min_size=0)
    np.testing.assert_allclose(fitted.mean, [0.3, 0.6, np.log(0.2), np.log(0.1)], atol=0.02)
    boxes = fitted.propose(torch.rand(3, 100, 200)).numpy()
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    assert np.median(centre_x) == pytest.approx(60, abs=3)
    with pytest.raises(ValueError, match="at least 2"):
        GaussianBoxes.fit([np.zeros((0, 4))], [(10, 10)])


def test_superpixel_boxes_of_two_flat_halves():
    image = torch.zeros(3, 40, 60)
    image[0, :, :30] = 1.0
    boxes, scores = SuperpixelBoxes(ks=(100,), min_size=0).propose_scored(image)
    assert {tuple(box) for box in boxes.int().tolist()} == {(0, 0, 30, 40), (30, 0, 60, 40)}
    assert scores.tolist() == [0.5, 0.5]


def test_finish_boxes_clips_filters_deduplicates_keeping_order():
    boxes = np.array([[5, 5, 20, 20], [-3, 0, 8, 9], [5, 5, 20, 20], [0, 0, 2, 30], [10, 10, 50, 50]], float)
    kept, scores = finish_boxes(boxes, np.arange(5.0), height=30, width=40, min_size=4, max_proposals=None)
    assert kept.tolist() == [[5, 5, 20, 20], [0, 0, 8, 9], [10, 10, 40, 30]]
    assert scores.tolist() == [0, 1, 4]
    kept, _ = finish_boxes(boxes, None, height=30, width=40, min_size=4, max_proposals=2)
    assert len(kept) == 2


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_follows_the_interface(name):
    boxes = build_method(name, max_proposals=50, seed=1).propose(IMAGE[:, :60, :80])
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and 1 <= len(boxes) <= 50
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    assert len({tuple(box) for box in boxes.tolist()}) == len(boxes)
    assert torch.equal(boxes, propose(IMAGE[:, :60, :80], method=name, max_proposals=50, seed=1))


def test_unknown_method_and_bad_options():
    with pytest.raises(ValueError, match="unknown proposal method"):
        build_method("edge-boxes")
    with pytest.raises(ValueError, match="max_proposals"):
        build_method("uniform", max_proposals=0)
    with pytest.raises(ValueError, match="stride"):
        SlidingWindows(stride=0)
