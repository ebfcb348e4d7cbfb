"""Faster R-CNN end to end on tiny tensors: the four losses, empty images, training stages,
outputs in the input frame, a short run where the losses fall and the object is found."""

from __future__ import annotations

import pytest
import torch

from detlab import boxes as box_ops
from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn

FOUR_LOSSES = {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box"}


def _config(**changes) -> FasterRCNNConfig:
    values = dict(
        backbone_width=8,
        fpn_channels=16,
        min_size=64,
        max_size=96,
        anchor_sizes=(12.0, 24.0, 48.0),
        aspect_ratios=(0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30,
        representation_size=64,
        rois_per_image=32,
    )
    values.update(changes)
    return FasterRCNNConfig(**values)


def _scene(seed: int) -> tuple[torch.Tensor, dict]:
    """A 64x96 dark image with one bright 24x24 square at a random place (class 1)."""
    generator = torch.Generator().manual_seed(seed)
    x, y = (
        torch.randint(4, 64, (1,), generator=generator).item(),
        torch.randint(4, 36, (1,), generator=generator).item(),
    )
    image = torch.full((3, 64, 96), 0.1)
    image[:, y : y + 24, x : x + 24] = 0.9
    return image, {"boxes": torch.tensor([[x, y, x + 24.0, y + 24.0]]), "labels": torch.tensor([1])}


def _empty() -> tuple[torch.Tensor, dict]:
    return torch.full((3, 64, 96), 0.1), {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }


@pytest.mark.parametrize("fpn", [True, False])
def test_training_returns_four_finite_losses_with_an_empty_image_in_the_batch(fpn):
    torch.manual_seed(0)
    model = build_faster_rcnn(
        _config(fpn=fpn, anchor_sizes=(12.0, 24.0, 48.0) if fpn else (16.0, 32.0)), 3
    ).train()
    (image, target), (empty_image, empty_target) = _scene(0), _empty()
    losses = model([image, empty_image], [target, empty_target])
    assert set(losses) == FOUR_LOSSES
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    losses = model([empty_image], [empty_target])  # a batch of only background is valid too
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert losses["loss_classifier"].item() > 0.0


def test_training_stages_return_their_own_losses():
    model = build_faster_rcnn(_config(), 1).train()
    image, target = _scene(1)
    model.training_stage = "rpn"
    assert set(model([image], [target])) == {"loss_rpn_objectness", "loss_rpn_box"}
    model.training_stage = "detector"
    assert set(model([image], [target])) == {"loss_classifier", "loss_box"}
    from detlab.models.faster_rcnn import set_training_stage

    with pytest.raises(ValueError, match="training stage"):
        set_training_stage(model, "both", False)


def test_eval_outputs_are_in_the_frame_of_the_images_as_given():
    model = build_faster_rcnn(_config(score_threshold=0.0), 2).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 128, 192), torch.rand(3, 50, 70)])
    assert len(outputs) == 2
    for output, (height, width) in zip(outputs, [(128, 192), (50, 70)]):
        assert set(output) == {"boxes", "scores", "labels"}
        assert output["boxes"].shape == (output["scores"].shape[0], 4)
        assert output["boxes"].shape[0] > 0
        assert (output["boxes"][:, 2] <= width).all() and (output["boxes"][:, 3] <= height).all()
        assert ((output["labels"] >= 1) & (output["labels"] <= 2)).all()
    # boxes reach beyond the resized frame (64 x 96) of the large image: they were mapped back
    assert outputs[0]["boxes"][:, 2].max() > 96


def test_training_requires_targets():
    model = build_faster_rcnn(_config(), 1).train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 96)])


