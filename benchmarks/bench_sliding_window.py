"""Benchmark: naive vs efficient (fully convolutional) sliding window, OverFeat section 3.5.

The same windows (the localizer's window size, at its feature stride of 16 pixels) are scored two
ways: cropping every window and running the original localizer on the batch of crops, and one pass
of the converted fully-convolutional network over the whole image. Both give the same numbers (the
largest difference is reported); the ratio of their times is the point.

Usage (from the repository root, under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_sliding_window.py
Writes benchmarks/results/sliding_window.{json,md}. The weights are random (speed does not depend
on them); BatchNorm statistics are set by a few forward passes so eval-mode BatchNorm is not trivial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from common import machine, machine_line  # noqa: E402

from detlab.models.localizer import LocalizerConfig, build_localizer_module  # noqa: E402
from detlab.models.overfeat import crop_windows, naive_sliding_window, to_fully_convolutional  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 256, 384])
    parser.add_argument("--window-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # The net the measured rows used: five valid-convolution blocks, flattened grid, FC box head.
    config = LocalizerConfig(
        window_size=args.window_size,
        regression="specific",
        attach="fc",
        padding=0,
        blocks=5,
        pool="none",
        hidden_dim=512,
        dropout=0.5,
    )
    model = build_localizer_module(config, 4)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.predict(torch.rand(8, 3, args.window_size, args.window_size))
    model.eval()
    converted = to_fully_convolutional(model)
    rows = []
    for size in args.sizes:
        image = torch.rand(3, size, size)
        num_windows = len(crop_windows(image, args.window_size, model.stride)[1])
        with torch.no_grad():
            naive_s, naive = timed(lambda image=image: naive_sliding_window(model, image), args.repeats)
            efficient_s, dense = timed(lambda image=image: converted(image[None]), args.repeats)
        difference = max(
            float((dense["class_logits"][0] - naive["class_logits"]).abs().max()),
            float((dense["boxes"][0] - naive["boxes"]).abs().max()),
        )
        rows.append(
            {
                "image_size": size,
                "windows": num_windows,
                "naive_s": naive_s,
                "efficient_s": efficient_s,
                "speedup": naive_s / efficient_s,
                "max_abs_difference": difference,
            }
        )
        print(json.dumps(rows[-1]))
    command = "flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_sliding_window.py " + " ".join(
        sys.argv[1:]
    )
    report = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "window_size": args.window_size,
        "stride": model.stride,
        "repeats": args.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sliding_window.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Naive vs efficient sliding window (OverFeat FC->conv)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        machine_line(report["machine"]),
        "",
        f"Small localizer net, {args.window_size}x{args.window_size} window, stride {report['stride']} px, "
        f"median of {args.repeats} runs.",
        "",
        "| image | windows | naive (crop + net per window) s | efficient (one conv pass) s | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['image_size']}x{row['image_size']} | {row['windows']} | {row['naive_s']:.3f} | "
            f"{row['efficient_s']:.3f} | {row['speedup']:.1f}x | {row['max_abs_difference']:.1e} |"
        )
    (RESULTS / "sliding_window.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
