"""Tests that need other processes: two-process DDP (gloo), SIGTERM during training, the demo via torchrun."""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detlab.engine import load_checkpoint
from detlab.engine.metrics_log import read_metrics

HERE = Path(__file__).parent
SOURCE = HERE.parents[1] / "src"


def _ddp_worker(rank: int, world_size: int, folder: str) -> None:
    import torch.distributed as dist
    from tiny_detector import SquaresDataset, TinyDetector

    from detlab.config import TrainConfig
    from detlab.engine import FitOptions, RunHeader, fit
    from detlab.engine.distributed import init_distributed

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
    )
    try:
        context = init_distributed("cpu")
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = TinyDetector()
        config = TrainConfig(epochs=2, batch_size=2, lr=0.05, warmup_steps=2, log_every=1, device="cpu")
        result = fit(
            model,
            SquaresDataset(10),
            config,
            f"{folder}/run",
            val_dataset=SquaresDataset(10, flip=False),
            header=RunHeader(classes=["red", "green"]),
            options=FitOptions(context=context),
        )
        summary = {
            "rank": context.rank,
            "world_size": context.world_size,
            "steps": result.state.step,
            "metrics": result.metrics,
            "last": str(result.last_checkpoint) if result.last_checkpoint else None,
        }
        Path(f"{folder}/rank{rank}.json").write_text(json.dumps(summary))
        torch.save(model.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_identical_weights_and_evaluate_as_one(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["world_size"] for s in summaries] == [2, 2]
    # 10 images over 2 ranks, 2 images a step: 3 steps an epoch on each rank, the same count
    assert summaries[0]["steps"] == summaries[1]["steps"] == 6
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=0, rtol=0)
    # the checkpoint holds the same weights; only rank 0 evaluated and wrote
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for name, value in weights[0].items():
        torch.testing.assert_close(saved[name], value, atol=0, rtol=0)
    assert summaries[0]["last"] and summaries[1]["last"] is None  # only rank 0 wrote
    # both ranks evaluated their half; rank 0 scored all 8 non-empty images once, as one process does
    assert summaries[1]["metrics"] == summaries[0]["metrics"] and summaries[0]["metrics"]["images"] == 8
    from tiny_detector import CountingEvaluator, SquaresDataset, TinyDetector

    from detlab.engine.sampling import make_loader
    from detlab.engine.train import evaluate

    alone = TinyDetector()
    alone.load_state_dict(saved)
    validation = SquaresDataset(10, flip=False)
    loader = make_loader(validation, 2, torch.utils.data.SequentialSampler(validation))
    assert evaluate(alone, loader, CountingEvaluator(), "cpu") == summaries[0]["metrics"]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))  # once each, not twice
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]


def _fit_worker(rank: int, world_size: int, folder: str, resume: bool, stop_at_step: int | None) -> None:
    """One process of a run on 12 squares, 2 a step, 2 epochs, logging every step; every sample
    index it reads goes to ``folder/seen-<world_size>-<rank>.txt``."""
    import torch.distributed as dist
    from tiny_detector import RecordingSquares, TinyDetector

    from detlab.config import TrainConfig
    from detlab.engine import FitOptions, RunHeader, fit
    from detlab.engine.distributed import init_distributed

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous-{resume}", rank=rank, world_size=world_size
        )
    try:
        config = TrainConfig(
            epochs=2, batch_size=2, lr=0.05, warmup_steps=2, log_every=1, eval_every=0, device="cpu"
        )
        dataset = RecordingSquares(12, f"{folder}/seen-{world_size}-{rank}.txt")
        fit(
            TinyDetector(),
            dataset,
            config,
            f"{folder}/run",
            header=RunHeader(classes=["red", "green"]),
            resume=f"{folder}/run" if resume else None,
            options=FitOptions(context=init_distributed("cpu"), stop_at_step=stop_at_step),
        )
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _run(world_size: int, folder: Path, resume: bool, stop_at_step: int | None = None) -> None:
    if world_size == 1:
        _fit_worker(0, 1, str(folder), resume, stop_at_step)
    else:
        mp.spawn(
            _fit_worker, args=(world_size, str(folder), resume, stop_at_step), nprocs=world_size, join=True
        )


