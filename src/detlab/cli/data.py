"""Sub-commands of the data layer: ``detlab data synth|stats|check``, ``detlab convert``, ``detlab show``."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from detlab.data.coco import write_coco
from detlab.data.errors import ON_BAD_CHOICES, BadInputWarning, ProblemLog
from detlab.data.loading import load_dataset, parse_spec
from detlab.data.stats import dataset_stats, format_stats
from detlab.data.synthetic import SMALL_IMAGE_SIZE, make_synthetic
from detlab.data.validation import BadImagesError, check_images
from detlab.data.voc import write_voc
from detlab.data.yolo import write_yolo


def _add_on_bad(parser: argparse.ArgumentParser) -> None:
    """The options every command that reads a data set takes: the bad-input policy, and whether
    paths in its files may lead outside its folder."""
    parser.add_argument(
        "--on-bad",
        choices=ON_BAD_CHOICES,
        default="error",
        help="bad input: stop with an error naming the file (default) or skip it with a warning",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read files its annotations name outside the data set's folder (refused by default)",
    )


def run_synth(args: argparse.Namespace) -> int:
    out = make_synthetic(
        args.out,
        num_images=args.images,
        seed=args.seed,
        single=args.single,
        image_size=args.size or (SMALL_IMAGE_SIZE if args.small else 256),
        progress=True,
        small=args.small,
    )
    dataset = load_dataset(f"voc:{out}")
    print(format_stats(dataset_stats(dataset)))
    print(f"\nwrote {len(dataset)} images to {out} (splits: train/val/test/trainval in ImageSets/Main)")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    problems = ProblemLog(args.on_bad)
    dataset = load_dataset(
        args.data,
        args.split,
        on_bad=args.on_bad,
        problems=problems,
        allow_outside_root=args.allow_outside_root,
    )
    stats = dataset_stats(dataset)
    print(format_stats(stats))
    if dataset.records and any(len(record.boxes) for record in dataset.records):
        from detlab.engine.run import resolve_run_config
        from detlab.models import MODELS
        from detlab.models.data_fit import detector_fit_summary, format_fit_summary

        defaults = resolve_run_config("faster_rcnn")
        stats["faster_rcnn_defaults"] = detector_fit_summary(
            dataset.records, defaults, MODELS["faster_rcnn"], max(1, len(dataset.classes))
        )
        print(format_fit_summary(stats["faster_rcnn_defaults"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Parse every annotation and decode every image (through the image check cache training
    uses); print every problem; exit 1 if anything had to be skipped, 0 if there were only
    documented repairs."""
    problems = ProblemLog("skip")
    with warnings.catch_warnings():
        # Every problem is printed below, once; the warnings would repeat them.
        warnings.simplefilter("ignore", BadInputWarning)
        dataset = load_dataset(args.data, args.split, problems=problems)
        try:
            _, report = check_images(dataset, on_bad="skip")
        except BadImagesError as error:  # not one image is readable
            report = error.report
    skipped = problems.skipped + [f"{path}: {problem}" for path, problem in report.bad]
    print(f"{dataset.name}: {report.summary()}; annotations: {problems.summary()}")
    for heading, items in (
        ("skipped", skipped),
        ("repaired", problems.fixed),
        ("size differs from the annotation", report.size_mismatches),
    ):
        if items:
            print(f"{heading} ({len(items)}):")
            for item in items:
                print(f"  {item}")
    return 1 if skipped else 0


def run_convert(args: argparse.Namespace) -> int:
    problems = ProblemLog(args.on_bad)
    dataset = load_dataset(
        args.source,
        args.split,
        on_bad=args.on_bad,
        problems=problems,
        allow_outside_root=args.allow_outside_root,
    )
    kind, location = parse_spec(args.target) if ":" in args.target else (args.to, args.target)
    if kind not in ("voc", "coco", "yolo"):
        raise ValueError(f"target {args.target!r}: say voc:DIR, coco:FILE.json or yolo:DIR (or use --to)")
    if args.tile:
        return convert_to_tiles(dataset, kind, location, args, problems)
    copy = not args.link
    if kind == "voc":
        write_voc(dataset, location, split=args.split or "all", copy_images=copy)
    elif kind == "yolo":
        write_yolo(dataset, location, split=args.split, copy_images=copy)
    else:
        json_path = Path(location)
        write_coco(dataset, json_path, image_dir=json_path.parent / "images", copy_images=copy)
    print(
        f"converted {dataset.name} ({len(dataset)} images, {sum(len(r.boxes) for r in dataset.records)} "
        f"objects) to {kind}:{location}; {problems.summary()}"
    )
    return 0


def convert_to_tiles(
    dataset, kind: str, location: str, args: argparse.Namespace, problems: ProblemLog
) -> int:
    """``detlab convert --tile``: the tiled copy (:func:`detlab.data.tiling.tile_dataset`), a VOC folder."""
    from detlab.data.tiling import MIN_SIDE, MIN_VISIBLE, tile_dataset
    from detlab.tiles import Tiling

    if kind != "voc":
        raise ValueError(
            f"--tile writes a VOC folder (voc:DIR), not {kind}; convert the tiled copy afterwards"
        )
    Tiling(args.tile, args.overlap)  # the same limits as tiled inference's
    summary = tile_dataset(dataset, location, args.tile, args.overlap, split=args.split or "all")
    print(
        f"tiled {dataset.name} ({summary['images']} images) into {summary['tiles']} tiles of {args.tile} px "
        f"(overlap {args.overlap:g}) in voc:{location}: {summary['boxes']} boxes, {summary['dropped']} slivers "
        f"dropped (under {MIN_VISIBLE:.0%} of a box's area, or {MIN_SIDE:g} px, in a tile); {problems.summary()}"
    )
    return 0


