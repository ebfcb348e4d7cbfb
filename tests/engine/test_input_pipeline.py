"""The input pipeline: worker counts, persistent workers that still see every epoch, and the
training loop's log (reduced on logging steps only, the same numbers as reduced every step)."""

import pytest
import torch
from tiny_detector import SquaresDataset, TinyDetector

from detlab.config import TrainConfig
from detlab.engine import FitOptions, RunHeader, fit, metrics_log, sampling, step
from detlab.engine.metrics_log import read_metrics
from detlab.engine.sampling import (
    GPU_WORKERS,
    ResumableSampler,
    SeededSamples,
    loader_workers,
    make_loader,
    make_training_loader,
)


def test_auto_workers_depend_on_the_device_and_the_cpus_of_each_process(monkeypatch):
    assert loader_workers(3, "cpu") == 3 and loader_workers(0, "cuda") == 0
    with pytest.raises(ValueError, match="none \\(auto\\)"):
        loader_workers(-1, "cpu")
    assert loader_workers(None, "cpu") == sampling.CPU_WORKERS
    monkeypatch.setattr(sampling.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 GPU processes share 8 CPUs
    assert loader_workers(None, torch.device("cuda", 0)) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(None, torch.device("cuda", 0)) == GPU_WORKERS
    # batches for a GPU come in pinned memory (its copies then overlap the computation)
    dataset = SquaresDataset(4)
    assert make_loader(
        dataset, 2, torch.utils.data.SequentialSampler(dataset), 0, device=torch.device("cuda", 0)
    ).pin_memory
    assert not make_loader(
        dataset, 2, torch.utils.data.SequentialSampler(dataset), 0, device="cpu"
    ).pin_memory


class Draws(torch.utils.data.Dataset):
    """Each sample is a random draw: what an augmentation sees."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return torch.rand(3), {"index": index}


class DrawsWithProgress(Draws):
    def set_progress(self, fraction: float) -> None:
        self.fraction = fraction


def samples_per_epoch(num_workers: int, epochs: int = 3, dataset=None):
    """``(loader, [[(index, draw), ...] per epoch])`` of a training loader, set epoch by epoch as fit does."""
    seeded = SeededSamples(dataset or Draws(), seed=3)
    sampler = ResumableSampler(6, seed=3)
    loader = make_training_loader(seeded, 2, sampler, num_workers, device="cpu")
    per_epoch = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        seeded.set_epoch(epoch)
        per_epoch.append(
            [(target["index"], image) for images, targets in loader for image, target in zip(images, targets)]
        )
    return loader, per_epoch


def test_persistent_workers_draw_each_epochs_augmentation_as_the_training_process_does():
    persistent, with_workers = samples_per_epoch(num_workers=1)
    assert persistent.persistent_workers  # one worker process for all three epochs
    _, in_process = samples_per_epoch(num_workers=0)
    for epoch, (got, expected) in enumerate(zip(with_workers, in_process)):
        assert [index for index, _ in got] == [index for index, _ in expected], epoch
        for (_, draw), (_, wanted) in zip(got, expected):
            torch.testing.assert_close(draw, wanted, rtol=0, atol=0)
    first, second = dict(with_workers[0]), dict(with_workers[1])
    assert not torch.equal(first[0], second[0])  # a new epoch, new draws
    # a set that must hear the budget spent (mosaics stop) gets fresh workers every epoch
    hearing, _ = samples_per_epoch(num_workers=1, epochs=1, dataset=DrawsWithProgress())
    assert not hearing.persistent_workers


def train_logging_every(run_dir, log_every: int) -> list[dict]:
    torch.manual_seed(0)
    config = TrainConfig(
        epochs=2, batch_size=2, lr=0.05, warmup_steps=3, log_every=log_every, eval_every=0, device="cpu"
    )
    fit(
        TinyDetector(),
        SquaresDataset(10),
        config,
        run_dir,
        header=RunHeader("tiny", ["red", "green"]),
        options=FitOptions(num_workers=0),
    )
    return [record for record in read_metrics(run_dir) if record["kind"] == "train"]


def test_the_log_averages_the_steps_since_the_last_record_reducing_the_losses_only_then(
    tmp_path, monkeypatch
):
    every_step = train_logging_every(tmp_path / "every", 1)
    reductions = []
    counted = step.average_across_processes
    for module in (step, metrics_log):  # a step's flags (step), a record's means (metrics_log)
        monkeypatch.setattr(
            module,
            "average_across_processes",
            lambda values, context: reductions.append(1) or counted(values, context),
        )
    every_other = train_logging_every(tmp_path / "other", 2)
    assert [record["step"] for record in every_other] == [1, 2, 4, 6, 8, 10]
    # one small reduction a step (the stop flag, the clock, finiteness), one more a record
    assert len(reductions) == 10 + len(every_other)
    by_step = {record["step"]: record for record in every_step}
    names = [name for name in every_step[0] if name == "loss" or name.startswith("loss_")]
    assert len(names) == 3
    previous, spans = 0, []
    for record in every_other:  # a window spans the steps since the last record, within one epoch
        first_of_epoch = (record["epoch"] - 1) * 5 + 1
        window = [by_step[step] for step in range(max(previous + 1, first_of_epoch), record["step"] + 1)]
        previous = record["step"]
        spans.append(len(window))
        for name in names:
            assert record[name] == pytest.approx(
                sum(r[name] for r in window) / len(window), rel=1e-12, abs=1e-15
            )
    assert spans == [1, 1, 2, 1, 2, 2]  # step 6 opens epoch 2: step 5 was never logged (as before)
