"""fit / train_one_epoch / evaluate on a tiny detector: learning, logs, resume equality, NaN stop."""

import json

import pytest
import torch
from tiny_detector import SquaresDataset, TinyDetector

from detlab.config import TrainConfig
from detlab.engine import FitOptions, NonFiniteLossError, RunHeader, fit, load_checkpoint
from detlab.engine.metrics_log import read_metrics


def small_config(**changes) -> TrainConfig:
    values = dict(epochs=3, batch_size=2, lr=0.05, warmup_steps=3, log_every=1, eval_every=1, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


def train_tiny(run_dir, config, resume=None, stop_at_step=None, model=None, evaluate=True):
    torch.manual_seed(0)
    model = model or TinyDetector()
    result = fit(
        model,
        SquaresDataset(10),
        config,
        run_dir,
        val_dataset=SquaresDataset(10, flip=False) if evaluate else None,
        header=RunHeader(
            "tiny", ["red", "green"], {"model_name": "tiny", "train": {"epochs": config.epochs}}
        ),
        resume=resume,
        options=FitOptions(stop_at_step=stop_at_step),
    )
    return model, result


def test_losses_fall_and_the_run_folder_is_complete(tmp_path):
    model, result = train_tiny(tmp_path / "run", small_config(epochs=12, eval_every=4))
    assert result.status == "finished" and result.state.step == 12 * 5 and result.state.epoch == 12
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 61))
    for record in train:  # every loss term logged on its own, and their sum
        assert record["loss"] == pytest.approx(record["loss_classifier"] + record["loss_box_reg"], rel=1e-5)
    first, last = train[:5], train[-5:]
    assert sum(r["loss"] for r in last) < 0.5 * sum(r["loss"] for r in first)
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [4, 8, 12]
    for name in ("last.pt", "best.pt", "curves.png", "metrics.jsonl", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best["classes"] == ["red", "green"] and best["model_name"] == "tiny"
    assert best["progress"]["best_metric"] == max(r["AP50"] for r in records if r["kind"] == "eval")
    # the learning rate warmed up, then followed the cosine down to (almost) zero
    learning_rates = [r["lr"] for r in train]
    assert learning_rates[0] < learning_rates[3] and learning_rates[-1] < 0.01 * max(learning_rates)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_mid_epoch_gives_the_same_weights(tmp_path, optimizer):
    # 5 steps an epoch; pause at step 7 (inside epoch 2), resume, finish at 14: the same as straight.
    config = small_config(optimizer=optimizer, max_steps=14, lr=0.05 if optimizer == "sgd" else 0.01)
    straight, _ = train_tiny(tmp_path / "straight", config)
    _, paused = train_tiny(tmp_path / "split", config, stop_at_step=7)
    assert paused.status == "paused" and paused.state.step == 7 and paused.state.batch_in_epoch == 2
    resumed, result = train_tiny(tmp_path / "split", config, resume=tmp_path / "split")
    assert result.state.step == 14
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)
    # the resumed log holds every step once, as the straight one does
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if r["kind"] == "train"]
    assert steps == list(range(1, 15))


def test_a_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    train_tiny(tmp_path / "run", small_config(epochs=1), evaluate=False)
    with pytest.raises(ValueError, match="--resume"):
        train_tiny(tmp_path / "run", small_config(epochs=1), evaluate=False)


def test_nan_loss_stops_naming_the_step_and_last_good_checkpoint(tmp_path):
    model = TinyDetector(nan_after_step=7)
    with pytest.raises(NonFiniteLossError, match=r"step 8 .*last\.pt") as error:
        train_tiny(tmp_path / "run", small_config(epochs=3), model=model, evaluate=False)
    assert "loss_box_reg=nan" in str(error.value)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    # No finished step is lost: the error saved step 7, the last good one (epoch 2, batch 2)...
    assert saved["progress"]["step"] == 7 and saved["progress"]["batch_in_epoch"] == 2
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    # ...with the weights as they were before the bad step
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["model"][name], value, atol=0, rtol=0)


def test_an_error_after_the_first_step_saves_last_pt_and_resuming_continues_exactly(tmp_path):
    class FailingRead(SquaresDataset):
        """Stands in for an image that cannot be decoded: the 13th read fails (epoch 2, step 7)."""

        reads, fail_at = 0, 0

        def __getitem__(self, index):
            FailingRead.reads += 1
            if FailingRead.reads == self.fail_at:
                raise ValueError(f"image {index}: corrupt or truncated image")
            return super().__getitem__(index)

    config = small_config(epochs=3)
    straight, _ = train_tiny(tmp_path / "straight", config, evaluate=False)
    data = FailingRead(10)
    data.fail_at = 13
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fit(TinyDetector(), data, config, tmp_path / "run", header=RunHeader(classes=["red", "green"]))
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["progress"]["step"] == 6 and saved["progress"]["batch_in_epoch"] == 1  # no step lost
    resumed, result = train_tiny(tmp_path / "run", config, resume=tmp_path / "run", evaluate=False)
    assert result.status == "finished" and result.state.step == 15
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)


