"""Fast R-CNN: RoI sampling, the head's loss and post-processing, image batching, tiny training."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from detlab import boxes as box_ops
from detlab.models.fast_rcnn import FastRCNN, FastRCNNConfig, build_fast_rcnn
from detlab.models.roi_heads import (
    RoIHead,
    SingleLevelRoIPool,
    build_roi_pooler,
    pool_with_image_index,
    sample_rois,
)
from detlab.models.transform import ImageBatcher


def _jittered_proposals(gt: torch.Tensor, count: int, spread: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centre = gt[0].repeat(count, 1)
    return (centre + torch.randn(count, 4, generator=generator) * spread).clamp(min=0)


def test_sample_rois_respects_fractions_and_iou_bands():
    torch.manual_seed(0)
    gt = torch.tensor([[50.0, 50.0, 100.0, 100.0]])
    proposals = torch.cat([_jittered_proposals(gt, 300, 8.0), _jittered_proposals(gt, 300, 30.0)])
    rois, labels, matched = sample_rois(
        proposals, gt, torch.tensor([2]), rois_per_image=64, foreground_fraction=0.25
    )
    assert rois.shape == (64, 4) and labels.shape == (64,)
    overlaps = box_ops.iou(rois, gt)[:, 0]
    foreground = labels > 0
    assert foreground.sum() == 16  # 25% of 64, plenty of candidates
    assert (labels[foreground] == 2).all() and (overlaps[foreground] >= 0.5).all()
    assert ((overlaps[~foreground] >= 0.1) & (overlaps[~foreground] < 0.5)).all()
    torch.testing.assert_close(matched[foreground], gt.repeat(16, 1))


def test_sample_rois_includes_ground_truth_and_fills_background_on_empty_images():
    gt = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    far = torch.tensor([[60.0, 60.0, 90.0, 90.0], [0.0, 60.0, 30.0, 90.0]])
    rois, labels, _ = sample_rois(far, gt, torch.tensor([1]), rois_per_image=8)
    assert labels.tolist().count(1) == 1  # the ground-truth box itself
    assert rois.shape[0] == 3  # and the two far proposals, topped up below the 0.1 band
    empty_rois, empty_labels, _ = sample_rois(
        _jittered_proposals(gt, 100, 20.0),
        torch.zeros((0, 4)),
        torch.zeros(0, dtype=torch.int64),
        rois_per_image=64,
    )
    assert empty_rois.shape == (64, 4) and (empty_labels == 0).all()


def _head(num_classes: int = 2) -> RoIHead:
    return RoIHead(SingleLevelRoIPool(2, stride=4.0), 4 * 2 * 2, num_classes, representation_size=16)


def test_head_postprocess_decodes_the_true_class_box_and_applies_nms():
    head = _head()
    rois = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5], [20.0, 20.0, 30.0, 30.0]])]
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 6.0]])
    deltas = torch.zeros(3, 8)
    deltas[2, 4:] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 2 shifts x by 0.1 * width = 1 pixel
    detections = head.postprocess(logits, deltas, rois, [(40, 40)])[0]
    assert detections["labels"].tolist()[:2] == [2, 1]
    torch.testing.assert_close(detections["boxes"][0], torch.tensor([21.0, 20.0, 31.0, 30.0]))
    torch.testing.assert_close(detections["boxes"][1], rois[0][0])
    # roi 1 duplicates roi 0 for class 1 and is suppressed; low-score class entries are dropped
    class_one = detections["boxes"][detections["labels"] == 1]
    assert box_ops.iou(class_one, class_one).triu(1).max() < 0.5


def test_head_loss_is_zero_box_loss_for_exact_rois_and_cross_entropy_otherwise():
    head = _head()
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 9.0]])
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    losses = head.losses(
        logits, torch.zeros(2, 8), rois, labels, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0] * 4])
    )
    torch.testing.assert_close(losses["loss_classifier"], torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(losses["loss_box"], torch.tensor(0.0))


def test_image_batcher_resizes_pads_and_restores():
    batcher = ImageBatcher(min_size=50, max_size=80, size_divisible=16)
    images = [torch.rand(3, 100, 200), torch.rand(3, 60, 60)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 110.0, 90.0]])}, {"boxes": torch.zeros((0, 4))}]
    batch, sizes, scales, scaled = batcher(images, targets)
    assert sizes == [(40, 80), (50, 50)]  # max_size caps the first image
    assert batch.shape == (2, 3, 64, 80)
    torch.testing.assert_close(scaled[0]["boxes"], torch.tensor([[4.0, 8.0, 44.0, 36.0]]))
    restored = batcher.restore([{"boxes": scaled[0]["boxes"]}], scales[:1], [(100, 200)])
    torch.testing.assert_close(restored[0]["boxes"], targets[0]["boxes"])
    with pytest.raises(ValueError, match="Tensor\\[3, H, W\\]"):
        batcher([torch.rand(1, 10, 10)])


def _square_images(num_images: int, seed: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Dark 64x80 images with a bright square (class 1) or a dim bar (class 2), or nothing."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for index in range(num_images):
        image = torch.full((3, 64, 80), 0.1)
        boxes, labels = [], []
        kind = index % 3
        if kind < 2:
            x, y = (torch.randint(0, 40, (2,), generator=generator)).tolist()
            width, height = (24, 24) if kind == 0 else (30, 12)
            image[:, y : y + height, x : x + width] = 0.9 if kind == 0 else 0.5
            boxes.append([x, y, x + width, y + height])
            labels.append(kind + 1)
        images.append(image)
        targets.append(
            {"boxes": torch.tensor(boxes).reshape(-1, 4).float(), "labels": torch.tensor(labels).long()}
        )
    return images, targets


def _tiny_fast_rcnn() -> FastRCNN:
    config = FastRCNNConfig(
        backbone_width=8,
        min_size=64,
        max_size=80,
        representation_size=64,
        rois_per_image=16,
        proposal_cache_dir="",
    )
    return build_fast_rcnn(config, num_classes=2)


def test_fast_rcnn_trains_on_given_proposals_and_predicts_in_input_coordinates():
    torch.manual_seed(0)
    model = _tiny_fast_rcnn().train()
    images, targets = _square_images(6, seed=1)
    for target in targets:  # proposals around the object (or anywhere, for empty images)
        reference = target["boxes"] if target["boxes"].numel() else torch.tensor([[20.0, 20.0, 50.0, 50.0]])
        target["proposals"] = torch.cat(
            [_jittered_proposals(reference, 40, 6.0), torch.tensor([[0.0, 0, 80, 64]])]
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    for step in range(60):
        batch = [(step * 2 + k) % 6 for k in range(2)]
        losses = model([images[i] for i in batch], [targets[i] for i in batch])
        assert set(losses) == {"loss_classifier", "loss_box"}
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-6:]) < 0.7 * sum(history[:6])
    model.eval()
    big = torch.nn.functional.interpolate(images[0][None], scale_factor=2.0)[0]  # 128x160 input
    proposals = [targets[0]["proposals"] * 2]
    output = model([big], proposals=proposals)[0]
    assert set(output) == {"boxes", "scores", "labels"}
    assert output["boxes"].shape[1] == 4 and output["boxes"].shape[0] == output["scores"].shape[0]
    assert (output["boxes"][:, 2] <= 160).all() and (output["boxes"][:, 3] <= 128).all()
    assert output["labels"].dtype == torch.int64


def test_fast_rcnn_uses_its_proposal_method_at_test_time_and_explains_missing_proposals():
    model = _tiny_fast_rcnn().eval()
    calls = []

    def propose(image):
        calls.append(tuple(image.shape))
        return torch.tensor([[5.0, 5.0, 30.0, 30.0], [10.0, 10.0, 60.0, 50.0]])

    model.proposer = propose
    output = model([torch.rand(3, 64, 80)])
    assert calls == [(3, 64, 80)] and len(output) == 1
    model.proposer = None
    with pytest.raises(ValueError, match="proposals"):
        model([torch.rand(3, 64, 80)])


@pytest.mark.parametrize("strides", [[16.0], [8.0, 16.0, 32.0]])
def test_pooling_rois_with_their_image_index_is_pooling_a_list_an_image(strides):
    """What ONNX export pools (one tensor of RoIs with image indices, no loop over the images) is
    what the detector pools (a list of RoIs an image), with one level and with an FPN's three."""
    torch.manual_seed(0)
    names = [f"p{index}" for index in range(len(strides))]
    features = OrderedDict(
        (name, torch.randn(2, 4, int(128 // stride), int(96 // stride)))
        for name, stride in zip(names, strides)
    )
    pooler = build_roi_pooler(7, strides, names, "align", canonical_size=64)
    corners = torch.rand(2, 30, 2) * torch.tensor([80.0, 110.0])
    rois = [torch.cat([corners[index], corners[index] + torch.rand(30, 2) * 90 + 2], 1) for index in range(2)]
    expected = pooler(features, rois, [(128, 96), (128, 96)])
    flat = torch.cat(
        [torch.cat([torch.full((30, 1), float(index)), boxes], 1) for index, boxes in enumerate(rois)]
    )
    torch.testing.assert_close(pool_with_image_index(pooler, features, flat, strides), expected)


def test_single_level_pooler_rejects_unknown_method():
    with pytest.raises(ValueError, match="pool"):
        SingleLevelRoIPool(7, 16.0, method="warp")
    pooled = SingleLevelRoIPool(2, 4.0, method="pool")(
        OrderedDict([("0", torch.arange(16.0).view(1, 1, 4, 4))]),
        [torch.tensor([[0.0, 0.0, 12.0, 12.0]])],
        [(16, 16)],
    )
    torch.testing.assert_close(
        pooled.flatten(), torch.tensor([5.0, 7.0, 13.0, 15.0])
    )  # max of each quadrant (roi_pool counts the end cell: 0..3)


def test_training_proposals_are_cached_per_image_content(tmp_path):
    from detlab.proposals import ProposalCache
    from detlab.proposals.baselines import SlidingWindows

    model = _tiny_fast_rcnn().train()
    calls = []
    method = SlidingWindows(max_proposals=50)

    class CountingMethod:
        name = method.name

        def settings(self):
            return method.settings()

        def propose(self, image):
            calls.append(1)
            return method.propose(image)

    model.proposal_cache = ProposalCache(tmp_path / "cache", CountingMethod())
    images, targets = _square_images(2, seed=3)
    for target, image_id in zip(targets, ["a", "b"]):
        target["image_id"] = image_id
    model(images, targets)
    model(images, targets)
    assert len(calls) == 2  # once per image, not per step
    model([images[0].flip(-1)], [targets[0]])
    assert len(calls) == 3  # a flipped copy has other proposals
