"""Benchmark: photometric jitter an image, detlab's ``RandomColourJitter`` (brightness, contrast,
saturation and hue as one colour matrix) against torchvision's ``v2.ColorJitter`` with the same
ranges (its hue through HSV), the transform a user would pick, and against torchvision's three
steps without the hue plus detlab's YIQ hue rotation (detlab's pipeline before the one-matrix
jitter: ``ColorJitter(0.3, 0.3, 0.3)`` then a 3x3 hue rotation).

Each transform runs on the same float images in [0, 1] (``--sizes``, random pixels), one at a
time, as a training sample is prepared; every transform in turn over ``--images`` images, the
order rotating each round (``common.interleaved_ms``, after one warm-up pass), the median of
``--rounds`` rounds reported as milliseconds an image.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_transforms.py
Writes benchmarks/results/transforms.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header_lines, interleaved_ms, stamp, write_results  # noqa: E402

from detlab.data.transforms import RandomColourJitter, jitter_colours  # noqa: E402

RANGES = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}


class HueRotation(v2.Transform):
    """detlab's hue step before the one-matrix jitter: a random YIQ rotation, on its own."""

    _transformed_types = (tv_tensors.Image,)

    def make_params(self, flat_inputs: list) -> dict:
        return {"hue": (torch.rand(()).item() * 2.0 - 1.0) * RANGES["hue"]}

    def transform(self, inpt, params: dict):
        return tv_tensors.wrap(jitter_colours(inpt.as_subclass(torch.Tensor), hue=params["hue"]), like=inpt)


def transforms() -> dict[str, v2.Transform]:
    three = {key: RANGES[key] for key in ("brightness", "contrast", "saturation")}
    return {
        "detlab RandomColourJitter (one matrix)": RandomColourJitter(**RANGES),
        "torchvision ColorJitter (HSV hue)": v2.ColorJitter(**RANGES),
        "torchvision ColorJitter (3 steps) + YIQ hue": v2.Compose([v2.ColorJitter(**three), HueRotation()]),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Photometric jitter: milliseconds an image",
        "",
        *header_lines(report),
        f"Brightness, contrast and saturation by up to 30%, hue by up to 0.05 of a turn; float images in [0, 1], "
        f"one at a time, {report['torch_threads']} torch thread(s); {report['images']} images a transform a round, "
        f"the transforms in turn, the order rotating, the median of {report['rounds']} rounds.",
        "",
        "| image (H x W) | "
        + " | ".join(report["transforms"])
        + " | speed-up against torchvision's ColorJitter |",
        "|---" * (len(report["transforms"]) + 2) + "|",
    ]
    for row in report["rows"]:
        times = " | ".join(f"{row['ms'][name]:.3f}" for name in report["transforms"])
        lines.append(f"| {row['height']} x {row['width']} | {times} | {row['speedup_vs_torchvision']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["192x192", "416x312", "640x480"], help="HxW")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a loader prepares a sample on one)"
    )
    parser.add_argument("--results-name", default="transforms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    named = transforms()
    names = list(named)
    rows = []
    for size in args.sizes:
        height, width = (int(value) for value in size.lower().split("x"))
        images = [tv_tensors.Image(torch.rand(3, height, width)) for _ in range(args.images)]
        passes = {
            name: (lambda transform=transform, images=images: [transform(image) for image in images])
            for name, transform in named.items()
        }
        timed = interleaved_ms(passes, 1, args.rounds)  # milliseconds a pass over the images
        medians = {name: row["ms"] / len(images) for name, row in timed.items()}
        speedup = medians[names[1]] / medians[names[0]]
        rows.append(
            {
                "height": height,
                "width": width,
                "ms": {k: round(v, 4) for k, v in medians.items()},
                "ms_rounds": {
                    k: [round(v / len(images), 4) for v in row["ms_rounds"]] for k, row in timed.items()
                },
                "speedup_vs_torchvision": round(speedup, 2),
            }
        )
        print(f"{height} x {width}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items()), flush=True)
    report = {
        **stamp(),
        "torch_threads": args.threads,
        "images": args.images,
        "rounds": args.rounds,
        "ranges": RANGES,
        "transforms": names,
        "rows": rows,
        "geometric_mean_speedup": round(
            math.prod(r["speedup_vs_torchvision"] for r in rows) ** (1 / len(rows)), 2
        ),
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
