"""``detlab eval``: score a COCO-style results file, or a trained model, against VOC or COCO ground truth.

The work is done by :func:`detlab.eval.evaluate.evaluate_detections`; this file only parses
arguments, prints the table and writes the report.
"""

from __future__ import annotations

import argparse
import warnings

from detlab.cli.inputs import add_tiling_options
from detlab.data.errors import ON_BAD_CHOICES
from detlab.eval.coco import CocoResult
from detlab.eval.error_report import (
    build_error_report,
    format_error_console,
    study_errors,
    write_error_report,
)
from detlab.eval.evaluate import PROTOCOLS, evaluate_detections
from detlab.eval.report import format_console_table, write_report
from detlab.eval.voc import VocResult


def run_eval(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.checkpoint:  # predict over the data set first (detlab.engine), then score
            from detlab.cli.inputs import tiling_from_args
            from detlab.engine.predict import evaluate_checkpoint

            report, result = evaluate_checkpoint(
                args.checkpoint,
                args.gt,
                args.split,
                overrides=args.set,
                ensemble=args.ensemble,
                test_scales=args.test_scales,
                tiling=tiling_from_args(args),
                protocol=args.protocol,
                iou_threshold=args.iou,
                max_detections=args.max_dets,
                max_images=args.max_images,
                data_root=args.data_root,
                on_bad=args.on_bad,
            )
        elif args.pred:
            report, result = evaluate_detections(
                args.gt,
                args.pred,
                protocol=args.protocol,
                iou_threshold=args.iou,
                max_detections=args.max_dets,
                split=args.split or "test",
            )
        else:
            raise ValueError(
                "give --pred RESULTS.json, or --checkpoint RUN/best to predict with a trained model"
            )
    for warning in caught:
        print(f"warning: {warning.message}")
    print(format_console_table(report))
    if args.out:
        written = write_report(report, args.out, plots=not args.no_plots)
        print(
            f"wrote {written['json']}, {written['markdown']}"
            + ("" if args.no_plots else f" and {len(written) - 2} PR curves")
        )
    if args.errors:
        if not isinstance(result, CocoResult | VocResult):
            raise ValueError("--errors analyses a detector's boxes; this model is scored by its own metric")
        report_errors(result.problem, args)
    return 0


def report_errors(problem, args: argparse.Namespace) -> None:
    """``--errors``: TIDE's error breakdown of what was just scored, printed, and with ``--out`` its
    report (errors.md, errors.json, figures and, when the ground truth is a data set, galleries)."""
    settings = {
        "foreground_iou": args.foreground_iou,
        "background_iou": args.background_iou,
        "max_detections": args.max_dets,
    }
    if args.out:
        report = write_error_report(problem, args.out, image_paths=problem.image_paths or None, **settings)
    else:
        report = build_error_report(problem, *study_errors(problem, **settings))
    print(format_error_console(report))
    if args.out:
        galleries = sum(1 for name in report["files"] if name.startswith("gallery_"))
        print(
            f"wrote {report['files']['errors_md']}, errors.json, errors.png, confusion_matrix.png, "
            f"f1_confidence.png and {galleries} galleries"
        )


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate detections (COCO results JSON) against VOC or COCO ground truth",
        description=(
            "Score detections in the COCO results format ([{image_id, category_id, bbox: [x, y, w, h], score}]) "
            "against a VOC folder, a data set spec (voc:DIR, yolo:DIR) or a COCO ground-truth JSON. For data set "
            "ground truth, a string image_id is the record's id (the VOC file stem); an integer is the id that "
            "detlab.data.write_coco assigns (1..N in split order)."
        ),
    )
    parser.add_argument(
        "--gt",
        "--data",
        dest="gt",
        required=True,
        help="VOC folder, data set spec, or COCO ground-truth .json",
    )
    parser.add_argument("--pred", help="COCO results .json (a list of detections)")
    parser.add_argument(
        "--checkpoint",
        help="instead of --pred: a trained model of any method (RUN/best, RUN/last, .pt) to predict with; "
        "the localizer is scored by ILSVRC localization error, DeepPose by PCK",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="model.FIELD=VALUE",
        help="with --checkpoint: a test-time setting, e.g. model.scales=[1,2]",
    )
    parser.add_argument(
        "--max-images", type=int, default=0, help="with --checkpoint: the first N images (0: all)"
    )
    add_test_time_options(parser)
    add_on_bad_option(parser)
    add_tiling_options(parser)
    parser.add_argument("--data-root", help="where a synthetic set is (default: the run's own)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="coco",
        help="coco (default), voc07 (11-point) or voc (all-point)",
    )
    parser.add_argument(
        "--iou", type=float, default=0.5, help="IoU threshold for the VOC protocols (default 0.5)"
    )
    parser.add_argument(
        "--max-dets", type=int, default=100, help="COCO per-image detection limit (default 100)"
    )
    parser.add_argument(
        "--split",
        help="split of a VOC/YOLO data set (default: with --checkpoint the run's data.test_split, else test)",
    )
    parser.add_argument("--out", help="folder for report.json, report.md and pr_curves/*.png")
    parser.add_argument("--no-plots", action="store_true", help="skip the PR-curve PNGs")
    parser.add_argument(
        "--errors",
        action="store_true",
        help="TIDE's error breakdown (the AP gained by fixing each kind of mistake), a confusion matrix, "
        "the best-F1 confidence; with --out also errors.md/json, figures and galleries of the worst mistakes",
    )
    parser.add_argument(
        "--foreground-iou", type=float, default=0.5, help="--errors: IoU of a correct box (0.5)"
    )
    parser.add_argument(
        "--background-iou",
        type=float,
        default=0.1,
        help="--errors: below this IoU a false positive is on background (0.1)",
    )
    parser.set_defaults(handler=run_eval)


def add_test_time_options(parser: argparse.ArgumentParser) -> None:
    """``--ensemble`` and ``--test-scales`` (``detlab eval --checkpoint`` and ``detlab predict``)."""
    parser.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="CHECKPOINT",
        help="more checkpoints of the same classes whose detections are merged with --checkpoint's",
    )
    parser.add_argument(
        "--test-scales",
        nargs="+",
        type=float,
        default=[],
        metavar="FACTOR",
        help="multi-scale testing: run at these input size factors (e.g. 0.8 1 1.2), merge the detections",
    )


def add_on_bad_option(parser: argparse.ArgumentParser) -> None:
    """``--on-bad`` (``detlab eval --checkpoint`` and ``detlab predict``): training's ``data.on_bad``."""
    parser.add_argument(
        "--on-bad",
        choices=ON_BAD_CHOICES,
        default="error",
        help="an unreadable image or annotation: stop naming every one (error, the default), or leave it "
        "out and list it in the summary and report (skip); training's data.on_bad",
    )
