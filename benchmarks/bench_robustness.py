"""Issue 38's figures in one table: what each robustness benchmark tried and what came of it.

Reads the three detailed results (each written by its own benchmark, which it does not rerun) and
writes ``benchmarks/results/robustness.{json,md}``:

- ``robustness_readers``: ``benchmarks/bench_robustness_readers.py`` (data readers fuzzed);
- ``robustness_checkpoints``: ``benchmarks/bench_robustness_checkpoints.py`` (checkpoint and ONNX
  loaders, single-bit flips and truncations);
- ``robustness_serve``: ``benchmarks/bench_robustness_serve.py`` (every method's memory against its
  stated cost; a hostile load of 32 clients).

Usage: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_robustness.py`` (seconds, no CPU lock).
"""

from __future__ import annotations

import json

from common import RESULTS, header_lines, stamp, write_results

SOURCES = ("robustness_readers", "robustness_checkpoints", "robustness_serve")


def summary(readers: dict, checkpoints: dict, serve: dict) -> dict:
    load, memory = serve["load"], serve["memory"]
    rows = [
        {
            "what": f"reader `{name}`",
            "tried": entry["inputs"],
            "tracebacks": entry["tracebacks"],
            "note": "malformed values of every field and random bytes; each failure one line naming file and field",
        }
        for name, entry in readers["readers"].items()
    ]
    for name, entry in checkpoints["files"].items():
        tried = sum(sum(entry[damage].values()) for damage in ("flip", "truncation"))
        detected = sum(entry[damage].get("detected", 0) for damage in ("flip", "truncation"))
        changed = sum(entry[damage].get("loaded changed", 0) for damage in ("flip", "truncation"))
        tracebacks = sum(entry[damage].get("traceback", 0) for damage in ("flip", "truncation"))
        rows.append(
            {
                "what": f"loader: {name}"
                + (" (before digests)" if name.endswith(("1", "_zip", "_legacy")) else ""),
                "tried": tried,
                "tracebacks": tracebacks,
                "note": f"{detected} detected, {changed} loaded changed weights silently",
            }
        )
    rows.append(
        {
            "what": "`detlab serve` under a hostile load",
            "tried": load["requests_sent"],
            "tracebacks": load["tracebacks_in_log"],
            "note": (
                f"{load['clients']} clients for {load['duration_s']:g} s, {load['fuzz_inputs']} malformed; "
                f"5xx: {load['server_5xx']}; healthy p50/p99 {load['healthy']['p50_ms']:.0f}/"
                f"{load['healthy']['p99_ms']:.0f} ms; peak RSS {load['rss_hwm'] / 2**20:.0f} MiB of a "
                f"{load['memory_budget'] / 2**20:.0f} MiB budget"
            ),
        }
    )
    rows.append(
        {
            "what": "memory of one pass, every method",
            "tried": len(memory["rows"]),
            "tracebacks": None,  # not what this part counts
            "note": "every stated cost covers its measurement"
            if memory["covered"]
            else "a stated cost falls short",
        }
    )
    return {
        "rows": rows,
        "tried": sum(row["tried"] for row in rows),
        "tracebacks": sum(row["tracebacks"] or 0 for row in rows),
        "server_5xx": load["server_5xx"],
        "changed_with_digest": checkpoints["changed_with_digest"],
        "sources": {
            "robustness_readers": readers["date"],
            "robustness_checkpoints": checkpoints["date"],
            "robustness_serve": {"memory": memory["date"], "load": load["date"]},
        },
    }


def markdown(report: dict) -> str:
    lines = ["# Robustness: what was thrown at detlab, and what came of it", "", *header_lines(report)]
    lines += [
        "One row a reader, loader or service test; the details are in "
        "[robustness_readers.md](robustness_readers.md), "
        "[robustness_checkpoints.md](robustness_checkpoints.md) and "
        "[robustness_serve.md](robustness_serve.md), the threat model in "
        "[docs/security.md](../../docs/security.md).",
        "",
        "| what | inputs tried | tracebacks | |",
        "|---|---:|---:|---|",
        *(
            f"| {row['what']} | {row['tried']:,} | {'-' if row['tracebacks'] is None else row['tracebacks']} | "
            f"{row['note']} |"
            for row in report["rows"]
        ),
        "",
        f"In all: **{report['tried']:,}** inputs, **{report['tracebacks']}** tracebacks, "
        f"**{report['server_5xx']}** 5xx answers; files with a digest loaded with changed contents: "
        f"**{report['changed_with_digest']}**.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sources = [json.loads((RESULTS / f"{name}.json").read_text()) for name in SOURCES]
    report = {**stamp(), **summary(*sources)}
    write_results("robustness", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
