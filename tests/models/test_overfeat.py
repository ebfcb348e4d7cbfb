import pytest
import torch
from torch import nn

from detlab.models.localizer import build_localizer
from detlab.models.overfeat import (
    OverFeatDetector,
    crop_windows,
    linear_as_conv,
    naive_sliding_window,
    to_fully_convolutional,
)

WINDOW = 96


def trained_looking_localizer(regression: str, attach: str, num_classes: int = 3):
    """Random weights, and BatchNorm running statistics moved away from (0, 1) so that eval-mode
    BatchNorm is a real affine map in the comparison."""
    torch.manual_seed(0)
    model = build_localizer(
        num_classes, window_size=WINDOW, regression=regression, attach=attach, hidden_dim=24
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, WINDOW, WINDOW) * 2)
    return model.eval()


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
        original, dense = model(images), converted(images)
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
        single = model(image[None, :, y : y + WINDOW, x : x + WINDOW])
    assert (single["class_logits"][0] - dense["class_logits"][0, :, row, column]).abs().max() < 1e-4


@pytest.mark.parametrize("attach", ["conv", "fc"])
def test_max_pooled_net_converts_to_a_sliding_max_pool(attach):
    # The default localizer: 4 blocks (stride 8), class evidence max-pooled over its 4x4 grid.
    torch.manual_seed(0)
    model = build_localizer(3, window_size=64, attach=attach, hidden_dim=24, pool="max", num_blocks=4)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64) * 2)
    model.eval()
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


def test_detector_contract():
    # Classes: background + 2 object classes. Force "object class 2" everywhere via the bias.
    model = trained_looking_localizer("specific", "fc", num_classes=3)
    with torch.no_grad():
        model.class_head.weight.zero_()
        model.class_head.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    detector = OverFeatDetector(model, scales=(1.0, 1.25), score_threshold=0.5).eval()
    images = [torch.rand(3, 120, 150), torch.rand(3, 96, 96)]
    results = detector(images)
    assert len(results) == 2
    for result, image in zip(results, images):
        assert result["boxes"].ndim == 2 and result["boxes"].shape[1] == 4
        assert len(result["boxes"]) >= 1
        assert torch.all(result["labels"] == 2) and result["labels"].dtype == torch.int64
        assert torch.all(result["boxes"][:, 2] <= image.shape[2]) and torch.all(
            result["boxes"][:, 3] <= image.shape[1]
        )
        assert torch.all((result["scores"] > 0) & (result["scores"] <= 1))
    # Background everywhere: nothing is detected.
    with torch.no_grad():
        model.class_head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    assert len(OverFeatDetector(model)([torch.rand(3, 100, 100)])[0]["boxes"]) == 0


def test_alexnet_localizer_converts_at_its_224_window():
    torch.manual_seed(0)
    model = build_localizer(3, backbone="alexnet", window_size=224, regression="specific", attach="fc").eval()
    converted = to_fully_convolutional(model)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        original, dense = model(images), converted(images)
    assert dense["class_logits"].shape == (1, 3, 1, 1)
    assert (dense["class_logits"][..., 0, 0] - original["class_logits"]).abs().max() < 1e-4
    assert (dense["boxes"][..., 0, 0] - original["boxes"]).abs().max() < 1e-4


def test_detection_windows_positives_hold_their_object_and_negatives_are_empty(tmp_path):
    from detlab.data.images import save_image
    from detlab.data.schema import DetectionDataset, Record
    from detlab.models.overfeat import BACKGROUND, detection_windows

    image = torch.zeros(3, 120, 160)
    image[0, 30:70, 40:90] = 1.0  # one red object
    save_image(image, tmp_path / "a.png")
    record = Record("a", tmp_path / "a.png", 160, 120, boxes=torch.tensor([[40.0, 30.0, 90.0, 70.0]]),
                    labels=torch.tensor([2]))  # fmt: skip
    windows = detection_windows(DetectionDataset([record], ["one", "two"]), 96, windows_per_image=10, seed=0)
    assert windows.classes == [BACKGROUND, "one", "two"]
    positives, negatives = windows.labels == 3, windows.labels == 1
    assert positives.sum() == 5 and negatives.sum() >= 1
    assert set(windows.labels.tolist()) <= {1, 3}
    for index in torch.where(positives)[0]:
        box = windows.boxes[index]
        assert torch.all((box >= 0) & (box <= 1))
        longest = max(box[2] - box[0], box[3] - box[1])
        assert 0.3 <= longest <= 0.95  # the object fills 0.35..0.9 of the window (up to pixel rounding)
        # The window's red pixels are where its box says the object is.
        x1, y1, x2, y2 = (box * 96).round().int().tolist()
        red = windows.images[index, 0].float() / 255
        assert red[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > 0.9
    for index in torch.where(negatives)[0]:
        assert (windows.images[index, 0].float() / 255 > 0.5).float().mean() <= 0.12
