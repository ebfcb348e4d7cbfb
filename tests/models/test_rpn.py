"""RPN: anchors, anchor labelling and sampling on hand-made cases, proposal selection, losses."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from detlab import boxes as box_ops
from detlab.models.rpn import (
    AnchorGenerator,
    RegionProposalNetwork,
    RPNHead,
    label_anchors,
    sample_labels,
    select_batch_proposals,
    select_proposals,
)


def test_cell_anchors_have_the_requested_area_and_aspect_ratio():
    generator = AnchorGenerator(((32.0, 64.0),), (0.5, 1.0, 2.0))
    cell = generator.cell_anchors(0)
    assert cell.shape == (6, 4)
    widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    expected_sizes = torch.tensor([32.0, 32, 32, 64, 64, 64])
    torch.testing.assert_close(widths * heights, expected_sizes**2)
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1, 2, 0.5, 1, 2]))
    torch.testing.assert_close((cell[:, 0] + cell[:, 2]) / 2, torch.zeros(6))


def test_grid_anchors_are_centred_on_feature_cells_in_y_x_anchor_order():
    generator = AnchorGenerator(((16.0,),), (1.0, 2.0))
    anchors = generator([(2, 3)], [8.0])[0]
    assert anchors.shape == (2 * 3 * 2, 4)
    centres = torch.stack([(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2], 1)
    # location (y=0, x=0) first, both anchors; then (0, 1), ...; last location (1, 2) at (20, 12)
    torch.testing.assert_close(centres[0], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(centres[1], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(centres[2], torch.tensor([12.0, 4.0]))
    torch.testing.assert_close(centres[-1], torch.tensor([20.0, 12.0]))
    torch.testing.assert_close(anchors[0], torch.tensor([-4.0, -4.0, 12.0, 12.0]))


def test_head_output_order_matches_anchor_order():
    """A head whose objectness is the input channel at each anchor's own location must give the
    highest score to the anchors at the hot location."""
    head = RPNHead(in_channels=1, num_anchors=2)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0
        head.objectness.weight.fill_(1.0)
        head.objectness.bias.copy_(torch.tensor([0.0, 0.5]))  # anchor 1 scores above anchor 0
        head.deltas.weight.zero_()
    feature = torch.zeros(1, 1, 3, 4)
    feature[0, 0, 2, 1] = 5.0  # y=2, x=1
    objectness, deltas = head([feature])
    assert objectness[0].shape == (1, 3 * 4 * 2) and deltas[0].shape == (1, 24, 4)
    generator = AnchorGenerator(((8.0,),), (1.0, 2.0))
    anchors = generator([(3, 4)], [10.0])[0]
    best = objectness[0][0].argmax()
    centre = (anchors[best, :2] + anchors[best, 2:]) / 2
    torch.testing.assert_close(centre, torch.tensor([15.0, 25.0]))  # x = 1.5 * 10, y = 2.5 * 10
    assert best % 2 == 1


def test_label_anchors_hand_made_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 with gt 0 -> positive
            [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 -> ignored
            [0.0, 0.0, 10.0, 2.0],  # IoU 0.2 -> negative
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> negative
            [100.0, 100.0, 110.0, 104.0],  # IoU 0.4 with gt 1, its best anchor -> positive
            [100.0, 100.0, 110.0, 103.0],  # IoU 0.3 -> ignored (not < 0.3)
        ]
    )
    labels, matched = label_anchors(anchors, gt, positive_iou=0.7, negative_iou=0.3)
    assert labels.tolist() == [1, -1, 0, 0, 1, -1]
    assert matched[0] == 0 and matched[4] == 1


def test_label_anchors_ties_for_best_anchor_are_all_positive():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 4.0], [0.0, 6.0, 10.0, 10.0], [0.0, 0.0, 10.0, 2.0]])
    labels, _ = label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, 0]


def test_label_anchors_without_ground_truth_are_all_negative():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    labels, _ = label_anchors(anchors, torch.zeros((0, 4)))
    assert labels.tolist() == [0, 0]


def test_sample_labels_balances_and_never_samples_ignored():
    torch.manual_seed(0)
    labels = torch.cat([torch.ones(1000), torch.zeros(5000), -torch.ones(300)]).long()
    positive, negative = sample_labels(labels, 256, 0.5)
    assert positive.numel() == 128 and negative.numel() == 128
    assert (labels[positive] == 1).all() and (labels[negative] == 0).all()
    assert positive.unique().numel() == 128

    few = torch.cat([torch.ones(10), torch.zeros(5000), -torch.ones(5)]).long()
    positive, negative = sample_labels(few, 256, 0.5)
    assert positive.numel() == 10 and negative.numel() == 246


def test_select_proposals_keeps_top_k_then_suppresses_overlaps():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 9.5],  # IoU 0.95 with the first: suppressed at 0.7
            [20.0, 20.0, 30.0, 30.0],
            [40.0, 40.0, 50.0, 50.0],
            [60.0, 60.0, 70.0, 70.0],  # lowest score: cut by pre-NMS top-k
        ]
    )
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    deltas = torch.zeros(5, 4)
    coder = box_ops.BoxCoder()
    boxes, kept_scores = select_proposals([anchors], [scores], [deltas], (100, 100), coder, 4, 10, 0.7)
    torch.testing.assert_close(boxes, anchors[[0, 2, 3]])
    torch.testing.assert_close(kept_scores, scores[[0, 2, 3]])
    boxes, _ = select_proposals([anchors], [scores], [deltas], (100, 100), coder, 5, 2, 0.7)
    torch.testing.assert_close(boxes, anchors[[0, 2]])


def test_select_proposals_clips_and_does_not_suppress_across_levels():
    anchors = torch.tensor([[-10.0, -10.0, 30.0, 30.0]])
    coder = box_ops.BoxCoder()
    boxes, _ = select_proposals(
        [anchors, anchors],
        [torch.tensor([1.0]), torch.tensor([0.5])],
        [torch.zeros(1, 4)] * 2,
        (20, 25),
        coder,
        10,
        10,
    )
    assert boxes.shape == (2, 4)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 25.0, 20.0]))


def test_batch_proposal_selection_is_each_images_own():
    """The loop-free selection ONNX export traces gives every image the proposals the per-image
    selection gives it: the same top-k, clipping to each image's own size, NMS within each image
    and level only, and each image's post-NMS limit."""
    torch.manual_seed(0)
    anchors = [AnchorGenerator(((16.0,), (40.0,)), (0.5, 1.0, 2.0)).grid_anchors(level, size, stride)
               for level, size, stride in ((0, (8, 10), 8.0), (1, (4, 5), 16.0))]  # fmt: skip
    objectness = [torch.randn(3, len(level)) for level in anchors]
    deltas = [torch.randn(3, len(level), 4) * 0.3 for level in anchors]
    sizes = torch.tensor([[64, 80], [50, 70], [64, 33]])
    coder = box_ops.BoxCoder()
    boxes, images = select_batch_proposals(anchors, objectness, deltas, sizes, coder, 60, 25, 0.6)
    for index in range(3):
        expected, _ = select_proposals(
            anchors,
            [scores[index] for scores in objectness],
            [values[index] for values in deltas],
            tuple(sizes[index].tolist()),
            coder,
            60,
            25,
            0.6,
        )
        assert len(expected) == 25  # the limit binds
        torch.testing.assert_close(boxes[images == index], expected)


