"""Benchmark: the two parts of OverFeat's training step that changed in the sixth session.

1. Cutting a step's training windows out of an image: detlab's ``cut_windows`` (one
   ``grid_sample`` and an average pool) against torchvision's ``roi_align`` with the same sampling
   (``aligned``, 2 x 2 samples a bin), the operation a user would pick and detlab's before; the
   largest difference between the two crops is reported too. At one torch thread (a data loader
   worker's) and at the training process's thread count: ``grid_sample`` runs on several threads,
   torchvision's CPU ``roi_align`` on one.
2. A training step of the localizer alone on the windows (forward, both losses, backward, AdamW;
   no data loading or window cutting) for each ``model.strided_blocks`` (0: every block of the small net ends in a max-pool; N: the
   first N downsample with a stride-2 convolution instead).

Windows are drawn as training draws them (``sample_windows`` on a 256 x 256 image with two
objects); each variant in turn, the order rotating each round, the median of ``--rounds`` rounds
reported in milliseconds.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_overfeat_step.py
Writes benchmarks/results/overfeat_step.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header_lines, interleaved_ms, stamp, write_results  # noqa: E402

from detlab.models.overfeat import OverFeatConfig, build_overfeat, cut_windows, sample_windows  # noqa: E402

NUM_CLASSES = 4


def torchvision_cut(image: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    rois = torch.cat([torch.zeros(len(windows), 1), windows], dim=1)
    return roi_align(image[None], rois, size, 1.0, sampling_ratio=2, aligned=True)


def training_step(strided_blocks: int, windows: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor):
    torch.manual_seed(0)
    localizer = build_overfeat(OverFeatConfig(strided_blocks=strided_blocks), NUM_CLASSES).localizer.train()
    optimizer = torch.optim.AdamW(localizer.parameters(), 1e-3)

    def step() -> None:
        losses = localizer.losses(localizer.predict(windows), labels, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def markdown(report: dict) -> str:
    cut, step = report["cut"], report["step"]
    lines = [
        "# OverFeat's training step: cutting the windows, and the network",
        "",
        *header_lines(report),
        f"{report['torch_threads']} torch thread(s); windows drawn as training draws them from a 256 x 256 image; "
        f"medians of {report['rounds']} rounds, the variants in turn, the order rotating.",
        "",
        f"## Cutting {report['windows_per_image']} windows of an image to {report['window']} pixels",
        "",
        f"Largest difference between the two crops: {report['max_abs_difference']:.1e}.",
        "",
        "| torch threads | detlab `cut_windows` (grid_sample) | torchvision `roi_align` | speed-up |",
        "|---|---|---|---|",
        *(
            f"| {threads} | {row['detlab']['ms']:.3f} ms | {row['torchvision']['ms']:.3f} ms | {row['speedup']:.2f}x |"
            for threads, row in cut.items()
        ),
        "",
        f"## The network's training step on {report['step_windows']} windows at {report['torch_threads']} threads "
        "(forward, losses, backward, AdamW; no data loading or window cutting)",
        "",
        "| `model.strided_blocks` | ms a step | network steps against 0 |",
        "|---|---|---|",
    ]
    for name, row in step.items():
        lines.append(f"| {name} | {row['ms']:.1f} | {row['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows-per-image", type=int, default=16, help="OverFeat's default")
    parser.add_argument("--images", type=int, default=4, help="images a step (OverFeat's batch size)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the training step (the machine's)"
    )
    parser.add_argument(
        "--cut-threads", type=int, nargs="+", default=[1, 2], help="torch threads for cutting"
    )
    parser.add_argument("--results-name", default="overfeat_step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = OverFeatConfig()
    window = config.window_size
    image = torch.rand(3, 256, 256)
    boxes, labels = (
        torch.tensor([[30.0, 40.0, 90.0, 100.0], [150.0, 20.0, 170.0, 50.0]]),
        torch.tensor([1, 2]),
    )
    sides = (window / max(config.scales), window / min(config.scales))
    draws = [
        sample_windows(
            (256, 256),
            boxes,
            labels,
            args.windows_per_image,
            (config.min_fill, config.max_fill),
            config.positive_fraction,
            sides,
        )
        for _ in range(args.images)
    ]
    windows = draws[0][0]
    difference = float(
        (cut_windows(image, windows, window) - torchvision_cut(image, windows, window)).abs().max()
    )
    cut = {}
    for threads in args.cut_threads:
        torch.set_num_threads(threads)
        row = interleaved_ms(
            {
                "detlab": lambda: cut_windows(image, windows, window),
                "torchvision": lambda: torchvision_cut(image, windows, window),
            },
            20,
            args.rounds,
        )
        row["speedup"] = round(row["torchvision"]["ms"] / row["detlab"]["ms"], 2)
        cut[str(threads)] = row
        print(
            f"cut, {threads} thread(s): {row['detlab']['ms']:.3f} ms against {row['torchvision']['ms']:.3f} ms",
            flush=True,
        )
    torch.set_num_threads(args.threads)
    crops = torch.cat([cut_windows(image, draw[0], window) for draw in draws])
    window_labels, targets = torch.cat([draw[1] for draw in draws]), torch.cat([draw[2] for draw in draws])
    steps = {str(n): training_step(n, crops, window_labels, targets) for n in range(4)}
    step = interleaved_ms(steps, 5, args.rounds)
    for row in step.values():
        row["speedup"] = round(step["0"]["ms"] / row["ms"], 2)
    print(", ".join(f"strided_blocks {k}: {v['ms']:.1f} ms" for k, v in step.items()), flush=True)
    report = {
        **stamp(),
        "torch_threads": args.threads,
        "rounds": args.rounds,
        "window": window,
        "windows_per_image": args.windows_per_image,
        "step_windows": len(crops),
        "max_abs_difference": difference,
        "cut": cut,
        "step": step,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
