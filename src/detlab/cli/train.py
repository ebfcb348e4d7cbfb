"""``detlab train`` and ``detlab predict``: argument parsing over :mod:`detlab.api`.

``detlab train MODEL [options]`` takes the options :data:`detlab.api.SHARED_OPTIONS` lists and
the method's own, made from its config fields (``detlab train MODEL --help`` lists them with the
defaults the method runs with), so the command line and ``detlab.train(...)`` cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def add_commands(subparsers) -> None:
    from detlab.cli.eval import add_on_bad_option, add_test_time_options
    from detlab.cli.inputs import add_tiling_options

    train = subparsers.add_parser(
        "train",
        help="train any method (detlab train MODEL --help lists its options)",
        description="Train a method; torchrun --nproc_per_node N -m detlab train ... runs it data-parallel.",
        add_help=False,
        prefix_chars="+",  # every argument goes to the method's own parser (run_train)
    )
    train.add_argument("argv", nargs=argparse.REMAINDER)
    train.set_defaults(handler=run_train)

    predict = subparsers.add_parser("predict", help="run a trained model on an image or a folder of images")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="RUN/best, RUN/last, a .pt file or a run folder")
    source.add_argument("--model", help="an ONNX file from `detlab export` (run with onnxruntime, no torch)")
    predict.add_argument(
        "--input",
        required=True,
        help="an image file, a folder of images, a video file, a camera number (0) or a stream URL (rtsp://...)",
    )
    predict.add_argument("--out", required=True, help="folder for annotated images and detections.json")
    predict.add_argument(
        "--score-threshold",
        type=score_threshold_argument,
        default=None,
        help="draw boxes scoring at least this (default 0.5); auto: the score with the best F1 on the "
        "run's validation images, recorded with the checkpoint",
    )
    predict.add_argument("--device", default="auto", help="auto (default) | cpu | cuda")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images a forward pass (default: the run's training batch on a GPU, 1 on a CPU)",
    )
    predict.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="model.FIELD=VALUE",
        help="test-time setting of the model, e.g. model.score_threshold=0.3",
    )
    add_test_time_options(predict)
    add_on_bad_option(predict)
    add_tiling_options(predict)
    predict.set_defaults(handler=run_predict)


def score_threshold_argument(text: str) -> float | str:
    """``--score-threshold``: a finite number or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"a finite number or auto, not {text!r}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument_type(annotation) -> dict:
    """argparse keywords for a config field's type (booleans get ``--x/--no-x``, tuples ``nargs``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (tuple, list):
        item = (typing.get_args(annotation) or (str,))[0]
        return {"nargs": "+", "type": item, "metavar": item.__name__.upper()}
    return {"type": annotation, "metavar": annotation.__name__.upper()}


def build_train_parser(model: str | None) -> argparse.ArgumentParser:
    """The parser of ``detlab train [MODEL]``: shared options, plus ``MODEL``'s own."""
    from detlab import config as config_io
    from detlab.api import SHARED_OPTIONS, model_options
    from detlab.engine.run import default_run_config
    from detlab.models import MODELS

    parser = argparse.ArgumentParser(
        prog="detlab train",
        description="Train a method on a data set; every option is also a config key (--set section.field=value).",
        epilog=None
        if model
        else f"methods: {', '.join(MODELS)}; `detlab train MODEL --help` lists a method's options",
    )
    parser.add_argument(
        "model",
        nargs="?",
        choices=list(MODELS),
        metavar="MODEL",
        help=f"{' | '.join(MODELS)} (default faster_rcnn, or the resumed run's)",
    )
    parser.add_argument("--preset", help="a bundled preset name or a YAML file (sections data, train, model)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. train.lr=0.02 or model.fpn=false",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped"
    )
    defaults = config_io.to_dict(default_run_config(model)) if model else None
    for name, (key, kind, text) in SHARED_OPTIONS.items():
        section, field = key.split(".")
        shown = (
            f", default {defaults[section][field]}"
            if defaults and defaults[section][field] not in ("", 0, 0.0)
            else ""
        )
        parser.add_argument(_flag(name), dest=name, type=kind, help=f"{text} ({key}{shown})")
    if model is not None:
        group = parser.add_argument_group(f"{model} options (model section)")
        for name, (annotation, default, choices) in model_options(model).items():
            shown = list(default) if isinstance(default, tuple) else default
            keywords = _argument_type(annotation) | ({"choices": choices, "metavar": None} if choices else {})
            group.add_argument(_flag(name), dest=name, help=f"model.{name} (default {shown})", **keywords)
    return parser


