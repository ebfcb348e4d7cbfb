"""Proposals for a whole split in parallel processes: ``RecordProposals.fill(records, workers)``,
what the R-CNN and Fast R-CNN training caches run before training, with 1 and with N worker
processes, each into a fresh cache, one after the other in one run; the boxes must be identical.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_proposal_workers.py \\
      --data bccd --split trainval --method ss-fast --workers 1 2
Results: ``benchmarks/results/proposal_workers_<data>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import header_lines, load_split, stamp, write_results

from detlab.proposals import ProposalCache, RecordProposals, build_method


def markdown(report: dict) -> str:
    lines = [
        f"# Proposals on every core: {report['method']} for {report['data']} {report['split']}",
        "",
        *header_lines(report),
        f"{report['images']} images, `RecordProposals.fill` (1 worker: in this process; N: N spawned processes "
        "of one torch thread each), each worker count into a fresh cache. Identical boxes: "
        f"{'yes' if report['identical'] else 'NO'}.",
        "",
        "| workers | seconds | images/s | speed-up vs 1 |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['workers']} | {row['seconds']:.1f} | {row['images_per_s']:.2f} | {row['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="bccd")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--method", default="ss-fast")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit", type=int, default=0, help="the first N images only (0: all)")
    args = parser.parse_args()
    records = load_split(args.data, args.split).records
    records = records[: args.limit] if args.limit else records
    rows, caches = [], []
    with tempfile.TemporaryDirectory() as folder:
        for workers in args.workers:
            proposals = RecordProposals(
                ProposalCache(Path(folder) / f"w{workers}", build_method(args.method))
            )
            started = time.perf_counter()
            proposals.fill(records, workers=workers, progress=False)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "workers": workers,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(len(records) / seconds, 3),
                }
            )
            caches.append(proposals)
            print(f"{workers} worker(s): {seconds:.1f} s", flush=True)
        identical = all(
            np.array_equal(caches[0](record).numpy(), other(record).numpy())
            for other in caches[1:]
            for record in records
        )
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 3)
    report = {
        **stamp(),
        "data": args.data,
        "split": args.split,
        "method": args.method,
        "images": len(records),
        "identical": identical,
        "rows": rows,
    }
    write_results(f"proposal_workers_{args.data}", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
