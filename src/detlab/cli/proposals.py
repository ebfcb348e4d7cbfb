"""``detlab proposals``: draw one image's proposals, or evaluate methods on a data set.

    detlab proposals IMAGE --method ss-fast --top 200 --out boxes.png
    detlab proposals eval --data DIR --split test --methods ss-fast,ss-quality,sliding,uniform --top 2000
    detlab proposals eval --data DIR --split trainval --methods ss-fast --cache runs/proposals --workers 2

Both forms share one sub-parser: the positional argument is either an image path or the word
``eval`` (an image file literally called ``eval`` can be given as ``./eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detlab.eval.proposals import DEFAULT_NUM_PROPOSALS
from detlab.machine import usable_cpus
from detlab.proposals import METHODS, ProposalCache, build_method

USAGE = """detlab proposals IMAGE [--method NAME] [--top N] [--out FILE.png]
       detlab proposals eval --data DATA [--split SPLIT] [--methods A,B,...] [--top N] [--out-dir DIR]
                             [--cache DIR] [--workers N]"""

EVAL_ONLY = ("data", "methods", "limit", "out_dir", "cache", "workers")
IMAGE_ONLY = ("method", "out")


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "proposals",
        usage=USAGE,
        help="region proposals: draw them on an image, or evaluate methods on a data set",
        description=(
            "Draw the top proposals of one image, or (with 'eval') print recall@{100,500,1000,2000} at IoU "
            "0.5 and 0.7, AR, MABO and seconds an image for several methods on a data set and save "
            f"recall plots. Methods: {', '.join(METHODS)}."
        ),
    )
    parser.add_argument(
        "target", metavar="IMAGE|eval", help="an image file, or 'eval' to evaluate on a data set"
    )
    parser.add_argument(
        "--top", type=int, default=None, help="keep this many proposals (default 200 to draw, 2000 to eval)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--min-size", type=float, default=4.0, help="drop boxes smaller than this, pixels (default 4)"
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=2048,
        help="shrink larger images to this side first (default 2048; 0: never)",
    )
    drawing = parser.add_argument_group("drawing one image")
    drawing.add_argument("--method", default=None, choices=list(METHODS), help="default ss-fast")
    drawing.add_argument("--out", default=None, help="PNG/JPEG to draw the boxes on; without it, print them")
    evaluation = parser.add_argument_group("eval")
    evaluation.add_argument(
        "--data", default=None, help="VOC/YOLO folder, COCO .json, voc:DIR, ... or synthetic"
    )
    evaluation.add_argument("--split", default="test", help="split to evaluate (default test)")
    evaluation.add_argument(
        "--methods", default=None, help="comma-separated (default ss-fast,sliding,uniform)"
    )
    evaluation.add_argument("--limit", type=int, default=None, help="first N images only")
    evaluation.add_argument(
        "--out-dir", default=None, help="where plots and JSON go (default runs/proposals/<data>)"
    )
    evaluation.add_argument(
        "--cache", default=None, help="keep proposals under this folder (one per method) and reuse them"
    )
    evaluation.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes computing proposals, one thread each (default: one a usable core)",
    )
    parser.set_defaults(handler=run_proposals, parser=parser)


def _method_options(args: argparse.Namespace, default_top: int) -> dict:
    top = default_top if args.top is None else args.top
    if top < 1:
        raise ValueError(f"--top must be a positive number, got {top}")
    return {
        "max_proposals": top,
        "min_size": args.min_size,
        "seed": args.seed,
        "max_side": args.max_side or None,
    }


def run_proposals(args: argparse.Namespace) -> int:
    evaluating = args.target == "eval"
    misplaced = [
        name for name in (IMAGE_ONLY if evaluating else EVAL_ONLY) if getattr(args, name) is not None
    ]
    if misplaced:
        options = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        raise ValueError(
            f"{options} cannot be used {'with eval' if evaluating else 'when drawing an image'}; usage:\n{USAGE}"
        )
    return run_eval(args) if evaluating else run_draw(args)


def run_draw(args: argparse.Namespace) -> int:
    from torchvision.utils import draw_bounding_boxes

    from detlab.data.images import load_image, save_image

    image = load_image(args.target)
    method_name = args.method or "ss-fast"
    boxes = build_method(method_name, **_method_options(args, 200)).propose(image)
    if args.out is None:
        for box in boxes.tolist():
            print(" ".join(f"{value:.1f}" for value in box))
        return 0
    width = max(1, round(max(image.shape[1:]) / 400))
    drawn = draw_bounding_boxes((image * 255).round().byte(), boxes, colors="yellow", width=width)
    save_image(drawn, args.out)
    print(f"{len(boxes)} {method_name} proposals drawn on {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from detlab.data.loading import load_dataset
    from detlab.proposals.evaluate import evaluate_method, save_plots, summary_header, summary_row

    if args.data is None:
        raise ValueError(f"eval needs --data; usage:\n{USAGE}")
    names = [name.strip() for name in (args.methods or "ss-fast,sliding,uniform").split(",") if name.strip()]
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown proposal method {name!r}; choose from {', '.join(METHODS)}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or usable_cpus()
    options = _method_options(args, 2000)
    top = options["max_proposals"]
    num_proposals = sorted({n for n in DEFAULT_NUM_PROPOSALS if n < top} | {top})
    dataset = load_dataset(args.data, args.split)
    data_name = Path(str(args.data).split(":")[-1]).name or "data"
    out_dir = Path(args.out_dir or Path("runs") / "proposals" / f"{data_name}-{args.split}")
    results = {}
    for name in names:
        method = build_method(name, **options)
        # A cache makes an interrupted eval resume; its cached images are then timed as reads.
        cache = (
            ProposalCache(Path(args.cache) / f"{data_name}-{args.split}" / name, method)
            if args.cache
            else None
        )
        print(f"{name} on {dataset.name or data_name}, {workers} worker(s) ...", file=sys.stderr, flush=True)
        results[name] = evaluate_method(
            method, dataset, num_proposals=num_proposals, limit=args.limit, cache=cache, workers=workers
        )
        print(f"  {results[name]['wall_seconds']:.1f} s in all", file=sys.stderr, flush=True)
    header = summary_header(num_proposals)
    rows = [summary_row(name, result, num_proposals) for name, result in results.items()]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    plots = save_plots(results, out_dir)
    (out_dir / "proposals.json").write_text(json.dumps(results, indent=1))
    print(f"plots and JSON in {out_dir}: {', '.join(path.name for path in plots)}, proposals.json")
    return 0
