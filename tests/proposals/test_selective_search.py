"""Selective Search: grouping order, hierarchy invariants, strategies, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detlab.proposals import SelectiveSearch, build_method
from detlab.proposals.selective_search import (
    COLOUR_BINS,
    STRATEGIES,
    Strategy,
    convert_colour,
    describe_regions,
    group_regions,
    grouping_levels,
    hierarchy_boxes,
    pixel_codes,
    segment,
)


def scene(height: int = 72, width: int = 96, seed: int = 0) -> np.ndarray:
    """A few flat-coloured rectangles with a little noise: ``float32 [H, W, 3]``."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 0.8, dtype=np.float32)
    image[10:40, 8:40] = (0.9, 0.1, 0.1)
    image[30:65, 50:90] = (0.1, 0.2, 0.8)
    image[45:70, 15:35] = (0.1, 0.7, 0.2)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return image.clip(0, 1)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def stripes_regions() -> tuple[np.ndarray, np.ndarray]:
    """Four vertical stripes: A and B (20 px wide) are identical halves of one red patterned
    area, C and D (10 px wide) are small and differently coloured. Returns (image, labels)."""
    height = 30
    rng = np.random.default_rng(1)
    pattern = rng.uniform(0.4, 0.9, (height, 20)).astype(np.float32)
    image = np.zeros((height, 60, 3), dtype=np.float32)
    for start in (0, 20):  # A and B: the same pixels
        image[:, start : start + 20, 0] = pattern
        image[:, start : start + 20, 1] = 0.1
    image[:, 40:50] = (0.1, 0.1, 0.9)  # C, blue
    image[:, 50:60] = (0.1, 0.9, 0.1)  # D, green
    labels = np.zeros((height, 60), dtype=np.int64)
    labels[:, 20:40], labels[:, 40:50], labels[:, 50:60] = 1, 2, 3
    return image, labels


def test_identical_halves_merge_first_and_size_alone_prefers_small_regions():
    image, labels = stripes_regions()
    regions = describe_regions(labels, pixel_codes(image))
    _, merges = group_regions(regions, "CTSF")
    assert set(merges[0].tolist()) == {0, 1}
    # With size similarity alone the two smallest neighbours go first, so colour/texture decided above.
    _, merges = group_regions(regions, "S")
    assert set(merges[0].tolist()) == {2, 3}


def test_histograms_are_l1_normalised_and_intersect_as_computed_by_hand():
    image = np.zeros((4, 8, 3), dtype=np.float32)
    image[:, :4] = 0.1  # region 0: every channel in bin 2
    image[:, 4:6] = 0.1  # region 1: half in bin 2 ...
    image[:, 6:] = 0.9  # ... half in bin 22
    labels = np.zeros((4, 8), dtype=np.int64)
    labels[:, 4:] = 1
    regions = describe_regions(labels, pixel_codes(image))
    colour = regions.histograms[:, : regions.colour_dims]
    assert regions.colour_dims == 3 * COLOUR_BINS
    np.testing.assert_allclose(colour.sum(1), 1.0)
    np.testing.assert_allclose(colour[0, [2, 27, 52]], 1 / 3)
    # Intersection: 3 channels x min(1/3, 1/6) = 0.5
    assert np.minimum(colour[0], colour[1]).sum() == pytest.approx(0.5)
    np.testing.assert_array_equal(regions.boxes, [[0, 0, 4, 4], [4, 0, 8, 4]])
    np.testing.assert_array_equal(regions.sizes, [16, 16])
    np.testing.assert_array_equal(regions.pairs, [[0, 1]])


def brute_force_merges(image: np.ndarray, labels: np.ndarray, similarity: str) -> list[set[int]]:
    """Algorithm 1 done the slow way: after every merge, recompute every neighbouring pair's
    similarity from the pixels of the merged label map (no incremental updates)."""
    labels = labels.copy()
    codes = pixel_codes(image)
    ids = {region: region for region in range(labels.max() + 1)}  # label value -> hierarchy id
    next_id, merges = labels.max() + 1, []
    while len(np.unique(labels)) > 1:
        values = np.unique(labels)
        dense = np.searchsorted(values, labels)
        regions = describe_regions(dense, codes)
        best, best_pair = -np.inf, None
        for first, second in regions.pairs.tolist():
            score = 0.0
            overlap = np.minimum(regions.histograms[first], regions.histograms[second])
            if "C" in similarity:
                score += overlap[: regions.colour_dims].sum()
            if "T" in similarity:
                score += overlap[regions.colour_dims :].sum()
            if "S" in similarity:
                score += 1 - (regions.sizes[first] + regions.sizes[second]) / labels.size
            if "F" in similarity:
                box = np.concatenate(
                    [
                        np.minimum(regions.boxes[first, :2], regions.boxes[second, :2]),
                        np.maximum(regions.boxes[first, 2:], regions.boxes[second, 2:]),
                    ]
                )
                box_area = (box[2] - box[0]) * (box[3] - box[1])
                score += 1 - (box_area - regions.sizes[first] - regions.sizes[second]) / labels.size
            if score > best:
                best, best_pair = score, (values[first], values[second])
        first, second = best_pair
        merges.append({ids[first], ids[second]})
        labels[labels == second] = first
        ids[first] = next_id
        next_id += 1
    return merges


