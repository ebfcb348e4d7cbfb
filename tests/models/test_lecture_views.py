"""What the methods show of their own mechanism, through a :class:`~detlab.engine.predict.Predictor`
(what ``detlab.load`` gives): how training assigns objects (YOLO v1's responsible cells, the
anchor-free model's task-aligned points, the RPN's positive anchors), the R-CNN warp beside Fast
R-CNN's RoI pooling, Faster R-CNN's anchors, and OverFeat's window scores by crops and by one
convolutional pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detlab import boxes as box_ops
from detlab.engine.predict import Predictor
from detlab.models.contract import BoxesView, HeatmapView, PointsView, WindowView
from detlab.models.fast_rcnn import FastRCNNConfig, build_fast_rcnn
from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn
from detlab.models.localizer import LocalizerConfig
from detlab.models.overfeat import OverFeatConfig, build_overfeat
from detlab.models.rcnn import RCNNConfig, build_rcnn
from detlab.models.yolo import YOLOConfig, build_yolo
from detlab.models.yolov1 import YOLOv1Config, build_yolov1, responsible_cells

CLASSES = ["square", "bar"]


def predictor(model) -> Predictor:
    return Predictor(model.eval(), CLASSES, device="cpu")


def two_squares() -> tuple[torch.Tensor, dict]:
    """A 96 x 128 dark image with a bright square (class 1) and a grey bar (class 2), apart."""
    image = torch.full((3, 96, 128), 0.1)
    image[:, 10:40, 12:42] = 0.9
    image[:, 60:76, 70:118] = 0.5
    boxes = torch.tensor([[12.0, 10.0, 42.0, 40.0], [70.0, 60.0, 118.0, 76.0]])
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}


def test_yolov1_gives_each_cell_the_largest_object_whose_centre_it_holds():
    # grid 2 over the unit square: centres (0.25, 0.3) and (0.1, 0.1) share cell (0, 0); (0.8, 0.7) is alone
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.05, 0.05, 0.15, 0.15], [0.7, 0.6, 0.9, 0.8]])
    cells, learnt = responsible_cells(boxes, grid=2)
    assert cells.tolist() == [[0, 0], [0, 0], [1, 1]] and learnt.tolist() == [True, False, True]


def test_yolov1_assignment_draws_the_grid_and_says_which_objects_are_lost():
    torch.manual_seed(0)
    model = build_yolov1(YOLOv1Config(backbone_width=8, input_size=64, grid=4, hidden=32), num_classes=2)
    image = torch.full((3, 100, 200), 0.1)
    # cells are 50 x 25 px: objects 1 and 2 centre in cell (column 0, row 0), object 3 in (3, 3)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 20.0], [10.0, 5.0, 20.0, 15.0], [160.0, 80.0, 190.0, 95.0]])
    grid, learnt, lost = predictor(model).assignment(
        image, {"boxes": boxes, "labels": torch.tensor([1, 2, 2])}
    )
    assert isinstance(grid, HeatmapView) and grid.grid and grid.region == (0.0, 0.0, 200.0, 100.0)
    assert grid.values.shape == (4, 4) and grid.values[0, 0] == 1 and grid.values[3, 3] == 1
    assert grid.values.sum() == 2 and grid.labels[0][0] == "square + bar" and grid.labels[3][3] == "bar"
    assert learnt.labels == ["square", "bar"] and lost.labels == ["bar"]
    torch.testing.assert_close(lost.boxes, boxes[1:2])


def test_the_anchor_free_model_assigns_points_inside_each_object_at_most_topk_each():
    torch.manual_seed(0)
    config = YOLOConfig(backbone_width=8, input_size=128, neck_channels=(16, 24, 32), topk=5)
    image, target = two_squares()
    objects, points = predictor(build_yolo(config, num_classes=2)).assignment(image, target)
    assert isinstance(objects, BoxesView) and objects.labels == ["square 1", "bar 2"]
    assert isinstance(points, PointsView) and len(points.points) == len(points.labels) == len(points.scores)
    for index, name in enumerate(objects.labels):
        mine = points.points[[label == name for label in points.labels]]
        x1, y1, x2, y2 = target["boxes"][index].tolist()
        assert 1 <= len(mine) <= 5, name
        assert ((mine[:, 0] > x1) & (mine[:, 0] < x2) & (mine[:, 1] > y1) & (mine[:, 1] < y2)).all(), name
    assert ((points.scores > 0) & (points.scores <= 1)).all()


def faster_rcnn():
    torch.manual_seed(0)
    config = FasterRCNNConfig(
        backbone_width=8, fpn_channels=16, min_size=96, max_size=192, anchor_sizes=(12.0, 24.0, 48.0),
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, representation_size=32,
    )  # fmt: skip
    return build_faster_rcnn(config, num_classes=2)


def test_faster_rcnn_shows_its_anchors_and_the_anchors_that_learn_each_object():
    image, target = two_squares()
    model = predictor(faster_rcnn())
    found, inside = model.look_inside(image)
    anchors = inside.views[-1]
    assert (
        len(anchors.boxes) == 9 and "9 anchors of one location (3 sizes x 3 aspect ratios)" in anchors.title
    )
    centres = (anchors.boxes[:, :2] + anchors.boxes[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[64.0, 48.0]]).expand(9, 2))
    # an input of 96 px short side is the image itself: the areas are the sizes squared
    areas = sorted(round(value) for value in box_ops.area(anchors.boxes).tolist())
    assert areas == [144] * 3 + [576] * 3 + [2304] * 3
    objects, positive = model.assignment(image, target)
    assert objects.labels == ["square 1", "bar 2"] and {"square 1", "bar 2"} <= set(positive.labels)
    for index, name in enumerate(objects.labels):
        mine = positive.boxes[[label == name for label in positive.labels]]
        overlaps = box_ops.iou(target["boxes"][index : index + 1], mine)[0]
        # IoU >= 0.7, or the object's best anchors (all tied at the best IoU, below 0.7)
        assert (overlaps >= 0.7).all() or torch.allclose(overlaps, overlaps.max().expand_as(overlaps)), name
    assert found["boxes"].shape[1] == 4


def test_rcnn_warps_a_proposal_with_its_context_and_fast_rcnn_pools_it_into_bins():
    image, target = two_squares()
    rcnn = build_rcnn(RCNNConfig(backbone_width=8, window_size=32, pool_size=2, representation_size=16,
                                 proposal_method="sliding", max_proposals=50, proposal_cache_dir=""), 2)  # fmt: skip
    proposals = target["boxes"]
    window = rcnn.eval().warped_view(image, proposals, 0)
    assert isinstance(window, WindowView) and window.window.shape == (3, 32, 32)
    # 16 px of context at 227 is about 2 px at 32: the square fills the inner box, the dark context is around it
    inner = window.boxes[0].round().long().tolist()
    assert inner == [2, 2, 30, 30]
    assert window.window[:, 4:28, 4:28].min() > 0.85 and window.window[:, :, 0].max() < 0.2
    _, inside = predictor(rcnn).look_inside(image)
    assert [type(view) for view in inside.views] == [BoxesView, WindowView]

    torch.manual_seed(0)
    fast = build_fast_rcnn(FastRCNNConfig(backbone_width=8, min_size=96, max_size=128, representation_size=32,
                                          proposal_method="sliding", proposal_cache_dir=""), 2)  # fmt: skip
    _, inside = predictor(fast).look_inside(image)
    shown, pooled = inside.views
    assert isinstance(pooled, HeatmapView) and pooled.grid and pooled.values.shape == (7, 7)
    index = int(pooled.title.split(" ")[1]) - 1
    assert pooled.region == tuple(shown.boxes[index].tolist())
    assert 0 <= pooled.values.min() and pooled.values.max() <= 1


def test_overfeat_window_scores_by_crops_equal_those_of_one_convolutional_pass():
    torch.manual_seed(0)
    config = OverFeatConfig(**{
        **dataclasses.asdict(LocalizerConfig(window_size=32, hidden_dim=16, padding=0, blocks=3, pool="none")),
        "scales": (1.0,),
    })  # fmt: skip
    model = predictor(build_overfeat(config, num_classes=2))
    image, stride = torch.rand(3, 72, 88), model.model.localizer.stride
    for scale in (1.0, 0.6):
        dense = model.window_scores(image, scale)
        crops = model.window_scores(image, scale, convolutional=False)
        # one window every stride pixels of the scaled image
        rows, columns = ((max(32, round(side * scale)) - 32) // stride + 1 for side in (72, 88))
        assert dense.shape == (2, rows, columns) and rows > 1
        assert (dense - crops).abs().max() < 1e-4
        assert (dense.sum(0) <= 1 + 1e-5).all() and dense.min() >= 0
    with pytest.raises(ValueError, match="not a sliding-window classifier"):
        predictor(faster_rcnn()).window_scores(image)


def test_looking_inside_gives_what_predict_gives_and_assignment_is_empty_where_there_is_none():
    image, target = two_squares()
    model = predictor(faster_rcnn())
    found, _ = model.look_inside(image)
    expected = model.predict(image)
    torch.testing.assert_close(found["boxes"], expected["boxes"])
    assert found["names"] == expected["names"]
    rcnn = build_rcnn(RCNNConfig(backbone_width=8, window_size=32, pool_size=2, representation_size=16,
                                 proposal_method="sliding", max_proposals=20, proposal_cache_dir=""), 2)  # fmt: skip
    assert predictor(rcnn).assignment(image, target) == []
