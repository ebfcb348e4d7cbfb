"""The run directory's record of training: a JSON-lines metrics log and PNG training curves.

``metrics.jsonl`` holds one JSON object a line, ``{"kind": "train", "epoch", "step", "lr",
"loss", "loss_<name>"..., "images_per_s", "time"}`` every ``log_every`` steps and
``{"kind": "eval", "epoch", "step", <metric>: float ...}`` after each evaluation.
``curves.png`` plots them against the step: every loss term, the learning rate and the headline
evaluation metrics. Only rank 0 of a distributed run writes either.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import yaml

from detlab import plotting
from detlab.engine.checkpoint import remove_temporaries, write_atomically
from detlab.engine.distributed import Context, average_across_processes
from detlab.engine.state import TrainingState

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
TENSORBOARD_NAME = "tensorboard"
# Plotted when present (the COCO summary has 12 numbers; these three tell the story).
HEADLINE_METRICS = ("AP", "AP50", "AP75")


class MetricsLog:
    """Appends records to ``run_dir/metrics.jsonl``; a resumed run first drops the records an
    interrupted run wrote after its last checkpoint, so each step appears once. When the
    ``tensorboard`` package is installed (the ``tensorboard`` extra), every number of a record is
    also a TensorBoard scalar under ``run_dir/tensorboard`` (``train/loss``, ``eval/AP50``, ...),
    resumed the same way."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.path)  # of a rewrite a killed run left unfinished
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [record for record in read_metrics(self.path) if record.get("step", 0) <= resume_step]
            write_atomically("".join(json.dumps(record) + "\n" for record in kept).encode(), self.path)
        self.board = tensorboard_writer(Path(run_dir) / TENSORBOARD_NAME, resume_step)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board is not None:
            for name, value in record.items():
                if name not in ("kind", "epoch", "step") and _is_number(value):
                    self.board.add_scalar(
                        f"{record.get('kind', 'train')}/{name}", value, record.get("step", 0)
                    )
            self.board.flush()

    def records(self) -> list[dict]:
        return read_metrics(self.path)


def tensorboard_writer(folder: Path, resume_step: int | None):
    """A TensorBoard ``SummaryWriter`` in ``folder`` (events after ``resume_step`` purged), or
    ``None`` when the ``tensorboard`` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics log (a run folder or the ``metrics.jsonl`` file)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: str | Path) -> Path | None:
    """Training curves from metrics records to a PNG; ``None`` when there is nothing to plot."""
    plt = plotting.pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    evaluations = [r for r in records if r.get("kind") == "eval"]
    if not train and not evaluations:
        return None
    loss_names = sorted({k for r in train for k in r if k.startswith("loss")})
    metric_names = sorted(
        {
            k
            for r in evaluations
            for k, v in r.items()
            if k not in ("kind", "epoch", "step", "time") and _is_number(v)
        }
    )
    headline = [name for name in HEADLINE_METRICS if name in metric_names]
    metric_names = headline or metric_names
    panels = [("loss", loss_names), ("learning rate", ["lr"])] if train else []
    if metric_names:
        panels.append(("evaluation", metric_names))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        source = evaluations if title == "evaluation" else train
        for name in names:
            # Evaluators report -1 for undefined metrics (no object of that size): not a point.
            points = [(r["step"], r[name]) for r in source if _is_number(r.get(name)) and r[name] >= 0]
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o" if title == "evaluation" else None, label=name, linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        if title == "loss" and any(r.get("loss", 0) > 0 for r in train):
            axis.set_yscale("log")
        if len(names) > 1 or title == "evaluation":
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def open_run_log(
    run_dir: Path, run_config: dict | None, resume_step: int | None, context: Context
) -> MetricsLog | None:
    """The metrics log (rank 0; ``None`` elsewhere), and ``config.yaml`` written beside it."""
    if not context.is_main:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_config is not None:
        with open(run_dir / "config.yaml", "w") as handle:
            yaml.safe_dump(run_config, handle, sort_keys=False)
    return MetricsLog(run_dir, resume_step=resume_step)


class LossWindow:
    """Loss terms averaged over the steps since the last log record, and the images per second.
    The sums stay on the device until :meth:`record`: no copy to the host every step."""

    def __init__(self):
        self.totals: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, names: list[str], values: torch.Tensor, images: int) -> None:
        """One step: ``values`` (``Tensor[len(names)]``, this process's) and the images of all processes."""
        for name, value in zip(names, values.double()):
            self.totals[name] = self.totals[name] + value if name in self.totals else value
        self.steps += 1
        self.images += images

    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def record(self, state: TrainingState, learning_rate: float, context: Context) -> dict:
        """The log record: each term's mean over the window and the processes (one all-reduce, so
        every rank calls it)."""
        names = list(self.totals)
        totals = average_across_processes(torch.stack([self.totals[name] for name in names]), context)
        record = {"kind": "train", "epoch": state.epoch + 1, "step": state.step, "lr": learning_rate}
        record.update({name: total / self.steps for name, total in zip(names, totals.tolist())})
        record.update({"images_per_s": round(self.images_per_s(), 3), "time": round(state.elapsed_s, 3)})
        return record
