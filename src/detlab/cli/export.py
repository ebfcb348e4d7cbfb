"""``detlab export``: a checkpoint -> an ONNX file (:mod:`detlab.export.onnx_export`)."""

from __future__ import annotations

import argparse

FORMATS = ("onnx",)


def add_commands(subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="write a trained model as ONNX for onnxruntime (faster_rcnn, yolo, yolov1, localizer)"
    )
    export.add_argument("--checkpoint", required=True, help="RUN/best, RUN/last, a .pt file or a run folder")
    export.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (the only one)")
    export.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    export.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="model.FIELD=VALUE",
        help="test-time settings to store in the file (e.g. model.score_threshold=0.3)",
    )
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from detlab.export.onnx_export import export_onnx

    metadata = export_onnx(args.checkpoint, args.out, args.set)
    print(
        f"{metadata['method']} -> {args.out} ({len(metadata['classes'])} classes; inputs "
        f"{', '.join(metadata['inputs'])}; outputs {', '.join(metadata['outputs'])}); run it with "
        f"`detlab predict --model {args.out} --input IMAGES --out DIR` or detlab.load({args.out!r})"
    )
    return 0