def _rpn() -> RegionProposalNetwork:
    generator = AnchorGenerator(((16.0, 32.0),), (0.5, 1.0, 2.0))
    return RegionProposalNetwork(
        generator,
        RPNHead(8, generator.num_anchors_per_location),
        pre_nms_top_n=(200, 100),
        post_nms_top_n=(50, 20),
    )


def test_rpn_losses_and_proposal_shapes_including_an_empty_image():
    torch.manual_seed(0)
    rpn = _rpn().train()
    features = OrderedDict([("0", torch.randn(2, 8, 8, 8))])
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    proposals, losses = rpn(features, [(64, 64), (60, 50)], [8.0], targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(proposals) == 2 and all(p.shape[1] == 4 and p.shape[0] <= 50 for p in proposals)
    assert (proposals[1][:, 2] <= 50).all() and (proposals[1][:, 3] <= 60).all()
    rpn.eval()
    proposals, losses = rpn(features, [(64, 64), (60, 50)], [8.0])
    assert losses == {} and all(p.shape[0] <= 20 for p in proposals)


def test_rpn_learns_to_propose_the_object():
    """A few steps on one fixed feature map: losses fall and the best proposal finds the box."""
    torch.manual_seed(0)
    rpn = _rpn().train()
    feature = torch.zeros(1, 8, 8, 8)
    feature[0, :, 2:4, 3:5] = 1.0  # the object's footprint at stride 8
    features = OrderedDict([("0", feature)])
    gt = torch.tensor([[24.0, 16.0, 40.0, 32.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    optimizer = torch.optim.SGD(rpn.parameters(), lr=0.5, momentum=0.9)
    history = []
    for _ in range(60):
        _, losses = rpn(features, [(64, 64)], [8.0], targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) < 0.5 * sum(history[:5])
    rpn.eval()
    proposals, _ = rpn(features, [(64, 64)], [8.0])
    assert box_ops.iou(proposals[0][:1], gt).item() > 0.5


def test_anchor_generator_rejects_uneven_levels():
    with pytest.raises(ValueError, match="same number"):
        AnchorGenerator(((16.0,), (32.0, 64.0)))
    assert math.isclose(AnchorGenerator(((16.0, 32.0),), (1.0,)).num_anchors_per_location, 2)


def test_anchors_are_built_once_per_feature_size_and_equal_fresh_ones(monkeypatch):
    generator = AnchorGenerator(((16.0, 32.0), (64.0, 128.0)), (0.5, 1.0, 2.0))
    built = []
    grid_anchors = generator.grid_anchors
    monkeypatch.setattr(generator, "grid_anchors", lambda *args: built.append(args) or grid_anchors(*args))
    first = generator([(10, 14), (5, 7)], [8.0, 16.0])
    again = generator([(10, 14), (5, 7)], [8.0, 16.0])
    assert len(built) == 2 and all(a is b for a, b in zip(first, again))
    torch.testing.assert_close(first[1], grid_anchors(1, (5, 7), 16.0), rtol=0, atol=0)
    other = generator([(12, 14), (6, 7)], [8.0, 16.0])  # another padded batch size: its own anchors
    assert len(built) == 4 and other[0].shape == (12 * 14 * 6, 4)
    with torch.inference_mode():  # inference tensors are not kept for a later training step
        generator([(3, 3), (2, 2)], [8.0, 16.0])
    assert len(built) == 6 and len(generator._cache) == 4
