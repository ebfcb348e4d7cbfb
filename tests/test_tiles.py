"""Tiles: where they lie, the merge rule over the passes' detections, and cutting boxes to a tile
(numpy only, shared by the PyTorch and ONNX paths)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detlab.tiles import (
    PassDetections,
    Tiling,
    clip_to_window,
    cut_by_tile,
    merge_detections,
    tile_windows,
    tiling_of,
)


@given(st.integers(1, 700), st.integers(1, 700), st.integers(16, 300), st.floats(0.0, 0.75, allow_nan=False))
def test_tiles_cover_the_image_inside_it_and_overlap_as_asked(height, width, size, overlap):
    windows = tile_windows(height, width, size, overlap)
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= width).all() and (windows[:, 3] <= height).all()
    sides = windows[:, 2:] - windows[:, :2]
    assert (sides == [min(size, width), min(size, height)]).all()  # one size: one batch
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    starts = np.unique(windows[:, 0])
    if len(starts) > 1:  # neighbours share at least the overlap asked for (rounded to a pixel)
        assert (np.diff(starts) <= max(1, round(size * (1 - overlap)))).all()


def test_a_hand_made_layout():
    windows = tile_windows(100, 250, 100, 0.2)
    assert windows.tolist() == [[0, 0, 100, 100], [80, 0, 180, 100], [150, 0, 250, 100]]
    assert tile_windows(40, 30, 64, 0.2).tolist() == [[0, 0, 30, 40]]  # smaller than a tile: one


def test_a_box_is_cut_only_by_a_tile_edge_inside_the_image():
    window = np.array([0, 0, 100, 100])  # the image's top-left tile; the image is 200 x 200
    boxes = np.array([[0, 0, 20, 20], [80, 10, 100, 30], [40, 90, 60, 99.5], [30, 30, 60, 60]], np.float32)
    assert cut_by_tile(boxes, window, (200, 200), margin=1).tolist() == [False, True, True, False]
    assert cut_by_tile(boxes, window, (100, 100), margin=1).tolist() == [False] * 4  # every edge a border


def detections(*passes):
    """``(boxes, scores, labels, cut)`` a pass, as lists."""
    return PassDetections.gather([tuple(np.asarray(part) for part in one) for one in passes])


def test_pieces_of_an_object_cut_by_a_seam_become_one_whole_box():
    # an object at x 80..130 on the seam of tiles [0, 100] and [70, 170]: the first tile sees it cut
    # at 100, the second whole; and a second object of the same class inside the second tile only
    left = ([[80, 10, 100, 40]], [0.9], [1], [True])
    right = ([[80, 10, 130, 40], [140, 50, 160, 70]], [0.8, 0.7], [1, 1], [False, False])
    for rule in ("fusion", "nms"):
        boxes, scores, labels, members = merge_detections(
            detections(left, right), Tiling(100, merge=rule), 0.5, 100
        )
        assert len(boxes) == 2 and members.tolist() == [2, 1] and scores.tolist() == pytest.approx([0.9, 0.7])
    fused, _, _, _ = merge_detections(detections(left, right), Tiling(100), 0.5, 100)
    kept, _, _, _ = merge_detections(detections(left, right), Tiling(100, merge="nms"), 0.5, 100)
    assert fused[0].tolist() == [80, 10, 130, 40]  # the whole object
    assert kept[0].tolist() == [80, 10, 100, 40]  # the best-scoring piece


def test_two_pieces_and_the_full_image_grow_one_group():
    # a large object 40..240 cut by both tiles (neither holds it whole); the pieces alone overlap
    # too little, the full image's box takes both
    first = ([[40, 0, 100, 50]], [0.6], [2], [True])
    second = ([[75, 0, 240, 50]], [0.7], [2], [True])
    full = ([[41, 1, 239, 49]], [0.5], [2], [False])
    boxes, _, _, _ = merge_detections(detections(first, second), Tiling(100), 0.5, 100)
    assert len(boxes) == 2  # 25 px shared: under half of the smaller piece
    boxes, scores, labels, members = merge_detections(detections(first, second, full), Tiling(100), 0.5, 100)
    assert boxes.tolist() == [[40, 0, 240, 50]] and members.tolist() == [3] and labels.tolist() == [2]


def test_only_other_passes_and_the_same_class_join():
    def merged(*passes):
        return merge_detections(detections(*passes), Tiling(100), 0.5, 100)[0].tolist()

    best = ([[0, 0, 10, 10]], [0.9], [1], [False])
    same_pass = ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [1, 1], [False, False])  # its NMS kept both
    assert len(merged(same_pass)) == 2
    assert len(merged(best, ([[1, 1, 11, 11]], [0.8], [2], [False]))) == 2  # another class
    # IoU 0.68 with a box of another tile: one object; whole views leave the leader's box as it is
    assert merged(best, ([[1, 1, 11, 11]], [0.8], [1], [False])) == [[0, 0, 10, 10]]
    # a small uncut box inside a larger uncut one of another pass is another object
    assert (
        len(merged(([[0, 0, 100, 100]], [0.9], [1], [False]), ([[20, 20, 30, 30]], [0.8], [1], [False]))) == 2
    )


def test_the_limit_and_empty_passes():
    many = (
        [[index * 20, 0, index * 20 + 10, 10] for index in range(5)],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [1] * 5,
        [False] * 5,
    )
    boxes, scores, _, _ = merge_detections(detections(many), Tiling(100), 0.5, 3)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    boxes, scores, labels, members = merge_detections(detections(), Tiling(100), 0.5, 3)
    assert boxes.shape == (0, 4) and labels.dtype == np.int64


def test_boxes_cut_to_a_tile_keep_enough_of_themselves_or_go():
    window = np.array([100, 100, 200, 200])
    boxes = np.array(
        [
            [120, 120, 140, 140],  # inside
            [90, 120, 110, 140],  # half inside: kept, clipped
            [95, 150, 103, 160],  # 3 of 8 px inside: 37% of its area, 3 px wide: kept
            [60, 150, 101.5, 160],  # 1.5 px inside: a sliver
            [195, 100, 260, 130],  # 5 of 65 px inside: 8%
            [300, 300, 320, 320],  # elsewhere
        ],
        np.float32,
    )
    clipped, index, cut = clip_to_window(boxes, window, min_visible=0.3, min_side=2)
    assert index.tolist() == [0, 1, 2] and cut.tolist() == [False, True, True]
    assert clipped.tolist() == [[20, 20, 40, 40], [0, 20, 10, 40], [0, 50, 3, 60]]


def test_tiling_options_are_checked():
    assert tiling_of(0) is None and tiling_of(512, 0.25, True, "nms") == Tiling(512, 0.25, True, "nms")
    for bad in ({"size": 8}, {"size": 64, "overlap": 0.9}, {"size": 64, "merge": "mean"}):
        with pytest.raises(ValueError):
            Tiling(**bad)