@pytest.mark.parametrize(
    "changes", [{}, {"channels_last": True, "roi_sampling_ratio": 1}], ids=["default", "fast_cpu"]
)
def test_a_short_joint_training_run_lowers_the_losses_and_finds_the_square(changes):
    torch.manual_seed(0)
    model = build_faster_rcnn(_config(**changes), 1).train()
    scenes = [_scene(seed) for seed in range(8)] + [_empty()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    first, last = {}, {}
    for step in range(80):
        batch = [scenes[(2 * step + k) % len(scenes)] for k in range(2)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        record = first if step < 8 else last if step >= 72 else None
        if record is not None:
            for key, value in losses.items():
                record[key] = record.get(key, 0.0) + value.item()
    assert sum(last.values()) < 0.5 * sum(first.values())
    assert last["loss_rpn_objectness"] < first["loss_rpn_objectness"]
    assert last["loss_classifier"] < first["loss_classifier"]
    model.eval()
    image, target = _scene(100)
    with torch.no_grad():
        output = model([image])[0]
    assert output["boxes"].shape[0] >= 1
    assert box_ops.iou(output["boxes"][:1], target["boxes"]).item() > 0.5


def test_builder_rejects_anchor_sizes_that_do_not_split_over_levels():
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_faster_rcnn(_config(anchor_sizes=(16.0, 32.0)), 1)
    with pytest.raises(ValueError, match="backbone"):
        build_faster_rcnn(_config(backbone="alexnet_v9"), 1)


def test_alternating_training_changes_only_the_parts_of_each_step():
    torch.manual_seed(0)
    model = build_faster_rcnn(_config(), 1).train()
    scenes = [_scene(seed) for seed in range(2)]
    changed = []

    def snapshot():
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    def train_step(m, index):
        before = snapshot()
        optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):
            losses = m([s[0] for s in scenes], [s[1] for s in scenes])
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        after = snapshot()
        parts = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
        changed.append(parts)

    stages = model.recipe("4step")
    assert [stage.budget for stage in stages] == [0.25] * 4 and [s.evaluate for s in stages] == [
        False,
        True,
    ] * 2
    for index, stage in enumerate(stages):
        stage.prepare(model)
        train_step(model, index)
    assert changed == [{"backbone", "rpn"}, {"backbone", "roi_head"}, {"rpn"}, {"roi_head"}]


def test_fpn_min_level_two_adds_a_stride_4_level_and_trains():
    torch.manual_seed(0)
    model = build_faster_rcnn(_config(fpn_min_level=2, anchor_sizes=(8.0, 12.0, 24.0, 48.0)), 3).train()
    assert model.backbone.strides == [4.0, 8.0, 16.0, 32.0]
    (image, target), (empty_image, empty_target) = _scene(1), _empty()
    features = model.backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    losses = model([image, empty_image], [target, empty_target])
    assert set(losses) == FOUR_LOSSES and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="fpn_min_level"):
        build_faster_rcnn(_config(fpn_min_level=4), 3)


def test_roi_canonical_size_moves_rois_between_pyramid_levels():
    """Equation 1 of the FPN paper with the canonical side as a setting: the same 40-pixel RoI is
    pooled from P3 under the paper's 224 and from P4 when the canonical side is 40."""
    from torchvision.ops import roi_align

    from detlab.models.roi_heads import build_roi_pooler

    names, strides = ["0", "1", "2"], [8.0, 16.0, 32.0]
    features = {name: torch.rand(1, 4, int(128 / s), int(128 / s)) for name, s in zip(names, strides)}
    roi = [torch.tensor([[20.0, 20.0, 60.0, 60.0]])]
    pooled = {}
    for canonical in (224, 40):
        pooler = build_roi_pooler(2, strides, names, canonical_size=canonical)
        pooled[canonical] = pooler(features, roi, [(128, 128)])
    level_of = {}
    for canonical, output in pooled.items():
        for name, stride in zip(names, strides):
            direct = roi_align(features[name], roi, 2, 1 / stride, sampling_ratio=2)
            if torch.allclose(output, direct, atol=1e-6):
                level_of[canonical] = stride
    assert level_of == {224: 8.0, 40: 16.0}


def test_channels_last_backbone_computes_the_same_features_and_detections():
    """``channels_last`` changes only the memory layout: same weights give the same pyramid and
    the same detections, and the backbone's activations really are channels-last."""
    torch.manual_seed(0)
    plain = build_faster_rcnn(_config(), 3).eval()
    fast = build_faster_rcnn(_config(channels_last=True), 3).eval()
    fast.load_state_dict(plain.state_dict())
    batch = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        finest = {
            name: next(iter(model.backbone(batch).values()))
            for name, model in (("plain", plain), ("fast", fast))
        }
    assert (
        finest["fast"].is_contiguous(memory_format=torch.channels_last) and not finest["fast"].is_contiguous()
    )
    assert finest["plain"].is_contiguous()
    with torch.no_grad():
        for a, b in zip(plain.backbone(batch).values(), fast.backbone(batch).values()):
            assert torch.allclose(a, b, atol=1e-5)
        image = _scene(3)[0]
        assert torch.allclose(plain([image])[0]["scores"], fast([image])[0]["scores"], atol=1e-4)


@pytest.mark.parametrize("levels", [1, 3])
def test_roi_sampling_ratio_reaches_roi_align(levels):
    from torchvision.ops import roi_align

    from detlab.models.roi_heads import build_roi_pooler

    names, strides = [str(i) for i in range(levels)], [8.0, 16.0, 32.0][:levels]
    features = {name: torch.rand(1, 4, int(128 / s), int(128 / s)) for name, s in zip(names, strides)}
    roi = [torch.tensor([[20.0, 20.0, 60.0, 60.0]])]  # pooled from the first level in both cases
    pooled = {
        ratio: build_roi_pooler(3, strides, names, sampling_ratio=ratio)(features, roi, [(128, 128)])
        for ratio in (1, 2)
    }
    for ratio, output in pooled.items():
        direct = roi_align(features["0"], roi, 3, 1 / 8.0, sampling_ratio=ratio, aligned=levels == 1)
        assert torch.allclose(output, direct, atol=1e-6)
    assert not torch.allclose(pooled[1], pooled[2])
