"""``detlab demo`` (what ``make demo`` runs): argument parsing over :mod:`detlab.demo`."""

from __future__ import annotations

import argparse

from detlab.demo import default_processes, run_demo


def demo_command(args: argparse.Namespace) -> int:
    run_demo(args.out, args.images, args.train_seconds, args.processes)
    return 0


def processes_argument(text: str) -> int:
    """``--processes``: ``auto`` (:func:`default_processes`) or a whole number >= 1."""
    if text == "auto":
        return default_processes()
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 1, got {text!r}")
    return int(text)


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="the main job on the built-in synthetic data set")
    demo.add_argument("--out", default="demo", help="output folder (default: demo)")
    demo.add_argument("--images", type=int, default=2000, help="synthetic images to generate (default 2000)")
    demo.add_argument(
        "--train-seconds",
        type=float,
        default=300,
        help="Faster R-CNN training time (default 300; 0 skips training)",
    )
    demo.add_argument(
        "--processes",
        default="auto",
        type=processes_argument,
        help="data-parallel training processes (auto: 2 on a CPU with 2+ cores, else 1)",
    )
    demo.set_defaults(handler=demo_command)