def _seen(folder: Path, world_size: int) -> list[list[int]]:
    return [
        [int(line) for line in (folder / f"seen-{world_size}-{rank}.txt").read_text().split()]
        for rank in range(world_size)
    ]


@pytest.mark.parametrize(("first", "then", "pause_at"), [(2, 1, 2), (1, 2, 2)])
def test_a_run_resumed_on_another_number_of_processes_continues_exactly(tmp_path, first, then, pause_at):
    """12 images, 2 a step and process: ``first`` processes train ``pause_at`` steps, ``then``
    processes resume. Every image of the interrupted epoch is trained on exactly once, and the
    learning rate continues on the schedule of the first run, a step of ``then`` processes
    advancing it by ``then / first`` of the first run's steps."""
    from detlab.engine.optimization import LearningRateSchedule

    _run(first, tmp_path, resume=False, stop_at_step=pause_at)
    # the warning about the random states is this process's only when it is the one resuming
    with (
        pytest.warns(UserWarning, match=f"written by {first} process")
        if then == 1
        else contextlib.nullcontext()
    ):
        _run(then, tmp_path, resume=True)
    before = [index for rank in _seen(tmp_path, first) for index in rank]
    used = pause_at * 2 * first  # places of epoch 0's order used before the pause
    after = _seen(tmp_path, then)
    rest_per_rank = (12 - used) // then
    epoch0_after = [index for rank in after for index in rank[:rest_per_rank]]
    assert len(before) == used and sorted(before + epoch0_after) == list(range(12))  # each once
    epoch1 = [index for rank in after for index in rank[rest_per_rank:]]
    assert sorted(epoch1) == list(range(12))  # the next epoch whole, on the new processes

    records = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    steps_per_epoch = 12 // (2 * first)
    schedule = LearningRateSchedule(base_lr=0.05, total_steps=2 * steps_per_epoch, warmup_steps=2)
    positions = [float(step) for step in range(pause_at)]
    positions += [pause_at + k * then / first for k in range(len(records) - pause_at)]
    assert [r["lr"] for r in records] == pytest.approx(
        [0.05 * schedule.factor(p) for p in positions], rel=1e-6
    )
    assert positions[-1] + then / first == pytest.approx(2 * steps_per_epoch)  # the horizon reached exactly
    progress = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (progress["world_size"], progress["start_world_size"], progress["epoch"]) == (then, first, 2)


def _detector_worker(rank: int, world_size: int, folder: str, data: str, overrides: list[str]) -> None:
    """Three DDP steps of a Faster R-CNN on the synthetic set (DDP stops at the second step when
    a parameter gets no gradient)."""
    import torch.distributed as dist

    from detlab.data.loading import load_dataset
    from detlab.data.transforms import build_transforms
    from detlab.engine import FitOptions, RunHeader, fit
    from detlab.engine.distributed import init_distributed
    from detlab.engine.run import build_model, resolve_run_config

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
    )
    try:
        run_config = resolve_run_config("faster_rcnn", overrides=overrides)
        dataset = load_dataset(f"voc:{data}", "trainval").with_transforms(build_transforms(train=True))
        model = build_model(run_config, len(dataset.classes))
        config = dataclasses.replace(run_config.train, max_steps=3, batch_size=1, device="cpu", eval_every=0)
        result = fit(
            model,
            dataset,
            config,
            f"{folder}/run",
            header=RunHeader(classes=dataset.classes),
            options=FitOptions(context=init_distributed("cpu")),
        )
        Path(f"{folder}/steps{rank}.txt").write_text(str(result.state.step))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "model.backbone=resnet18",
            "model.fpn=false",
        ],  # torchvision's ResNet: its classifier and C5 are not built
        ["model.backbone=resnet18", "model.fpn=true"],
    ],
)
def test_ddp_trains_a_resnet_backbone_with_and_without_fpn(tmp_path, synthetic_root, overrides):
    small = ["model.min_size=96", "model.max_size=128", "model.pretrained_backbone=false"]
    mp.spawn(
        _detector_worker, args=(2, str(tmp_path), str(synthetic_root), overrides + small), nprocs=2, join=True
    )
    assert [(tmp_path / f"steps{rank}.txt").read_text() for rank in range(2)] == ["3", "3"]