def audit_command(args: argparse.Namespace) -> int:
    """``detlab data audit``: duplicate images and leaks, box problems and, with ``--checkpoint``,
    the images' likely label mistakes (the model's detections held against the labels)."""
    from detlab.data.auditing import run_audit

    predictions, classes = None, None
    if args.checkpoint:
        from detlab.api import checkpoint_detections

        predictions, classes = checkpoint_detections(
            args.checkpoint, args.data, args.splits, args.on_bad, args.allow_outside_root
        )
    _, failed = run_audit(
        args.data,
        args.out,
        args.splits,
        args.fail_on,
        predictions,
        classes,
        on_bad=args.on_bad,
        allow_outside_root=args.allow_outside_root,
    )
    return 1 if failed else 0


def run_show(args: argparse.Namespace) -> int:
    from detlab.data.drawing import show_dataset

    dataset = load_dataset(
        args.data, args.split, on_bad=args.on_bad, allow_outside_root=args.allow_outside_root
    )
    path = show_dataset(dataset, args.out, num=args.num, seed=args.seed)
    print(f"wrote {path} ({min(args.num, len(dataset))} samples of {dataset.name})")
    return 0


def add_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="make, inspect and check data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = data_commands.add_parser("synth", help="write the built-in synthetic data set (VOC layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--images", type=int, default=600, help="number of images (default 600)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--size",
        type=int,
        default=0,
        help=f"image side in pixels (default 256; {SMALL_IMAGE_SIZE} with --small)",
    )
    synth.add_argument(
        "--single", action="store_true", help="one object an image (for classification + localization)"
    )
    synth.add_argument(
        "--small", action="store_true", help="many small shapes (8-32 px) on large images (tiled inference)"
    )
    synth.set_defaults(handler=run_synth)

    stats = data_commands.add_parser("stats", help="classes, images, objects, sizes of a data set")
    stats.add_argument("data", help="VOC/YOLO folder, COCO .json, voc:DIR, coco:FILE, yolo:DIR or synthetic")
    stats.add_argument("--split", default=None, help="a split (e.g. train, test); default: all images")
    stats.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    _add_on_bad(stats)
    stats.set_defaults(handler=run_stats)

    check = data_commands.add_parser("check", help="decode every image and annotation, list every problem")
    check.add_argument("data")
    check.add_argument("--split", default=None)
    check.set_defaults(handler=run_check)

    add_convert_command(subparsers)

    audit = data_commands.add_parser(
        "audit",
        help="find what is wrong with the data: duplicate images and leaks between splits, duplicate and "
        "outlier boxes, and (with --checkpoint) likely label mistakes",
    )
    audit.add_argument("data", help="VOC/YOLO folder, COCO .json, voc:DIR, coco:FILE, yolo:DIR or synthetic")
    audit.add_argument(
        "--out", default="audit", help="folder for audit.md, audit.json, suspects.csv and the contact sheets"
    )
    audit.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="the splits to audit (default: every split the data set has)",
    )
    audit.add_argument(
        "--checkpoint",
        default=None,
        help="a trained run: its detections on every image rank likely label mistakes",
    )
    audit.add_argument(
        "--fail-on",
        nargs="+",
        default=[],
        metavar="FINDING",
        help="exit with 1 when any of these is found: leaks, duplicates, boxes, suspects (for CI)",
    )
    _add_on_bad(audit)
    audit.set_defaults(handler=audit_command)

    show = subparsers.add_parser("show", help="draw annotated samples of a data set into one picture")
    show.add_argument("data")
    show.add_argument("--split", default=None)
    show.add_argument("--num", type=int, default=8)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--out", default="grid.png")
    _add_on_bad(show)
    show.set_defaults(handler=run_show)


def add_convert_command(subparsers) -> None:
    """``detlab convert`` (and its tiled copies)."""
    convert = subparsers.add_parser(
        "convert", help="convert between VOC, COCO and YOLO, or write a tiled copy (--tile)"
    )
    convert.add_argument(
        "source", help="voc:DIR, coco:FILE.json, yolo:DIR (or a path whose format is detected)"
    )
    convert.add_argument("target", help="voc:DIR, coco:FILE.json or yolo:DIR")
    convert.add_argument(
        "--to", choices=("voc", "coco", "yolo"), default=None, help="target format for a bare path"
    )
    convert.add_argument(
        "--split", default=None, help="convert only this split (and name it so in the output)"
    )
    convert.add_argument("--link", action="store_true", help="symlink images instead of copying them")
    convert.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="SIZE",
        help="write a tiled copy (VOC): every image cut into SIZE x SIZE tiles, boxes clipped, slivers dropped",
    )
    convert.add_argument(
        "--overlap",
        type=float,
        default=0.2,
        help="with --tile: the share of a tile's side neighbours share (0.2)",
    )
    _add_on_bad(convert)
    convert.set_defaults(handler=run_convert)
