"""``detlab train`` and ``detlab predict``: argument parsing over :mod:`detlab.api`."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def add_commands(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a detector (fast_rcnn, faster_rcnn, localizer, keypoints)",
        description="Train a detector; torchrun --nproc_per_node N -m detlab train ... runs it data-parallel.",
    )
    train.add_argument(
        "model_positional", nargs="?", metavar="MODEL", help="fast_rcnn | faster_rcnn | localizer | keypoints"
    )
    train.add_argument("--model", help="the same as MODEL (default faster_rcnn, or the resumed run's model)")
    train.add_argument("--data", help="synthetic | synthetic-single | voc:DIR | coco:FILE | yolo:DIR")
    train.add_argument("--data-root", help="where the synthetic set is generated (default data/synthetic)")
    train.add_argument("--preset", dest="config", metavar="NAME", help="bundled preset name or YAML file")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=0.02"
    )
    train.add_argument("--epochs", type=int)
    train.add_argument(
        "--max-steps", type=int, help="stop after this many optimiser steps (replaces --epochs)"
    )
    train.add_argument(
        "--time-budget", type=float, metavar="SECONDS", help="train for this long (replaces --epochs)"
    )
    train.add_argument("--batch-size", type=int, help="images per step and process")
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    train.add_argument("--out", dest="out_dir", metavar="RUN_DIR", help="run folder (default runs/MODEL[-N])")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped"
    )
    try:
        from detlab.models import localizer_training
    except ImportError:
        localizer_training = None
    if localizer_training is not None:
        localizer_training.add_arguments(train)
    train.set_defaults(handler=run_train)

    predict = subparsers.add_parser(
        "predict", help="detect objects in an image or a folder with a checkpoint"
    )
    predict.add_argument("--checkpoint", required=True, help="RUN/best, RUN/last, a .pt file or a run folder")
    predict.add_argument("--input", required=True, help="an image file or a folder of images")
    predict.add_argument("--out", required=True, help="folder for annotated images and detections.json")
    predict.add_argument(
        "--score-threshold", type=float, default=0.5, help="draw boxes scoring at least this (0.5)"
    )
    predict.add_argument("--device", default="auto", help="auto (default) | cpu | cuda")
    predict.set_defaults(handler=run_predict)


LOCALIZER_FLAGS = (
    "recipe", "regression", "attach", "box_loss", "backbone", "window_size", "pretrained", "backbone_weights",
    "synthetic_images", "stages",
)  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from detlab import api

    model = args.model or args.model_positional
    if args.model and args.model_positional and args.model != args.model_positional:
        raise ValueError(f"two models named: {args.model_positional} and --model {args.model}")
    localizer_options = {
        name: getattr(args, name) for name in LOCALIZER_FLAGS if getattr(args, name, None) is not None
    }
    if model == "faster_rcnn" and "recipe" in localizer_options:  # joint or the paper's 4-step training
        args.set = [*(args.set or []), f"model.recipe={localizer_options.pop('recipe')}"]
    if localizer_options and model not in api.LOCALIZER_MODELS:
        flags = ", ".join("--" + name.replace("_", "-") for name in localizer_options)
        raise ValueError(f"{flags}: only for detlab train localizer|keypoints; use --set model.NAME=VALUE")
    result = api.train(
        model,
        data=args.data,
        data_root=args.data_root,
        preset=args.config,
        set=args.set,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out=args.out_dir,
        resume=args.resume,
        **localizer_options,
    )
    if isinstance(result, int):
        return result
    if result.last_checkpoint is None:  # not rank 0 of a distributed run: rank 0 reports
        return EXIT_CODES.get(result.signal_name or "", 0)
    state = result.state
    print(
        f"{result.status}: {state.step} steps, {state.epoch} epochs, {state.elapsed_s:.0f} s of training in {result.run_dir}"
    )
    if result.metrics:
        print("last evaluation: " + json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    print(
        f"checkpoints: last {result.last_checkpoint}"
        + (f", best {result.best_checkpoint}" if result.best_checkpoint else "")
    )
    if result.status == "interrupted":
        print(f"resume with: detlab train --resume {result.run_dir}", file=sys.stderr)
        return EXIT_CODES.get(result.signal_name or "", 130)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from detlab import api
    from detlab.engine.predict import predict_files

    predictor = api.load(args.checkpoint, device=args.device)
    summary = predict_files(predictor, args.input, args.out, draw_threshold=args.score_threshold)
    print(
        f"{summary['detections']} detections in {summary['images']} images; annotated images, "
        f"detections.json (COCO results) and images.json in {summary['out_dir']}"
    )
    return 0