@pytest.mark.parametrize("similarity", ["CTSF", "TSF", "CS"])
def test_incremental_grouping_matches_a_full_rescan(similarity):
    image = scene(40, 48, seed=2)
    labels = segment(convert_colour(image, "rgb"), 30, min_size=15)
    assert 5 < labels.max() + 1 < 80
    _, merges = group_regions(describe_regions(labels, pixel_codes(image)), similarity)
    assert [set(pair) for pair in merges.tolist()] == brute_force_merges(image, labels, similarity)


def test_hierarchy_invariants():
    image = scene()
    labels = segment(convert_colour(image, "hsv"), 50)
    regions = describe_regions(labels, pixel_codes(convert_colour(image, "hsv")))
    boxes, merges = group_regions(regions, "CTSF")
    num_initial = len(regions.sizes)
    assert len(merges) == num_initial - 1 and len(boxes) == 2 * num_initial - 1
    np.testing.assert_array_equal(boxes[-1], [0, 0, image.shape[1], image.shape[0]])
    # Each region is merged exactly once, and a merged box is the union of its children's.
    assert sorted(merges.reshape(-1).tolist()) == list(range(len(boxes) - 1))
    for step, (first, second) in enumerate(merges.tolist()):
        assert max(first, second) < num_initial + step
        union = np.concatenate(
            [np.minimum(boxes[first, :2], boxes[second, :2]), np.maximum(boxes[first, 2:], boxes[second, 2:])]
        )
        np.testing.assert_array_equal(boxes[num_initial + step], union)


def test_grouping_levels_coarsen_the_initial_regions_and_every_region_is_a_hierarchy_box():
    image = scene()
    converted = convert_colour(image, "hsv")
    initial = segment(converted, 100)
    num_initial = int(initial.max()) + 1
    boxes, _ = group_regions(describe_regions(initial, pixel_codes(converted)), "CTSF")
    levels = grouping_levels(as_tensor(image), [num_initial + 5, num_initial, 4, 2, 1, 0])
    assert [int(level.max()) + 1 for level in levels] == [num_initial, num_initial, 4, 2, 1, 1]
    assert (levels[0] == initial).all() and levels[1].shape == image.shape[:2]
    formed = {tuple(box) for box in boxes.astype(int).tolist()}
    for finer, coarser in zip(levels[1:], levels[2:]):
        # each region of the finer level lies inside one region of the coarser
        for region in np.unique(finer):
            assert len(np.unique(coarser[finer == region])) == 1
        for region in np.unique(coarser):
            rows, columns = np.where(coarser == region)
            box = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
            assert box in formed


def test_every_initial_region_box_is_among_single_strategy_outputs():
    image = scene()
    hsv = convert_colour(image, "hsv")
    initial = describe_regions(segment(hsv, STRATEGIES["single"].ks[0]), None).boxes
    assert len(initial) > 3
    proposals = SelectiveSearch("single", max_proposals=None, min_size=0).propose(as_tensor(image))
    found = {tuple(box) for box in proposals.tolist()}
    assert all(tuple(box) in found for box in initial.tolist())
    assert len(proposals) == len(found)  # no duplicates


def test_strategies_diversify_into_the_papers_number_of_hierarchies():
    image = scene(24, 32)
    assert len(hierarchy_boxes(image, "single")) == 1
    assert len(hierarchy_boxes(image, "fast")) == 2 * 2 * 2
    assert len(hierarchy_boxes(image, "quality")) == 5 * 4 * 4
    with pytest.raises(ValueError, match="colour space"):
        Strategy(("xyz",), (50,), ("CTSF",))
    with pytest.raises(ValueError, match="letters"):
        Strategy(("hsv",), (50,), ("CQ",))
    with pytest.raises(ValueError, match="unknown Selective Search strategy"):
        SelectiveSearch("fastest")


