"""Behaviour unchanged by a refactoring: the same trainings from two source trees, one after the other.

Issue 37 moved most of the code (the method contract, the engine split, one box module, the
command modules, a formatter pass). Its check: ``make demo`` and 5-minute BCCD trainings of
``yolo`` and ``faster_rcnn`` with the code before and after, on the same machine, in turn, with the
same Python environment (``PYTHONPATH`` picks the tree). Each training is
``detlab train MODEL --data voc:BCCD --time-budget S`` (the method's defaults: train on train, best.pt
on val), scored by ``detlab eval --checkpoint RUN/best --split test``; the demo is ``detlab demo``.
A time budget decides the steps, so the numbers differ by the machine's speed and by the seed's
luck at a given step; the steps are reported beside them.

    flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_before_after.py \\
        --before /tmp/before/src --after /tmp/after/src --work-dir /tmp/b37/out

A run folder that already holds a finished run (``last.pt``, and the evaluation's ``report.json``)
is read, not trained again, so the command also collects runs made by hand in that layout:
``WORK/{before,after}-MODEL`` (run), ``WORK/{tree}-MODEL-eval/report.json``, ``WORK/{tree}-demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO, header_lines, stamp, write_results

TREES = ("before", "after")


def detlab(source: Path, arguments: list[str], log: Path) -> float:
    """Run ``python -m detlab ARGUMENTS`` with ``source`` first on the path; its wall seconds."""
    environment = dict(os.environ, PYTHONPATH=str(source))
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-m", "detlab", *arguments],
            env=environment,
            stdout=handle,
            stderr=handle,
            check=True,
        )
    return round(time.perf_counter() - started, 1)


def training_row(source: Path, tree: str, model: str, data: str, budget_s: float, work: Path) -> dict:
    run, evaluation = work / f"{tree}-{model}", work / f"{tree}-{model}-eval"
    wall = None
    if not (run / "last.pt").is_file():
        wall = detlab(
            source,
            ["train", model, "--data", data, "--time-budget", str(budget_s), "--out", str(run)],
            work / f"{tree}-{model}.train.log",
        )
    if not (evaluation / "report.json").is_file():
        command = ["eval", "--checkpoint", str(run / "best"), "--data", data, "--split", "test"]
        detlab(source, [*command, "--out", str(evaluation)], work / f"{tree}-{model}.eval.log")
    progress = torch.load(run / "last.pt", weights_only=True, map_location="cpu")["progress"]
    metrics = json.loads((evaluation / "report.json").read_text())["metrics"]
    return {
        "tree": tree,
        "model": model,
        "steps": progress["step"],
        "train_s": round(progress["elapsed_s"], 1),
        "wall_s": wall,
        "AP50": metrics["AP50"],
        "AP": metrics["AP"],
        "AP75": metrics["AP75"],
    }


def demo_row(source: Path, tree: str, work: Path) -> dict:
    out = work / f"{tree}-demo"
    log = work / f"{tree}-demo.log"
    if not (out / "results.json").is_file():
        detlab(source, ["demo", "--out", str(out)], log)
    summary = json.loads((out / "results.json").read_text())
    output = log.read_text() if log.is_file() else ""
    return {
        "tree": tree,
        "model": f"demo ({summary['model']})",
        "steps": summary["steps"],
        "train_s": summary["train_seconds"],
        "AP50": summary["metrics"]["AP50"],
        "AP": summary["metrics"]["AP"],
        "AP75": summary["metrics"]["AP75"],
        "stride_warnings": output.count("Grad strides do not match"),
    }


def markdown(report: dict) -> str:
    lines = [
        "# The same trainings before and after the structure change (issue 37)",
        "",
        *header_lines(report),
        f"Before: `{report['before']}` (commit {report['commits']['before']}); after: `{report['after']}` "
        f"(commit {report['commits']['after']}); one Python environment, `PYTHONPATH` picks the tree. "
        f"BCCD runs: `detlab train MODEL --data {report['data']} --time-budget {report['budget_s']:g}`, "
        "scored on the test split by `detlab eval --checkpoint RUN/best`; the demo is `detlab demo` (its own "
        "5-minute budget, 2 processes). Each pair ran back to back, before first.",
        "",
        "| run | tree (commit) | steps | training s | AP50 | AP | AP75 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['tree']} ({row['commit']}) | {row['steps']} | {row['train_s']:.0f} | {row['AP50']:.3f} | "
            f"{row['AP']:.3f} | {row['AP75']:.3f} |"
        )
    warnings = {row["tree"]: row["stride_warnings"] for row in report["rows"] if "stride_warnings" in row}
    if warnings:
        lines += [
            "",
            f"PyTorch's 'Grad strides do not match bucket view strides' warnings in the demo's output: {warnings}.",
        ]
    lines += ["", report.get("note", ""), ""]
    return "\n".join(lines)


def commit_of(source: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the old tree's src folder")
    parser.add_argument("--after", default=str(REPO / "src"), help="the new tree's src folder")
    parser.add_argument("--data", default=f"voc:{REPO.parent / 'shared' / 'data' / 'bccd'}")
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--models", default="yolo,faster_rcnn")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--demo-after", help="the new tree for the demo rows (default: --after)")
    parser.add_argument("--demo-work-dir", help="where the demo rows run (default: --work-dir)")
    parser.add_argument("--work-dir", default="/tmp/bench/before_after")
    parser.add_argument("--note", default="", help="a sentence for the results file")
    parser.add_argument("--results-name", default="structure_before_after")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sources = {"before": Path(args.before), "after": Path(args.after)}
    rows = [
        training_row(sources[tree], tree, model, args.data, args.budget_s, work)
        for model in args.models.split(",")
        for tree in TREES
    ]
    for row in rows:
        row["commit"] = commit_of(sources[row["tree"]])
    if not args.no_demo:
        demo_sources = {**sources, "after": Path(args.demo_after or args.after)}
        demo_work = Path(args.demo_work_dir or work)
        demo_work.mkdir(parents=True, exist_ok=True)
        for tree in TREES:
            rows.append(
                {**demo_row(demo_sources[tree], tree, demo_work), "commit": commit_of(demo_sources[tree])}
            )
    report = {
        **stamp(),
        "before": args.before,
        "after": args.after,
        "commits": {tree: commit_of(sources[tree]) for tree in TREES},
        "demo_after": args.demo_after,
        "data": args.data,
        "budget_s": args.budget_s,
        "rows": rows,
        "note": args.note,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
