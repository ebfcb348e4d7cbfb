"""``detlab demo`` (what ``make demo`` runs): the main job on the built-in synthetic data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from detlab.data.loading import load_dataset
from detlab.data.stats import dataset_stats, format_stats
from detlab.visualize import show_dataset


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "synthetic"
    dataset = load_dataset("synthetic", root=data_root, num_synthetic=args.images)
    stats_text = format_stats(dataset_stats(dataset))
    print(stats_text)
    (out / "stats.md").write_text(stats_text + "\n")
    grid = show_dataset(load_dataset(f"voc:{data_root}", "train"), out / "samples.png", num=8)
    print(f"\nsynthetic data set in {data_root}; annotated samples in {grid}")
    return 0


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="the main job on the built-in synthetic data set")
    demo.add_argument("--out", default="demo", help="output folder (default: demo)")
    demo.add_argument("--images", type=int, default=600, help="synthetic images to generate (default 600)")
    demo.set_defaults(handler=run_demo)