def test_two_machines_without_a_shared_disk_train_checkpoint_and_resume(tmp_path):
    """``torchrun --nnodes 2`` as two node processes on loopback, each in its own working folder
    (its own disk): each machine prepares its data, rank 0's machine holds the run, and resuming
    works although the other machine has no run folder at all."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1"}

    def launch(arguments: list[str]) -> None:
        processes = []
        for node_rank, folder in enumerate(machines):
            folder.mkdir(exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={node_rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "detlab",
                "train",
                *arguments,
            ]
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=folder,
                    env=environment,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [process.communicate(timeout=240)[0] for process in processes]
        assert [process.returncode for process in processes] == [0, 0], "\n".join(
            output[-3000:] for output in outputs
        )

    launch(
        [
            "faster_rcnn",
            "--data",
            "synthetic",
            "--data-root",
            "data/shapes",
            "--set",
            "data.synthetic_images=12",
            "--set",
            "data.val_split=",
            "--set",
            "model.min_size=96",
            "--set",
            "model.max_size=128",
            "--batch-size",
            "1",
            "--max-steps",
            "1",
            "--device",
            "cpu",
            "--out",
            "runs/two",
        ]
    )
    assert (machines[0] / "runs/two/last.pt").is_file() and not (machines[1] / "runs/two").exists()
    assert all(len(list((folder / "data/shapes/JPEGImages").glob("*.jpg"))) == 12 for folder in machines)
    launch(["--resume", "runs/two", "--max-steps", "2", "--device", "cpu"])
    progress = load_checkpoint(machines[0] / "runs/two/last.pt")["progress"]
    assert (progress["step"], progress["world_size"]) == (2, 2) and not (machines[1] / "runs/two").exists()


SIGTERM_SCRIPT = """
import sys, time
sys.path.insert(0, {here!r})
import pytest
import torch
from tiny_detector import SquaresDataset, TinyDetector
from detlab.config import TrainConfig
from detlab.engine import fit

torch.set_num_threads(1)

class Slow(SquaresDataset):
    def __getitem__(self, index):
        time.sleep(0.05)
        return super().__getitem__(index)

result = fit(TinyDetector(), Slow(10), TrainConfig(epochs=1000, log_every=1, device="cpu"), {run!r})
print("STATUS", result.status, result.signal_name, result.state.step, flush=True)
sys.exit(143 if result.status == "interrupted" else 0)
"""


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT.format(here=str(HERE), run=str(run)))
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(read_metrics(run)) < 3:
        time.sleep(0.1)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "STATUS interrupted SIGTERM" in stdout
    stopped_at = int(stdout.split()[-1])
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["progress"]["step"] == stopped_at >= 3
    assert checkpoint["progress"]["epoch"] < 1000


EVALUATION_SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
import torch
from tiny_detector import SquaresDataset, TinyDetector
from detlab.config import TrainConfig
from detlab.engine import RunHeader, fit

torch.set_num_threads(1)

class SlowToScore(SquaresDataset):
    # the validation set: it marks the start of the evaluation, then takes its time
    def __getitem__(self, index):
        Path({marker!r}).touch()
        time.sleep(0.2)
        return super().__getitem__(index)

torch.manual_seed(0)
config = TrainConfig(epochs={epochs}, batch_size=2, lr=0.05, warmup_steps=2, log_every=1, device="cpu")
result = fit(TinyDetector(), SquaresDataset(10), config, {run!r}, val_dataset=SlowToScore(10, flip=False),
             header=RunHeader("tiny", ["red", "green"]), resume={resume})
print("STATUS", result.status, result.state.epoch, result.state.step, flush=True)
"""


