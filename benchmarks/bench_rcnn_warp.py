"""Why `detlab compare`'s R-CNN : Fast R-CNN : Faster R-CNN speed-ups are below the lecture's:
R-CNN's test time with its warp at detlab's CPU size (64 px) and at the paper's 227 px, timed in one
run beside Fast and Faster R-CNN on the same images, with the proposal step.

The runs are a finished `detlab compare` folder (one run folder a method). The R-CNN rows load the
same checkpoint; the 227-px row only changes ``model.window_size`` (pool5 is pooled to a fixed grid,
so the weights fit; the context padding is 16 px at 227, the paper's, at any size), so its detections
mean nothing, but its time is what the paper's warp costs this network: one CNN pass a proposal,
up to 2,000 an image. Every row is one pass over the first ``--images`` test images, one image at a
time, after warm-up images (`detlab.comparison.score_and_time`, as `detlab compare` times them).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_rcnn_warp.py --data bccd \\
      --runs runs/compare-bccd --images 8 --results-name rcnn_warp_bccd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import DATA, header_lines, stamp, write_results
from common import test_split as load_test_split

from detlab.comparison import score_and_time
from detlab.engine.predict import Predictor

# The lecture (VOC 2007, VGG-16 on a GPU): seconds a test image with proposals.
LECTURE = {"rcnn": 50.0, "fast_rcnn": 2.0, "faster_rcnn": 0.2}
ROWS = [("R-CNN, 64-px warp (as trained)", "rcnn", ["model.window_size=64"]),
        ("R-CNN, 227-px warp (the paper's)", "rcnn", ["model.window_size=227"]),
        ("Fast R-CNN", "fast_rcnn", []), ("Faster R-CNN", "faster_rcnn", [])]  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        "# R-CNN's warp size and the lecture's speed-ups",
        "",
        *header_lines(report),
        f"The first {report['images']} test images of `{report['data']}`, one at a time; R-CNN's proposals are "
        "Selective Search (`ss-fast`), up to 2,000 an image; the speed-ups are against the 227-px R-CNN row, "
        "as the lecture's are against the paper's R-CNN. Same checkpoints as the `detlab compare` run in "
        f"`{report['runs']}`.",
        "",
        "| method | proposals an image (at most) | test s/image without proposals | with proposals | speed-up vs R-CNN at 227 px | lecture (s, speed-up) |",
        "|---|---|---|---|---|---|",
    ]
    base = next(row for row in report["rows"] if "227" in row["label"])["s_with"]
    for row in report["rows"]:
        lecture = LECTURE[row["method"]]
        without = f"{row['s_without']:.4f}" if row["external_proposals"] else "(no proposal step)"
        lines.append(
            f"| {row['label']} | {row['proposals'] or '-'} | {without} | {row['s_with']:.4f} | "
            f"{base / row['s_with']:.1f}x | {lecture:g} s, {LECTURE['rcnn'] / lecture:g}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=tuple(DATA), default="bccd")
    parser.add_argument(
        "--runs", required=True, help="a detlab compare folder with rcnn, fast_rcnn, faster_rcnn"
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-name", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_test_split(args.data, args.images)
    rows = []
    for label, method, overrides in ROWS:
        overrides = [*overrides, "model.cache_test_features=false"] if method == "rcnn" else overrides
        predictor = Predictor.from_checkpoint(Path(args.runs) / method, device="cpu", overrides=overrides)
        measured = score_and_time(predictor.model, dataset, predictor.device, predictor.amp)
        external = measured["external_proposals"]
        rows.append(
            {
                "label": label,
                "method": method,
                "overrides": overrides,
                "proposals": predictor.run_config.model.max_proposals if external else None,
                "s_with": round(measured["s_per_image_with_proposals"], 4),
                "s_without": round(measured["s_per_image_without_proposals"], 4),
                "external_proposals": external,
            }
        )
        print(rows[-1], flush=True)
    report = {**stamp(), "data": args.data, "runs": args.runs, "images": len(dataset), "rows": rows}
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
