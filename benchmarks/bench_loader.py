"""Benchmark: training speed of the BCCD preset with the data loaded in the training process or by
worker processes (``data.num_workers``), on this machine's CPU.

Each run is ``detlab train faster_rcnn --preset bccd`` (``detlab.engine.run.train_run``, what the
command runs) for ``--warmup`` + ``--steps`` steps with no evaluation; its speed is the images of
the ``--steps`` steps after the warm-up over the training time they took, read from the run's
``metrics.jsonl`` (``time``: the training clock, which counts waiting for the data, not the
checks before the first step). The worker counts run in turn, the order rotating each round, so a
drift of the machine falls on all of them alike; the median of the rounds is reported. The
result sets the CPU default of ``data.num_workers: null`` (auto,
``detlab.engine.sampling.CPU_WORKERS``).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_loader.py
Writes benchmarks/results/archive/loader_bccd.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from detlab.engine.metrics_log import read_metrics  # noqa: E402
from detlab.engine.run import resolve_run_config, train_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, header_lines, in_turn, stamp, write_results  # noqa: E402


def images_per_second(args, num_workers: int, out: Path) -> float:
    """One training run with ``num_workers`` loader processes: images a second after the warm-up."""
    shutil.rmtree(out, ignore_errors=True)
    run_config = resolve_run_config(
        "faster_rcnn",
        preset="bccd",
        data={**DATA["bccd"], "num_workers": num_workers},
        train={
            "out_dir": str(out),
            "max_steps": args.warmup + args.steps,
            "time_budget_s": 0,
            "log_every": 1,
            "eval_every": 0,
            "seed": 0,
            "device": "cpu",
        },
    )
    train_run(run_config)
    clock = {record["step"]: record["time"] for record in read_metrics(out) if record["kind"] == "train"}
    seconds = clock[args.warmup + args.steps] - clock[args.warmup]
    return args.steps * run_config.train.batch_size / seconds


def markdown(report: dict) -> str:
    lines = [
        "# Data loading workers: BCCD preset training on this CPU",
        "",
        *header_lines(report),
        f"Faster R-CNN, `--preset bccd` (batch {report['batch_size']}, {report['torch_threads']} torch threads), "
        f"{report['steps']} steps timed after {report['warmup']} of warm-up, no evaluation; the worker counts in "
        f"turn, {report['rounds']} rounds, the order rotating. Images a second from the training clock of "
        "`metrics.jsonl` (data waits included). The machine's 1-minute load average before and after: "
        f"{report['load_average_1min'][0]} and {report['load_average_1min'][1]} (other work would show here).",
        "",
        "| data.num_workers | images/s (median) | each round | vs 0 workers |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        rounds = ", ".join(f"{value:.2f}" for value in row["images_per_s"])
        lines.append(f"| {row['num_workers']} | {row['median']:.2f} | {rounds} | {row['ratio_to_0']:.3f} |")
    lines += [
        "",
        f"Fastest: {report['fastest']} workers; the CPU default (auto) is "
        f"`CPU_WORKERS = {report['cpu_default']}` in `src/detlab/engine/sampling.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    parser.add_argument("--results-name", default="loader_bccd")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if 0 not in args.workers:
        parser.error("--workers must include 0, the reference")
    from detlab.engine.sampling import CPU_WORKERS

    speeds: dict[int, list[float]] = {count: [] for count in args.workers}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        for round_index in range(args.rounds):
            for count in in_turn(args.workers, round_index):
                speeds[count].append(images_per_second(args, count, work / f"workers{count}"))
                print(
                    f"round {round_index + 1}: {count} workers, {speeds[count][-1]:.2f} images/s", flush=True
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {count: statistics.median(values) for count, values in speeds.items()}
    report = {
        **stamp(),
        "data": "bccd",
        "preset": "bccd",
        "batch_size": 2,
        "torch_threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "rows": [
            {
                "num_workers": count,
                "images_per_s": [round(v, 3) for v in speeds[count]],
                "median": round(medians[count], 3),
                "ratio_to_0": round(medians[count] / medians[0], 3),
            }
            for count in args.workers
        ],
        "fastest": max(medians, key=medians.get),
        "cpu_default": CPU_WORKERS,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