def test_sigterm_during_the_evaluation_keeps_the_epoch_and_the_run_resumes_exactly(tmp_path):
    """The epoch is saved before its evaluation starts, and a SIGTERM that arrives while it runs
    stops the run when it ends: a scheduler's SIGKILL after the SIGTERM loses no training."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}

    def run(folder, resume=None, epochs=2, marker=None):
        script = tmp_path / f"fit-{folder.name}.py"
        script.write_text(
            EVALUATION_SIGTERM_SCRIPT.format(
                here=str(HERE),
                run=str(folder),
                resume=repr(resume),
                epochs=epochs,
                marker=str(marker or tmp_path / "unused"),
            )
        )
        return subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
        )

    marker = tmp_path / "evaluating"
    process = run(tmp_path / "split", marker=marker)
    deadline = time.time() + 90
    while time.time() < deadline and not marker.exists():
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=90)
    assert "STATUS interrupted 1 5" in stdout, stderr
    saved = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 5)
    assert list(tmp_path.joinpath("split").glob(".*.tmp")) == []  # no temporary file left behind
    resumed = run(tmp_path / "split", resume=str(tmp_path / "split"))
    straight = run(tmp_path / "straight")
    for process in (resumed, straight):
        stdout, stderr = process.communicate(timeout=120)
        assert "STATUS finished 2 10" in stdout, stderr
    expected = load_checkpoint(tmp_path / "straight" / "last.pt")
    found = load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in expected["model"].items():
        torch.testing.assert_close(found["model"][key], value, atol=1e-6, rtol=0, msg=key)
    # the evaluation the signal arrived in finished before the run stopped: the scores, the best epoch and
    # the log of evaluations are those of the uninterrupted run
    assert (
        found["metrics"] == pytest.approx(expected["metrics"], abs=1e-6) and found["metrics"]["images"] == 8
    )
    assert found["progress"]["best_epoch"] == expected["progress"]["best_epoch"]
    evaluations = [
        [record["epoch"] for record in read_metrics(tmp_path / folder) if record["kind"] == "eval"]
        for folder in ("split", "straight")
    ]
    assert evaluations[0] == evaluations[1] == [1, 2]


@pytest.mark.parametrize("processes", [1, 2])
def test_demo_trains_in_one_or_two_processes_and_scores_the_test_split(tmp_path, monkeypatch, processes):
    """``detector_demo`` (what ``make demo`` runs) with a tiny model for a few seconds: in one
    process, or data-parallel through torchrun; either way the best checkpoint is scored on test."""
    from detlab.data.synthetic import ensure_synthetic
    from detlab.demo import detector_demo

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    data_root = ensure_synthetic(tmp_path / "synthetic", num_images=24)
    tiny = ["model.backbone_width=8", "model.fpn_channels=16", "model.representation_size=32"]
    summary = detector_demo(
        tmp_path / "out", data_root, 4.0, num_shown=2, overrides=tiny, processes=processes
    )
    assert summary["processes"] == processes and summary["steps"] >= 1
    assert summary["test_images"] >= 1 and 0.0 <= summary["metrics"]["AP50"] <= 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["steps"] == summary["steps"] and saved["checkpoint"].endswith("best.pt")
    for name in ("circle", "square", "triangle", "star"):
        assert (tmp_path / "out" / f"pr_{name}.png").is_file()
    assert (tmp_path / "out" / "test_detections.png").is_file()
    checkpoint = load_checkpoint(tmp_path / "out" / "faster_rcnn" / "last.pt")
    assert checkpoint["progress"]["step"] == summary["steps"]
    assert checkpoint["config"]["model"]["backbone_width"] == 8
