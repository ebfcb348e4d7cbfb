import dataclasses

import pytest
import torch
from blocks import Blocks

from detlab.config import TrainConfig
from detlab.engine import RunHeader, fit
from detlab.engine.recipes import RunData, recipe_of, train_stages
from detlab.engine.run import resolve_run_config
from detlab.engine.sampling import make_loader
from detlab.engine.train import evaluate
from detlab.eval.localization import LocalizationEvaluator
from detlab.models.localizer import (
    LocalizerConfig,
    build_localizer,
    guesses_from_outputs,
    largest_object,
    localizer_loss,
)

WINDOW = 96  # the smallest window the valid-convolution small net accepts with a 2x2 grid


def small(**changes) -> LocalizerConfig:
    return dataclasses.replace(LocalizerConfig(hidden_dim=32), **changes)


@pytest.mark.parametrize("regression", ["agnostic", "specific"])
@pytest.mark.parametrize("attach", ["conv", "fc"])
def test_output_shapes(regression, attach):
    model = build_localizer(small(regression=regression, attach=attach, window_size=WINDOW), 3).eval()
    outputs = model.raw_outputs(torch.rand(2, 3, WINDOW, WINDOW))
    assert outputs["class_logits"].shape == (2, 3)
    assert outputs["boxes"].shape == (2, 3 if regression == "specific" else 1, 4)
    guesses = guesses_from_outputs(outputs, top_k=5)
    assert guesses["labels"].shape == (2, 3) and guesses["boxes"].shape == (2, 3, 4)
    assert set(guesses["labels"][0].tolist()) == {1, 2, 3}
    assert torch.all(guesses["scores"][:, :-1] >= guesses["scores"][:, 1:])


def test_eval_mode_returns_top_k_guesses_in_each_images_pixels():
    model = build_localizer(small(top_k=2), 3).eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 50, 200), torch.rand(3, 120, 90)])
    assert len(detections) == 2
    for detection, (height, width) in zip(detections, [(50, 200), (120, 90)]):
        assert detection["boxes"].shape == (2, 4) and detection["labels"].dtype == torch.int64
        assert torch.all(detection["boxes"][:, [0, 2]] <= width) and torch.all(
            detection["boxes"][:, [1, 3]] <= height
        )
        assert detection["scores"][0] >= detection["scores"][1]
    # the same image at another size gives the same guesses, scaled: boxes are normalised inside
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        native, doubled = model([image, torch.nn.functional.interpolate(image[None], scale_factor=2)[0]])
    torch.testing.assert_close(doubled["labels"], native["labels"])
    torch.testing.assert_close(doubled["boxes"], native["boxes"] * 2, atol=0.6, rtol=0.05)


def test_channels_last_computes_the_same_outputs():
    torch.manual_seed(0)
    plain = build_localizer(small(channels_last=False), 3).eval()
    fast = build_localizer(small(channels_last=True), 3).eval()
    fast.load_state_dict(plain.state_dict())
    windows = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected, found = plain.raw_outputs(windows), fast.raw_outputs(windows)
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], atol=1e-4, rtol=1e-4)


def test_specific_loss_uses_the_box_of_the_true_class():
    outputs = {
        "class_logits": torch.zeros(1, 2),
        "boxes": torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.5, 0.5]]]),
    }
    target = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
    assert localizer_loss(outputs, torch.tensor([1]), target)["loss_box"] == 0
    # Class 0's box is off by (0.1, 0.1, 0.5, 0.5): squared error 0.01 + 0.01 + 0.25 + 0.25.
    assert localizer_loss(outputs, torch.tensor([0]), target)["loss_box"].item() == pytest.approx(0.52)
    # Uniform logits over 2 classes: cross-entropy log 2.
    assert localizer_loss(outputs, torch.tensor([0]), target)["loss_classifier"].item() == pytest.approx(
        0.6931, abs=1e-4
    )
    # With a background class, background windows teach the class head only.
    with_background = localizer_loss(outputs, torch.tensor([0]), target, background=True)
    assert with_background["loss_box"] == 0


