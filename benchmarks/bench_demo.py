"""Benchmark: Faster R-CNN on the built-in synthetic set at the ``demo`` preset and variants of it.

Each variant is the ``demo`` preset with some ``section.field=value`` changes, trained from scratch
for the same wall-clock budget on the synthetic train split (the ``make demo`` data: 2,000 images,
seed 0), its best checkpoint on val scored on the test split with the COCO metrics, exactly as
``make demo`` does (``detlab.demo.detector_demo``).

Usage (from the repository root, under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_demo.py --variants joint 4step
Variants: ``joint`` (the preset as is), ``4step`` (the paper's alternating training, a quarter of
the budget per step), ``sgd`` (SGD at lr 0.02, the preset before AdamW), ``p2`` (a stride-4 P2
pyramid level, RoI level rule with canonical side 56, two anchor sizes a level), or
``NAME:key=value,key=value`` for any other (the resolved config of each run is kept with its row,
since the preset the changes apply to may change). Results merge into
``benchmarks/results/demo_variants.{json,md}`` (one row per variant, the newest run of each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bench_detectors import recorded_command  # noqa: E402  (this folder is on the path)

from detlab.cli.demo import processes_argument  # noqa: E402
from detlab.data.synthetic import ensure_synthetic  # noqa: E402
from detlab.demo import detector_demo, threads_per_process  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VARIANTS = {
    "joint": [],
    "4step": ["model.recipe=4step"],
    "sgd": ["train.optimizer=sgd", "train.lr=0.02"],
    "p2": [
        "model.fpn_min_level=2",
        "model.roi_canonical_size=56",
        "model.anchor_sizes=[12,18,26,38,54,80,112,160]",
    ],
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    if text in VARIANTS:
        return text, VARIANTS[text]
    if ":" not in text:
        raise SystemExit(f"unknown variant {text!r}: use one of {', '.join(VARIANTS)} or NAME:key=value,...")
    name, changes = text.split(":", 1)
    return name, [change for change in re.split(r",(?![^\[]*\])", changes) if change]  # keep [a,b] whole


def total_steps(run_dir: Path, last_step: int) -> int:
    """Optimiser steps of a run: for a 4-step run, those of the finished steps 1-3 plus the last."""
    done = sorted(run_dir.glob("step*/step_done"))
    return sum(int(path.read_text().split()[0]) for path in done) + last_step


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["joint", "4step"])
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (make demo: 2000)")
    parser.add_argument("--work-dir", default="runs/bench_demo")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of a one-process run (0: torch's default)"
    )
    parser.add_argument(
        "--processes",
        default="auto",
        type=processes_argument,
        help="data-parallel training processes, as `detlab demo --processes`",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    processes = args.processes
    work = Path(args.work_dir)
    data_root = ensure_synthetic(work / "synthetic", num_images=args.images)
    results_path = RESULTS / "demo_variants.json"
    report = json.loads(results_path.read_text()) if results_path.exists() else {"variants": {}}
    for text in args.variants:
        name, overrides = parse_variant(text)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        summary = detector_demo(
            work / name, data_root, args.budget_s, num_shown=4, overrides=overrides, processes=processes
        )
        run_dir = work / name / "faster_rcnn"
        report["variants"][name] = {
            "overrides": overrides,
            "budget_s": args.budget_s,
            "images": args.images,
            "steps": total_steps(run_dir, summary["steps"]),
            "mAP50": round(summary["metrics"]["AP50"], 4),
            "mAP": round(summary["metrics"]["AP"], 4),
            "AP50_per_class": {row["class"]: round(row["AP50"], 4) for row in summary["per_class"]},
            # the whole resolved config, since the preset the overrides apply to changes over time
            "config": (run_dir / "config.yaml").read_text(),
            "command": recorded_command(),
            "date_utc": started,
            "processes": processes,
            "threads": torch.get_num_threads() if processes == 1 else threads_per_process(processes),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, RESULTS / "demo_variants.md")
    return 0


def write_markdown(report: dict, path: Path) -> None:
    rows = report["variants"]
    classes = list(next(iter(rows.values()))["AP50_per_class"]) if rows else []
    lines = [
        "# Faster R-CNN on the synthetic set: the `demo` preset and variants (test split, from scratch)",
        "",
        "Each row: the `demo` preset with the listed changes, trained for the budget on the synthetic "
        "train split, best checkpoint on val, scored on test (COCO metrics). Rows may come from "
        "different runs; each lists its own command, date and thread count.",
        "",
        "| variant | changes | images | budget | steps | processes x threads | mAP@0.5 | mAP@[.5:.95] | "
        + " | ".join(f"AP@0.5 {c}" for c in classes)
        + " | date | command |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(classes) + "---|---|",
    ]
    for name, row in rows.items():
        per_class = " | ".join(f"{row['AP50_per_class'].get(c, 0):.3f}" for c in classes)
        lines.append(
            f"| {name} | {', '.join(row['overrides']) or '(preset)'} | {row['images']} | "
            f"{row['budget_s']:.0f} s | {row['steps']} | "
            f"{row.get('processes', 1)} x {row['threads']} | {row['mAP50']:.3f} | {row['mAP']:.3f} | {per_class} | {row['date_utc']} | "
            f"`{row['command']}` |"
        )
    lines += ["", f"Machine: {next(iter(rows.values()))['machine']}" if rows else ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
