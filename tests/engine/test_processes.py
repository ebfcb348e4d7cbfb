"""Tests that need other processes: two-process DDP (gloo), SIGTERM during training, the demo via torchrun."""

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
    from tiny_detector import CountingEvaluator, SquaresDataset, TinyDetector

    from detlab.config import TrainConfig
    from detlab.engine import fit
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
            make_evaluator=CountingEvaluator,
            classes=["red", "green"],
            context=context,
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


def test_two_processes_train_identical_weights_and_only_rank0_reports(tmp_path):
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
    assert summaries[0]["last"] and summaries[0]["metrics"]
    assert summaries[1]["last"] is None and summaries[1]["metrics"] == {}
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))  # once each, not twice
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]


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
