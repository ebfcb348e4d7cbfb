import dataclasses

import pytest
import torch

from detlab.config import TrainConfig
from detlab.models.localizer import (
    build_localizer,
    guesses_from_outputs,
    localization_metrics,
    localizer_loss,
)
from detlab.models.localizer_training import (
    LocalizerConfig,
    LocalizerModelConfig,
    WindowData,
    evaluate_localizer,
    fit_localizer,
    largest_object,
    sample_batch,
)

WINDOW = 96  # the smallest window the valid-convolution small net accepts with a 2x2 grid


def tiny_windows(num_images: int = 8, num_classes: int = 2, seed: int = 0) -> WindowData:
    """Dark images with one bright rectangle; class 1 rectangles are red, class 2 green."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(num_images, 3, WINDOW, WINDOW, dtype=torch.uint8)
    labels = torch.randint(1, num_classes + 1, (num_images,), generator=generator)
    boxes = []
    for index in range(num_images):
        x1, y1 = torch.randint(0, WINDOW // 2, (2,), generator=generator).tolist()
        width, height = torch.randint(20, WINDOW // 2, (2,), generator=generator).tolist()
        images[index, int(labels[index]) - 1, y1 : y1 + height, x1 : x1 + width] = 255
        boxes.append(torch.tensor([x1, y1, x1 + width, y1 + height], dtype=torch.float32) / WINDOW)
    return WindowData(images, labels, torch.stack(boxes), [f"class{c}" for c in range(1, num_classes + 1)])


def tiny_config(**model) -> LocalizerConfig:
    config = LocalizerConfig()
    config.model = dataclasses.replace(
        LocalizerModelConfig(window_size=WINDOW, hidden_dim=32, dropout=0.0), **model
    )
    config.train = TrainConfig(
        max_steps=25,
        batch_size=8,
        optimizer="adamw",
        lr=3e-3,
        warmup_steps=0,
        schedule="constant",
        log_every=0,
    )
    config.data.horizontal_flip = config.data.vertical_flip = config.data.rotate90 = False
    return config


@pytest.mark.parametrize("regression", ["agnostic", "specific"])
@pytest.mark.parametrize("attach", ["conv", "fc"])
def test_output_shapes(regression, attach):
    model = build_localizer(3, window_size=WINDOW, regression=regression, attach=attach, hidden_dim=32).eval()
    outputs = model(torch.rand(2, 3, WINDOW, WINDOW))
    assert outputs["class_logits"].shape == (2, 3)
    assert outputs["boxes"].shape == (2, 3 if regression == "specific" else 1, 4)
    guesses = model.guesses(torch.rand(2, 3, WINDOW, WINDOW), top_k=5)
    assert guesses["labels"].shape == (2, 3) and guesses["boxes"].shape == (2, 3, 4)
    assert set(guesses["labels"][0].tolist()) == {1, 2, 3}
    assert torch.all(guesses["scores"][:, :-1] >= guesses["scores"][:, 1:])


def test_detect_returns_boxes_in_image_coordinates():
    model = build_localizer(2, window_size=WINDOW, hidden_dim=16).eval()
    detections = model.detect([torch.rand(3, 50, 200), torch.rand(3, 120, 90)], top_k=2)
    assert len(detections) == 2
    for detection, (height, width) in zip(detections, [(50, 200), (120, 90)]):
        assert detection["boxes"].shape == (2, 4)
        assert torch.all(detection["boxes"][:, [0, 2]] <= width) and torch.all(
            detection["boxes"][:, [1, 3]] <= height
        )
        assert detection["labels"].dtype == torch.int64


def test_specific_loss_uses_the_box_of_the_true_class():
    outputs = {
        "class_logits": torch.zeros(1, 2),
        "boxes": torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.5, 0.5]]]),
    }
    target = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
    assert localizer_loss(outputs, torch.tensor([2]), target)["loss_box"] == 0
    # Class 1's box is off by (0.1, 0.1, 0.5, 0.5): squared error 0.01 + 0.01 + 0.25 + 0.25.
    assert localizer_loss(outputs, torch.tensor([1]), target)["loss_box"].item() == pytest.approx(0.52)
    # Uniform logits over 2 classes: cross-entropy log 2.
    assert localizer_loss(outputs, torch.tensor([1]), target)["loss_classifier"].item() == pytest.approx(
        0.6931, abs=1e-4
    )


def test_localization_metrics_hand_computed():
    # Image 1: right class, box exact. Image 2: wrong top-1 class, second guess right with IoU 0.5.
    # Image 3: right class, IoU 1/4 (too low).
    guesses = {
        "labels": torch.tensor([[1, 2], [2, 1], [2, 1]]),
        "boxes": torch.tensor(
            [
                [[0, 0, 1, 1], [0, 0, 1, 1]],
                [[0, 0, 1, 1], [0, 0, 0.5, 1]],
                [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]],
            ]
        ).float(),
    }
    labels = torch.tensor([1, 1, 2])
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]).float()
    metrics = localization_metrics(guesses, labels, truth)
    assert metrics["classification_accuracy"] == pytest.approx(2 / 3)
    assert metrics["top1_localization"] == pytest.approx(1 / 3)
    assert metrics["top5_localization"] == pytest.approx(2 / 3)
    assert metrics["mean_iou"] == pytest.approx((1 + 1 + 0.25) / 3)


def test_guesses_agnostic_repeat_the_one_box():
    outputs = {
        "class_logits": torch.tensor([[0.0, 2.0, 1.0]]),
        "boxes": torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]),
    }
    guesses = guesses_from_outputs(outputs, top_k=5)
    assert guesses["labels"].tolist() == [[2, 3, 1]]
    assert torch.equal(guesses["boxes"][0], torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3))


@pytest.mark.parametrize("regression,attach", [("agnostic", "fc"), ("specific", "conv")])
def test_joint_training_lowers_the_loss(regression, attach):
    torch.manual_seed(0)
    data = tiny_windows()
    config = tiny_config(recipe="joint", regression=regression, attach=attach)
    model = build_localizer(
        2, window_size=WINDOW, regression=regression, attach=attach, hidden_dim=32, dropout=0.0
    )
    history = fit_localizer(model, data, config, log=lambda message: None)
    assert history["joint"]["steps"] == 25
    assert history["joint"]["last_loss"] < 0.7 * history["joint"]["first_loss"]
    metrics = evaluate_localizer(model, data)
    assert 0 <= metrics["mean_iou"] <= 1 and metrics["num_images"] == 8


def test_four_step_recipe_freezes_features_and_trains_a_new_head():
    torch.manual_seed(0)
    data = tiny_windows()
    config = tiny_config(recipe="4step", attach="fc", classifier_fraction=0.5, head_lr=0.01)
    model = build_localizer(2, window_size=WINDOW, hidden_dim=32, dropout=0.0)
    snapshots = {}

    def remember(message):
        pass

    original_new_head = model.new_box_head

    def new_head_and_snapshot():
        # Step 2 happens after step 1: snapshot the trained features then.
        snapshots["features"] = {k: v.clone() for k, v in model.features.state_dict().items()}
        snapshots["class_head"] = model.class_head.weight.detach().clone()
        head = original_new_head()
        snapshots["box_head"] = head.weight.detach().clone()
        return head

    model.new_box_head = new_head_and_snapshot
    history = fit_localizer(model, data, config, log=remember)
    assert set(history) == {"step1_classifier", "step3_regressor"}
    # Step 3 changed nothing but the regression head (BatchNorm running statistics included).
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, snapshots["features"][key]), key
    assert torch.equal(model.class_head.weight, snapshots["class_head"])
    assert not torch.equal(model.box_head.weight, snapshots["box_head"])
    assert history["step3_regressor"]["last_loss"] < history["step3_regressor"]["first_loss"]
    assert history["step1_classifier"]["last_loss"] < history["step1_classifier"]["first_loss"]
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_flip_mirrors_the_box():
    data = tiny_windows(num_images=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):  # until the coin says flip
        images, _, boxes = sample_batch(data, torch.tensor([0]), True, generator)
        if not torch.equal(boxes, data.boxes):
            break
    expected = torch.tensor([1 - data.boxes[0, 2], data.boxes[0, 1], 1 - data.boxes[0, 0], data.boxes[0, 3]])
    assert torch.allclose(boxes[0], expected)
    assert torch.equal(images[0], data.images[0].float().flip(-1) / 255)


def test_vertical_flip_and_transpose_move_the_box_with_the_object():
    # A bright block in a dark window: after any mix of flips and transposes, the box still
    # covers exactly the bright pixels.
    images = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    images[0, :, 4:12, 20:36] = 255
    data = WindowData(images, torch.tensor([1]), torch.tensor([[20, 4, 36, 12]]) / 40, ["thing"])
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        image, _, boxes = sample_batch(data, torch.tensor([0]), True, generator, vertical_flip=True, rotate90=True)
        ys, xs = torch.nonzero(image[0, 0] > 0.5, as_tuple=True)
        bright = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 40
        assert torch.allclose(boxes[0], bright), (boxes[0], bright)
        seen.add(tuple(bright.tolist()))
    assert len(seen) == 8  # all eight flips and turns of an off-centre, oblong block


def test_max_pooled_small_net_trains_and_sees_any_position():
    # pool="max": the class evidence is the maximum over the grid, so moving the object does not
    # need new FC weights; the shape of the outputs stays the documented one.
    model = build_localizer(3, window_size=64, pool="max", num_blocks=4, attach="conv", hidden_dim=16)
    assert model.grid == (4, 4) and model.features.stride == 8
    assert isinstance(model.hidden[0], torch.nn.MaxPool2d)
    outputs = model.eval()(torch.rand(2, 3, 64, 64))
    assert outputs["class_logits"].shape == (2, 3) and outputs["boxes"].shape == (2, 1, 4)


def test_largest_object():
    assert largest_object(torch.tensor([[0, 0, 10, 10], [0, 0, 30, 5], [5, 5, 40, 40]]).float()) == 2


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="regression"):
        build_localizer(2, window_size=WINDOW, regression="both")
    with pytest.raises(ValueError, match="too small"):
        build_localizer(2, window_size=48)
