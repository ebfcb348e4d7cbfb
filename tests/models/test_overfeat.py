import dataclasses

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from detlab.models.localizer import LocalizerConfig, build_localizer_module
from detlab.models.overfeat import (
    OverFeatConfig,
    build_overfeat,
    crop_windows,
    cut_windows,
    label_windows,
    linear_as_conv,
    naive_sliding_window,
    object_cover,
    sample_windows,
    to_fully_convolutional,
)

WINDOW = 96
# The OverFeat detector's net: valid convolutions, so a sliding window equals the net on each crop.
VALID = LocalizerConfig(window_size=WINDOW, hidden_dim=24, padding=0, blocks=5, pool="none")


def settle_batchnorm(model, size: int):
    """BatchNorm running statistics moved away from (0, 1), so eval-mode BatchNorm is a real affine
    map in the comparison."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.raw_outputs(torch.rand(4, 3, size, size) * 2)
    return model.eval()


def trained_looking_localizer(regression: str, attach: str, num_classes: int = 3):
    torch.manual_seed(0)
    config = dataclasses.replace(VALID, regression=regression, attach=attach)
    return settle_batchnorm(build_localizer_module(config, num_classes), WINDOW)


def test_linear_as_conv_is_the_same_function():
    torch.manual_seed(0)
    linear = nn.Linear(5 * 3 * 2, 7)
    conv = linear_as_conv(linear, 5, (3, 2))
    features = torch.rand(4, 5, 3, 2)
    assert torch.allclose(conv(features).flatten(1), linear(features.flatten(1)), atol=1e-6)


@pytest.mark.parametrize("regression,attach", [("agnostic", "fc"), ("specific", "conv"), ("specific", "fc")])
def test_converted_net_equals_original_at_window_size(regression, attach):
    model = trained_looking_localizer(regression, attach)
    converted = to_fully_convolutional(model)
    images = torch.rand(3, 3, WINDOW, WINDOW)
    with torch.no_grad():
        original, dense = model.raw_outputs(images), converted(images)
    assert dense["class_logits"].shape == (3, 3, 1, 1)
    assert dense["boxes"].shape == (3, model.num_box_sets, 4, 1, 1)
    assert (dense["class_logits"][..., 0, 0] - original["class_logits"]).abs().max() < 1e-4
    assert (dense["boxes"][..., 0, 0] - original["boxes"]).abs().max() < 1e-4


@pytest.mark.parametrize("regression,attach", [("agnostic", "fc"), ("specific", "conv")])
def test_every_cell_equals_the_original_net_on_its_window(regression, attach):
    model = trained_looking_localizer(regression, attach)
    converted = to_fully_convolutional(model)
    image = torch.rand(3, WINDOW + 3 * 16, WINDOW + 5 * 16)
    with torch.no_grad():
        dense = converted(image[None])
    naive = naive_sliding_window(model, image)
    assert dense["class_logits"].shape == (1, 3, 4, 6)
    assert naive["class_logits"].shape == (3, 4, 6)
    assert (dense["class_logits"][0] - naive["class_logits"]).abs().max() < 1e-4
    assert (dense["boxes"][0] - naive["boxes"]).abs().max() < 1e-4
    # And one cell checked by hand against the crop it stands for.
    row, column = 2, 3
    origins = converted.window_origins(4, 6)
    x, y = origins[row, column].int().tolist()
    assert (x, y) == (column * 16, row * 16)
    with torch.no_grad():
        single = model.raw_outputs(image[None, :, y : y + WINDOW, x : x + WINDOW])
    assert (single["class_logits"][0] - dense["class_logits"][0, :, row, column]).abs().max() < 1e-4


@pytest.mark.parametrize("attach,strided_blocks", [("conv", 0), ("fc", 0), ("conv", 1), ("conv", 2)])
def test_max_pooled_net_converts_to_a_sliding_max_pool(attach, strided_blocks):
    # The default localizer: 4 blocks (stride 8), class evidence max-pooled over its 4x4 grid; the
    # first blocks may downsample with a stride-2 conv instead of a max-pool (same stride, same grid).
    torch.manual_seed(0)
    config = LocalizerConfig(
        window_size=64,
        attach=attach,
        hidden_dim=24,
        pool="max",
        blocks=4,
        padding=0,
        strided_blocks=strided_blocks,
    )
    model = settle_batchnorm(build_localizer_module(config, 3), 64)
    strided = [m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    pools = [m for m in model.features.modules() if isinstance(m, nn.MaxPool2d)]
    assert (len(strided), len(pools)) == (strided_blocks, 3 - strided_blocks)
    assert model.grid == (4, 4) and model.stride == 8
    converted = to_fully_convolutional(model)
    image = torch.rand(3, 64 + 5 * 8, 64 + 2 * 8)
    with torch.no_grad():
        dense = converted(image[None])
    naive = naive_sliding_window(model, image)
    assert dense["class_logits"].shape == (1, 3, 6, 3)
    assert (dense["class_logits"][0] - naive["class_logits"]).abs().max() < 1e-4
    assert (dense["boxes"][0] - naive["boxes"]).abs().max() < 1e-4


def test_conversion_leaves_the_original_untouched():
    model = trained_looking_localizer("agnostic", "fc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = to_fully_convolutional(model)
    with torch.no_grad():
        for parameter in converted.parameters():
            parameter.add_(1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_crop_windows_positions():
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).view(3, 40, 50)
    windows, origins = crop_windows(image, 20, 10)
    assert windows.shape == (3 * 4, 3, 20, 20)
    assert origins[:4].tolist() == [[0, 0], [10, 0], [20, 0], [30, 0]]
    assert torch.equal(windows[5], image[:, 10:30, 10:30])


def overfeat(**changes):
    torch.manual_seed(0)
    config = OverFeatConfig(window_size=WINDOW, hidden_dim=24, blocks=5, pool="none", attach="fc", **changes)
    model = build_overfeat(config, 2)
    settle_batchnorm(model.localizer, WINDOW)
    return model.eval()


def test_detector_contract():
    # Classes: background + 2 object classes. Force "object class 2" everywhere via the bias.
    model = overfeat(scales=(1.0, 1.25), score_threshold=0.5)
    with torch.no_grad():
        model.localizer.class_head.weight.zero_()
        model.localizer.class_head.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    images = [torch.rand(3, 120, 150), torch.rand(3, 96, 96)]
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2
    for result, image in zip(results, images):
        assert result["boxes"].ndim == 2 and result["boxes"].shape[1] == 4
        assert len(result["boxes"]) >= 1
        assert torch.all(result["labels"] == 2) and result["labels"].dtype == torch.int64
        assert torch.all(result["boxes"][:, 2] <= image.shape[2]) and torch.all(
            result["boxes"][:, 3] <= image.shape[1]
        )
        assert torch.all((result["scores"] > 0) & (result["scores"] <= 1))
    # Background everywhere: nothing is detected (the converted net follows the changed weights).
    with torch.no_grad():
        model.localizer.class_head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
        assert len(model([torch.rand(3, 100, 100)])[0]["boxes"]) == 0


def test_alexnet_localizer_converts_at_its_224_window():
    torch.manual_seed(0)
    config = LocalizerConfig(backbone="alexnet", window_size=224, regression="specific", attach="fc")
    model = build_localizer_module(config, 3).eval()
    converted = to_fully_convolutional(model)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        original, dense = model.raw_outputs(images), converted(images)
    assert dense["class_logits"].shape == (1, 3, 1, 1)
    assert (dense["class_logits"][..., 0, 0] - original["class_logits"]).abs().max() < 1e-4
    assert (dense["boxes"][..., 0, 0] - original["boxes"]).abs().max() < 1e-4


def test_training_windows_hold_their_object_and_test_like_windows_are_labelled_by_content():
    torch.manual_seed(0)
    boxes, labels = torch.tensor([[40.0, 30.0, 90.0, 70.0]]), torch.tensor([2])
    windows, window_labels, targets = sample_windows(
        (120, 160), boxes, labels, count=400, positive_fraction=0.25, side_range=(20.0, 150.0)
    )
    assert set(window_labels[:100].tolist()) == {2}  # the object-centred quarter
    for window, target in zip(windows[:100], targets[:100]):
        side = window[2] - window[0]
        assert torch.isclose(side, window[3] - window[1]) and window.min() >= 0 and window[2] <= 160
        longest = max(target[2] - target[0], target[3] - target[1])
        assert 0.34 <= longest <= 0.91  # the object fills 0.35..0.9 of the window
        torch.testing.assert_close(window[:2] + target[:2] * side, boxes[0, :2])  # the box is the object's
        torch.testing.assert_close(window[:2] + target[2:] * side, boxes[0, 2:])
    rest, rest_labels, rest_targets = windows[100:], window_labels[100:], targets[100:]
    sides = rest[:, 2] - rest[:, 0]
    assert (
        sides.min() >= 20
        and sides.max() <= 120
        and (rest[:, 2] <= 160 + 1e-4).all()
        and (rest[:, 3] <= 120 + 1e-4).all()
    )
    inside = (
        (torch.minimum(rest[:, 2:], boxes[0, 2:]) - torch.maximum(rest[:, :2], boxes[0, :2]))
        .clamp(min=0)
        .prod(dim=1)
    )
    whole = (inside >= 0.9 * 50 * 40) & (50 / sides >= 0.35) & (50 / sides <= 0.9)
    assert torch.equal(rest_labels == 2, whole) and whole.any() and (~whole).any()
    # Background among them includes parts of the object (test windows cutting through it).
    assert ((rest_labels == 0) & (inside > 0.2 * 50 * 40)).any()
    for window, target in zip(rest[whole], rest_targets[whole]):
        torch.testing.assert_close(
            window[:2] + target[:2] * (window[2] - window[0]), boxes[0, :2].clamp(min=window[:2])
        )
    assert torch.equal(
        rest_targets[~whole], torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(int((~whole).sum()), 4)
    )


def test_a_training_step_crops_the_windows_from_the_images():
    model = overfeat(windows_per_image=4).train()
    image = torch.zeros(3, 120, 160)
    image[1, 30:70, 40:90] = 1.0
    target = {"boxes": torch.tensor([[40.0, 30.0, 90.0, 70.0]]), "labels": torch.tensor([1])}
    losses = model([image, image], [target, target])
    assert set(losses) == {"loss_classifier", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.localizer.class_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("samples", [1, 2, 3])
def test_cut_windows_samples_as_torchvision_roi_align(samples):
    # Windows inside the image (as training draws them), touching its borders, shrunk and enlarged.
    torch.manual_seed(0)
    image = torch.rand(3, 90, 130)
    windows = torch.tensor(
        [
            [0.0, 0.0, 90.0, 90.0],
            [40.0, 0.0, 130.0, 90.0],
            [10.3, 20.7, 31.1, 41.5],
            [55.5, 12.25, 119.5, 76.25],
            [100.0, 60.0, 130.0, 90.0],
        ]
    )
    crops = cut_windows(image, windows, 24, samples)
    rois = torch.cat([torch.zeros(len(windows), 1), windows], dim=1)
    expected = roi_align(image[None], rois, 24, 1.0, sampling_ratio=samples, aligned=True)
    assert crops.shape == (5, 3, 24, 24)
    assert (crops - expected).abs().max() < 1e-4
    assert cut_windows(image, torch.zeros(0, 4), 24).shape == (0, 3, 24, 24)


def test_ablations_window_boxes_and_nms_instead_of_merging():
    model = overfeat(scales=(1.0,), score_threshold=0.5)
    with torch.no_grad():
        model.localizer.class_head.weight.zero_()
        model.localizer.class_head.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    image = torch.rand(3, 96, 120)
    votes, vote_scores, _ = model.votes(image)
    model.combine = "nms"
    kept = model([image])[0]
    # NMS keeps some of the votes themselves, scored by their probabilities.
    assert 0 < len(kept["boxes"]) <= len(votes)
    assert all(any(torch.allclose(box, vote) for vote in votes) for box in kept["boxes"])
    assert torch.all(kept["scores"] <= vote_scores.max() + 1e-6)
    model.window_boxes = True
    windows = model.votes(image)[0]
    sides = windows[:, 2:] - windows[:, :2]
    assert torch.allclose(sides, torch.full_like(sides, float(WINDOW)))  # scale 1: the window itself


def test_hard_negatives_replace_half_the_background_with_the_windows_scored_most_like_objects():
    model = overfeat(windows_per_image=4).train()
    image = torch.full((3, 120, 160), 0.3)
    image[:, :, :80] = 0.6  # candidate windows on the left hold 0.6, on the right 0.3
    # Sampled: 1 positive, 4 background windows, each crop filled with one value.
    values = torch.tensor([5.0, 0.0, 0.7, 0.8, 0.9])
    crops = values.view(5, 1, 1, 1).expand(5, 3, WINDOW, WINDOW).clone()
    labels = torch.tensor([2, 0, 0, 0, 0])
    targets = torch.tensor([[0.1, 0.1, 0.9, 0.9]] + [[0.0, 0.0, 1.0, 1.0]] * 4)
    candidates = torch.tensor([[0.0, 0.0, 60.0, 60.0], [100.0, 10.0, 150.0, 60.0]])
    model.object_scores = lambda pool: pool.mean(dim=(1, 2, 3))  # the network "scores" a crop by its value
    new_crops, new_labels, new_targets = model.with_hard_negatives(
        image, (crops, labels, targets), candidates
    )
    assert new_labels.tolist() == [2, 0, 0, 0, 0]  # as many windows, the positive first and untouched
    assert torch.equal(new_crops[0], crops[0]) and torch.equal(new_targets[0], targets[0])
    # Windows 0.8 and 0.9 stay as drawn; the replaced half (0.0, 0.7) competes with the candidates
    # (0.6, 0.3): the two highest win.
    kept = new_crops[1:].mean(dim=(1, 2, 3))
    assert torch.allclose(kept, torch.tensor([0.8, 0.9, 0.7, 0.6]), atol=1e-5)
    assert torch.equal(new_targets[1:], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(4, 4))


def test_a_training_step_with_hard_negative_mining_trains():
    model = overfeat(windows_per_image=8, hard_negative_pool=3).train()
    image = torch.rand(3, 120, 160)
    target = {"boxes": torch.tensor([[40.0, 30.0, 90.0, 70.0]]), "labels": torch.tensor([1])}
    losses = model([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.localizer.class_head.weight.grad.abs().sum() > 0
    assert model.localizer.training  # scoring the candidates left the network in training mode


def test_object_cover_is_the_largest_share_of_an_object_a_window_holds():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    windows = torch.tensor(
        [[0.0, 0.0, 5.0, 10.0], [30.0, 30.0, 60.0, 60.0], [50.0, 0.0, 60.0, 10.0], [0.0, 0.0, 50.0, 50.0]]
    )
    assert torch.allclose(object_cover(windows, boxes), torch.tensor([0.5, 0.25, 0.0, 1.0]))
    assert torch.equal(object_cover(windows, torch.zeros(0, 4)), torch.zeros(4))


def test_windows_are_labelled_by_the_object_they_hold_whole_at_a_fitting_size():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 20.0], [50.0, 50.0, 90.0, 90.0]])
    labels = torch.tensor([1, 2])
    windows = torch.tensor(
        [
            [0.0, 0.0, 40.0, 40.0],  # holds box 0 whole, its 20-px side fills 0.5: label 1
            [15.0, 0.0, 55.0, 40.0],  # half of box 0: background
            [0.0, 0.0, 100.0, 100.0],  # both whole; box 1 fills 0.4, box 0 only 0.2: label 2
            [0.0, 0.0, 22.0, 22.0],  # box 0 fills 0.91 of it and is not whole: background
            [45.0, 45.0, 95.0, 95.0],  # box 1 fills 0.8: label 2
        ]
    )
    window_labels, targets = label_windows(windows, boxes, labels, (0.35, 0.9))
    assert window_labels.tolist() == [1, 0, 2, 0, 2]
    torch.testing.assert_close(targets[0], torch.tensor([0.25, 0.25, 0.75, 0.5]))
    torch.testing.assert_close(targets[2], torch.tensor([0.5, 0.5, 0.9, 0.9]))
    torch.testing.assert_close(targets[4], torch.tensor([0.1, 0.1, 0.9, 0.9]))
    assert torch.equal(targets[[1, 3]], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    empty_labels, _ = label_windows(
        windows, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (0.35, 0.9)
    )
    assert torch.equal(empty_labels, torch.zeros(5, dtype=torch.int64))