def test_guesses_agnostic_repeat_the_one_box():
    outputs = {
        "class_logits": torch.tensor([[0.0, 2.0, 1.0]]),
        "boxes": torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]),
    }
    guesses = guesses_from_outputs(outputs, top_k=5)
    assert guesses["labels"].tolist() == [[2, 3, 1]]
    assert torch.equal(guesses["boxes"][0], torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3))


def test_training_learns_classes_and_boxes_at_positions_it_never_saw(tmp_path):
    # 64 training images, 32 test images with blocks elsewhere: the max-pooled class evidence and
    # the conv box head must generalise to new positions, not memorise the training ones.
    torch.manual_seed(0)
    model = build_localizer(small(), 2)
    config = TrainConfig(
        max_steps=100, batch_size=16, optimizer="adamw", lr=3e-3, warmup_steps=5, device="cpu"
    )
    fit(
        model,
        Blocks(64, seed=0, empty_every=9),
        config,
        tmp_path / "run",
        header=RunHeader(classes=["red", "green"]),
    )
    test = Blocks(32, seed=1)
    metrics = evaluate(
        model,
        make_loader(test, 16, torch.utils.data.SequentialSampler(test)),
        LocalizationEvaluator(test.classes),
        "cpu",
    )
    assert metrics["classification_top1"] >= 0.9
    assert metrics["mean_iou"] >= 0.5 and metrics["localization_top1"] >= 0.5


def test_background_only_batches_give_a_zero_loss_that_trains():
    model = build_localizer(small(), 2).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)] * 2, [empty, empty])
    assert set(losses) == {"loss_classifier", "loss_box"} and all(value == 0 for value in losses.values())
    sum(losses.values()).backward()  # connected to the graph: the step runs


def test_four_step_recipe_freezes_features_and_trains_a_new_head(tmp_path):
    torch.manual_seed(0)
    run_config = resolve_run_config(
        "localizer",
        train={
            "out_dir": str(tmp_path / "run"),
            "max_steps": 10,
            "batch_size": 8,
            "recipe": "4step",
            "device": "cpu",
            "warmup_steps": 0,
        },
        model={"hidden_dim": 32, "classifier_fraction": 0.5},
    )
    model = build_localizer(run_config.model, 2)
    stages = recipe_of(model, "4step")
    assert [stage.name for stage in stages] == ["step1_classifier", "step2_new_box_head", "step3_regressor"]
    data = Blocks(24, seed=0)
    result = train_stages(model, stages, run_config, RunData(data, None, data.classes))
    run = tmp_path / "run"
    from detlab.engine.checkpoint import load_checkpoint

    after_step1 = load_checkpoint(run / "step1_classifier" / "last.pt")["model"]
    after_step2 = load_checkpoint(run / "step2_new_box_head" / "last.pt")["model"]
    final = load_checkpoint(run / "last.pt")
    assert result.status == "finished" and final["progress"]["step"] == 5
    changed = {name for name in after_step1 if not torch.equal(after_step1[name], final["model"][name])}
    # Step 2 replaced the regression head; step 3 trained only it (BatchNorm statistics included).
    assert any(
        not torch.equal(after_step1[n], after_step2[n]) for n in after_step1 if n.startswith("box_head")
    )
    assert changed and all(name.startswith("box_head") for name in changed)
    assert final["optimizer"]["param_groups"][0]["momentum"] == 0.9  # step 3 uses SGD
    assert all(parameter.requires_grad for parameter in model.box_head.parameters())


def test_largest_object():
    assert largest_object(torch.tensor([[0, 0, 10, 10], [0, 0, 30, 5], [5, 5, 40, 40]]).float()) == 2


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="regression"):
        resolve_run_config("localizer", overrides=["model.regression=both"])
    with pytest.raises(ValueError, match="too small"):
        build_localizer(small(window_size=48, padding=0, blocks=5), 2)