def _model_of(argv: list[str]) -> str | None:
    """The method a ``detlab train`` command line trains: its first word, or the resumed run's."""
    if argv and not argv[0].startswith("-"):
        return argv[0]
    if "--resume" in argv[:-1]:
        from detlab.engine.run import run_config_for_resume

        folder = argv[argv.index("--resume") + 1]
        if Path(folder).is_dir():
            return run_config_for_resume(folder).model_name
    return None


def run_train(args: argparse.Namespace) -> int:
    from detlab import api
    from detlab.models import MODELS

    model = _model_of(args.argv)
    if model is not None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; trainable models: {', '.join(MODELS)}")
    from detlab.engine.distributed import shutdown_distributed

    options = vars(build_train_parser(model).parse_args(args.argv))
    try:
        result = api.train(
            options.pop("model"),
            preset=options.pop("preset"),
            set=options.pop("set"),
            resume=options.pop("resume"),
            **options,
        )
    finally:
        shutdown_distributed()
    return report_training(result)


def report_training(result) -> int:
    """Print what a training run did and where it is; the exit code."""
    if result.last_checkpoint is None:  # not rank 0 of a distributed run: rank 0 reports
        return EXIT_CODES.get(result.signal_name or "", 0)
    state = result.state
    if result.status == "already_finished":
        print(
            f"{result.run_dir} is finished ({state.step} steps, {state.epoch} epochs, {state.elapsed_s:.0f} s); "
            "nothing trained. To train it further, resume with a larger --epochs, --max-steps or --time-budget."
        )
        return 0
    print(
        f"{result.status}: {state.step} steps, {state.epoch} epochs, {state.elapsed_s:.0f} s of training in {result.run_dir}"
    )
    if result.metrics:
        print("last evaluation: " + json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    print(
        f"checkpoints: last {result.last_checkpoint}"
        + (f", best {result.best_checkpoint}" if result.best_checkpoint else "")
    )
    if result.status in ("interrupted", "paused"):
        print(f"resume with: detlab train --resume {result.run_dir}", file=sys.stderr)
        return EXIT_CODES.get(result.signal_name or "", 130)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from detlab import api
    from detlab.cli.inputs import run_predict_video
    from detlab.engine.predict import predict_files
    from detlab.eval.report import skipped_lines
    from detlab.video_files import is_video_source

    if args.model is not None and Path(args.model).suffix.lower() != ".onnx":
        raise ValueError(
            f"--model takes an .onnx file from `detlab export`, got {args.model}; use --checkpoint for runs"
        )
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    predictor = api.load(
        args.checkpoint or args.model,
        device=args.device,
        set=args.set,
        ensemble=args.ensemble,
        test_scales=args.test_scales,
        tile=args.tile,
        overlap=args.overlap,
        tile_full_image=args.tile_full_image,
        tile_merge=args.tile_merge,
    )
    if is_video_source(args.input):
        return run_predict_video(predictor, args)
    threshold = {} if args.score_threshold is None else {"draw_threshold": args.score_threshold}
    summary = predict_files(
        predictor, args.input, args.out, batch_size=args.batch_size, on_bad=args.on_bad, **threshold
    )
    print(
        f"{summary['detections']} detections in {summary['images']} images (drawn from score "
        f"{summary['draw_threshold']:.3g}); annotated images, detections.json (COCO results) and "
        f"images.json in {summary['out_dir']}"
    )
    for line in skipped_lines(summary):  # every one: the output folder holds no other list of them
        print(line)
    return 0
