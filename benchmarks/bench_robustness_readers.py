"""Benchmark (issue 38): the data readers' fuzz at full size, and its counts.

The checks and the inputs are those of ``tests/data/test_reader_fuzz.py`` (imported from there),
run on ``--examples`` inputs a reader instead of a few dozen: COCO JSON, VOC XML (annotation, split
and class files), YOLO label and class files, and data.yaml (and the image lists it names), each
with malformed values in every field and with random, truncated and flipped bytes. Each input is
written as a data set in a fresh folder and read under ``on_bad='error'`` and ``'skip'``.

Counted: inputs tried per reader; under each policy the inputs read and those refused, by the file
the one-line :class:`BadInputError` named; the items ``skip`` skipped (and the documented repairs),
by ``ProblemLog`` kind; and tracebacks:
any other exception, or a breach of the contract (a record whose image lies outside the data set's
folder, a message naming no file of the data set), each kept with its input (the first five).

data.yaml nested thousands of levels deep is drawn apart, ``--deep-examples`` times: PyYAML spends
about 2 s on each before it gives up (the other readers' deep inputs are among their examples).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_robustness_readers.py
Writes benchmarks/results/robustness_readers.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, header_lines, stamp, write_results  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "data"))
import test_reader_fuzz as fuzz  # noqa: E402

KEPT_TRACEBACKS = 5


def run(reader: str, strategy, examples: int, random_seed: int) -> dict:
    """``examples`` inputs of ``strategy`` through :func:`fuzz.check`; the counts."""
    counts: Counter = Counter()
    tracebacks: list[dict] = []

    @seed(random_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case):
        counts["inputs"] += 1
        try:
            counts.update(fuzz.check(reader, case))
        except Exception as error:  # what the contract forbids: counted, kept, and the fuzz goes on
            counts["tracebacks"] += 1
            if len(tracebacks) < KEPT_TRACEBACKS:
                tracebacks.append(
                    {
                        "input": repr(case)[:500],
                        "traceback": "".join(traceback.format_exception(error))[-2000:],
                    }
                )

    started = time.perf_counter()
    one()
    seconds = time.perf_counter() - started
    return {
        "inputs": counts.pop("inputs", 0),
        "tracebacks": counts.pop("tracebacks", 0),
        "seconds": round(seconds, 1),
        "outcomes": dict(sorted(counts.items())),
        "kept_tracebacks": tracebacks,
    }


def policy_counts(outcomes: dict, policy: str) -> tuple[int, int]:
    """``(read, refused)`` under ``policy``."""
    read = outcomes.get(f"{policy}: read", 0)
    refused = sum(n for key, n in outcomes.items() if key.startswith(f"{policy}: refused"))
    return read, refused


def markdown(report: dict) -> str:
    lines = [
        "# Data readers under fuzzing: inputs tried, failures by kind, tracebacks",
        "",
        *header_lines(report),
        f"Each reader read {report['examples']:,} inputs (hypothesis, seed {report['seed']}): malformed values in "
        "every field (wrong types, out of range, non-finite, 400-digit numbers, paths leading out of the data set, "
        "deep nesting) and random, truncated and flipped bytes, each written as a data set in a fresh folder and "
        "read under `on_bad=error` and `on_bad=skip`. A traceback is any exception but a one-line `BadInputError` "
        "naming a file of the data set, or a record read from outside the data set's folder.",
        "",
        "| reader | inputs | error: read | error: refused | skip: read | skip: refused (whole file) "
        "| skip: items skipped | skip: items repaired | tracebacks | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["readers"].items():
        outcomes = result["outcomes"]
        error_read, error_refused = policy_counts(outcomes, "error")
        skip_read, skip_refused = policy_counts(outcomes, "skip")
        lines.append(
            f"| {name} | {result['inputs']:,} | {error_read:,} | {error_refused:,} | {skip_read:,} | "
            f"{skip_refused:,} | {outcomes.get('skip: items skipped', 0):,} | "
            f"{outcomes.get('skip: items repaired', 0):,} | {result['tracebacks']} | {result['seconds']} |"
        )
    lines += [
        "",
        f"Tracebacks seen in all: **{report['tracebacks']}** of {report['inputs']:,} inputs.",
        "",
        "## Failures by kind",
        "",
        "`refused: FILE`: the input was refused, naming FILE (`(another name)`: a file named by the fuzzed "
        "input); `kind: KIND`: the items skipped or repaired under that policy, by `ProblemLog` kind (the "
        "repairs are the documented ones: zero-size box, box clipped to or outside the image, stripped name).",
        "",
    ]
    for name, result in report["readers"].items():
        lines += [f"### {name}", "", "| outcome | count |", "|---|---:|"]
        lines += [
            f"| {key} | {n:,} |" for key, n in result["outcomes"].items() if "refused" in key or "kind" in key
        ]
        lines.append("")
    for name, result in report["readers"].items():
        for kept in result["kept_tracebacks"]:
            lines += [
                f"Traceback ({name}), input `{kept['input'][:200]}`:",
                "",
                "```",
                kept["traceback"],
                "```",
                "",
            ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=5000, help="inputs a reader")
    parser.add_argument(
        "--deep-examples", type=int, default=50, help="deeply nested data.yaml inputs (about 6 s each)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", nargs="+", choices=tuple(fuzz.READERS), default=list(fuzz.READERS))
    parser.add_argument("--results-name", default="robustness_readers")
    args = parser.parse_args()
    readers = {}
    for name in args.readers:
        readers[name] = run(name, fuzz.READERS[name].cases, args.examples, args.seed)
        print(
            f"{name}: {readers[name]['inputs']} inputs, {readers[name]['tracebacks']} tracebacks, "
            f"{readers[name]['seconds']} s",
            flush=True,
        )
    if "data_yaml" in args.readers and args.deep_examples:
        readers["data_yaml (deep nesting)"] = run(
            "data_yaml", fuzz.DEEP_DATA_YAML, args.deep_examples, args.seed
        )
    report = {
        **stamp(),
        "examples": args.examples,
        "deep_examples": args.deep_examples,
        "seed": args.seed,
        "inputs": sum(r["inputs"] for r in readers.values()),
        "tracebacks": sum(r["tracebacks"] for r in readers.values()),
        "readers": readers,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 1 if report["tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main())
