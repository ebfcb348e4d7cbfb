"""``detlab compare``: argument parsing over :func:`detlab.comparison.compare`."""

from __future__ import annotations

from detlab.comparison import compare, compared_methods, markdown
from detlab.models import MODELS


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several methods with one budget and compare test time and mAP side by side",
        description="Train each method on the same data and budget (resumable), then score and time each on the "
        "same test split; writes compare.json, compare.md and two figures into --out.",
    )
    parser.add_argument(
        "--data", default="synthetic", help="a data spec (synthetic, voc:DIR, coco:FILE, yolo:DIR)"
    )
    parser.add_argument(
        "--methods", default=",".join(compared_methods()), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of training a method (300)")
    parser.add_argument("--out", default="runs/compare", help="the comparison's folder (runs/compare)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for training and timing (0: all cores)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default) | cpu | cuda: where the models are timed"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every method, e.g. data.train_split=trainval, or for one method: "
        "METHOD:KEY=VALUE, e.g. rcnn:model.window_size=227 (repeat the flag)",
    )
    parser.set_defaults(handler=run_compare)


def run_compare(args) -> int:
    report = compare(args.data, args.methods, args.budget, args.out, args.set, args.threads, args.device)
    print(markdown(report))
    return 0 if all(row["status"] == "done" for row in report["rows"]) else 1