@pytest.mark.parametrize("space", ["rgb", "hsv", "lab", "rgI", "I", "H"])
def test_colour_spaces_stay_in_unit_range(space):
    image = np.random.default_rng(0).uniform(0, 1, (8, 9, 3)).astype(np.float32)
    image[0, 0] = 0  # black: rgI must not divide by zero
    converted = convert_colour(image, space)
    assert converted.shape[:2] == (8, 9) and converted.shape[2] in (1, 3)
    assert converted.min() >= 0 and converted.max() <= 1 and np.isfinite(converted).all()


def test_seed_changes_the_order_not_the_set_and_same_seed_repeats():
    image = as_tensor(scene())
    first = SelectiveSearch("fast", max_proposals=None, seed=0).propose(image)
    again = SelectiveSearch("fast", max_proposals=None, seed=0).propose(image)
    other = SelectiveSearch("fast", max_proposals=None, seed=1).propose(image)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert {tuple(box) for box in first.tolist()} == {tuple(box) for box in other.tolist()}
    top = SelectiveSearch("fast", max_proposals=10, seed=0).propose(image)
    assert torch.equal(top, first[:10])


def test_boxes_are_valid_and_respect_min_size():
    image = as_tensor(scene())
    boxes = SelectiveSearch("fast", min_size=12).propose(image)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and len(boxes) > 5
    assert (boxes[:, 2:] - boxes[:, :2] >= 12).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 72).all()


# Bad input: each gives sensible boxes or a clear error.


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 3, 3), (3, 5, 40)])
def test_tiny_images_give_boxes_inside_the_image(shape):
    boxes = build_method("ss-fast").propose(torch.rand(*shape, generator=torch.Generator().manual_seed(0)))
    assert len(boxes) >= 1
    assert (boxes[:, 2] <= shape[2]).all() and (boxes[:, 3] <= shape[1]).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


@pytest.mark.parametrize("shape", [(3, 12, 600), (3, 600, 12), (3, 40, 400)])
def test_extreme_aspect_ratios(shape):
    boxes = build_method("ss-fast").propose(torch.rand(*shape, generator=torch.Generator().manual_seed(0)))
    assert len(boxes) > 1
    assert (boxes[:, 2] <= shape[2]).all() and (boxes[:, 3] <= shape[1]).all()
    assert {tuple(box) for box in boxes.tolist()} >= {(0.0, 0.0, float(shape[2]), float(shape[1]))}


def test_uniform_image_gives_the_whole_image():
    boxes = build_method("ss-quality").propose(torch.full((3, 30, 50), 0.4))
    assert boxes.tolist() == [[0.0, 0.0, 50.0, 30.0]]


def test_large_image_is_shrunk_and_boxes_map_back():
    image = np.tile(scene(72, 96), (4, 4, 1))  # 288 x 384
    small = SelectiveSearch("single", max_side=96).propose(as_tensor(image))
    assert (small[:, 2] <= 384).all() and (small[:, 3] <= 288).all()
    assert [0.0, 0.0, 384.0, 288.0] in small.tolist()  # the whole image, in original pixels
    assert small[:, 2].max() > 300  # boxes span the original frame, not the shrunk one


def test_greyscale_rgba_uint8_and_path_inputs(tmp_path):
    from detlab.data.images import save_image

    method = SelectiveSearch("single")
    grey = torch.from_numpy(scene()).permute(2, 0, 1)[:1].contiguous()
    assert torch.equal(method.propose(grey), method.propose(grey.expand(3, -1, -1)))
    assert torch.equal(method.propose(grey[0]), method.propose(grey.expand(3, -1, -1)))
    rgb = as_tensor(scene())
    opaque = torch.cat([rgb, torch.ones(1, 72, 96)])
    assert torch.equal(method.propose(opaque), method.propose(rgb))
    as_bytes = (rgb * 255).round().byte()
    assert torch.equal(method.propose(as_bytes), method.propose(as_bytes.float() / 255))
    save_image(rgb, tmp_path / "scene.png")
    assert torch.equal(method.propose(tmp_path / "scene.png"), method.propose(as_bytes.float() / 255))


@pytest.mark.parametrize(
    "bad", [torch.rand(2, 5, 5), torch.rand(3, 0, 5), torch.rand(1, 3, 5, 5), "missing.png"]
)
def test_bad_images_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="image|missing"):
        build_method("ss-fast").propose(bad)