def test_resuming_a_finished_run_trains_nothing_unless_the_budget_grows(tmp_path):
    model, first = train_tiny(tmp_path / "run", small_config(epochs=2), evaluate=False)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    again, second = train_tiny(
        tmp_path / "run", small_config(epochs=2), resume=tmp_path / "run", evaluate=False
    )
    assert second.status == "already_finished" and second.state.step == first.state.step == 10
    for name, value in before.items():
        torch.testing.assert_close(again.state_dict()[name], value, atol=0, rtol=0)
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert steps == list(range(1, 11))  # the log was not touched
    _, longer = train_tiny(tmp_path / "run", small_config(epochs=3), resume=tmp_path / "run", evaluate=False)
    assert longer.status == "finished" and longer.state.step == 15


def test_background_only_images_are_training_data(tmp_path):
    class Empty(SquaresDataset):
        def __getitem__(self, index):
            image = torch.rand(3, 32, 32)
            return image, {
                "boxes": torch.zeros((0, 4)),
                "labels": torch.zeros((0,), dtype=torch.int64),
                "image_id": index,
            }

    torch.manual_seed(0)
    result = fit(TinyDetector(), Empty(4), small_config(epochs=2), tmp_path / "run")
    assert result.status == "finished" and result.state.step == 4
    records = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert all(r["loss_box_reg"] == 0.0 for r in records)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


class _DtypeRecorder(TinyDetector):
    """TinyDetector that remembers the dtype its class head computed in during training."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def _features(self, images):
        features = super()._features(images)
        if self.training:
            self.seen.add(self.class_head(features).dtype)
        return features


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_bf16_autocast_is_used_when_asked_and_the_run_still_learns(tmp_path, bf16):
    model, result = train_tiny(
        tmp_path / "run", small_config(epochs=8, amp_cpu_bf16=bf16), model=_DtypeRecorder(), evaluate=False
    )
    from detlab.engine.precision import cpu_has_fast_bf16

    assert model.seen == ({torch.bfloat16} if bf16 and cpu_has_fast_bf16() else {torch.float32})
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert sum(r["loss"] for r in train[-5:]) < 0.7 * sum(r["loss"] for r in train[:5])


def test_weight_average_follows_the_formula_and_copies_integer_buffers():
    from detlab.engine.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9, ramp_steps=1)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model)
    decay = 0.9 * (1 - torch.exp(torch.tensor(-1.0)))  # the ramp after one update
    torch.testing.assert_close(average.model[0].weight, start + (1 - decay) * 1.0)
    assert int(average.model[1].num_batches_tracked) == 7
    # a second step follows the weights even when their data were replaced (as .to() does)
    first = average.model[0].weight.detach().clone()
    model[0].weight.data = model[0].weight.data + 2.0
    average.update(model)
    decay = 0.9 * (1 - torch.exp(torch.tensor(-2.0)))
    torch.testing.assert_close(
        average.model[0].weight, first + (1 - decay) * (model[0].weight.detach() - first)
    )
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay=1.0)


def test_an_averaging_run_saves_and_evaluates_the_average_and_resumes_both_exactly(tmp_path):
    config = small_config(max_steps=14, ema_decay=0.8, ema_ramp_steps=2)
    straight, result = train_tiny(tmp_path / "straight", config)
    last = load_checkpoint(tmp_path / "straight" / "last")
    assert last["ema_updates"] == 14 and set(last["training_model"]) == set(last["model"])
    # "model" is the average: the model fit leaves behind, not the trained weights
    for name, value in last["model"].items():
        torch.testing.assert_close(straight.state_dict()[name], value)
    assert any(not torch.equal(last["model"][n], last["training_model"][n]) for n in last["model"])
    _, paused = train_tiny(tmp_path / "split", config, stop_at_step=7)
    resumed, _ = train_tiny(tmp_path / "split", config, resume=tmp_path / "split")
    resumed_last = load_checkpoint(tmp_path / "split" / "last")
    for key in ("model", "training_model"):
        for name, value in last[key].items():
            torch.testing.assert_close(resumed_last[key][name], value, atol=1e-6, rtol=0)


def test_a_training_set_and_a_model_with_set_progress_hear_the_share_of_the_budget_spent(tmp_path):
    class Progressing(SquaresDataset):
        heard: list = []

        def set_progress(self, fraction):
            self.heard.append(fraction)

    class ProgressingDetector(TinyDetector):
        heard: list = []

        def set_progress(self, fraction):
            self.heard.append((fraction, self.training))

    torch.manual_seed(0)
    fit(
        ProgressingDetector(),
        Progressing(10),
        small_config(epochs=4, eval_every=0),
        tmp_path / "run",
        header=RunHeader("tiny"),
    )
    # 4 epochs of 5 steps: before the first step, then after every step (an epoch's end twice: after
    # its last step and before the next epoch's first)
    expected = [0.0] + [
        step / 20 for step in range(1, 21) for _ in range(2 if step % 5 == 0 and step < 20 else 1)
    ]
    assert Progressing.heard == pytest.approx(expected)
    assert [fraction for fraction, _ in ProgressingDetector.heard] == pytest.approx(expected)
    assert all(training for _, training in ProgressingDetector.heard)
