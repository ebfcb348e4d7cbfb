"""``detlab serve``: argument parsing over :func:`detlab.serve.app.serve`.

The limit options are the fields of :class:`~detlab.serve.limits.Limits` (``--max-upload-bytes``
is ``Limits(max_upload_bytes=...)``), so the command line and ``create_app(..., limits)`` agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from detlab.serve.limits import Limits

LIMIT_HELP = {
    "max_upload_bytes": "largest image file accepted, in bytes (413 above)",
    "max_pixels": "most pixels an image may have, read from its header before decoding (413 above)",
    "max_aspect_ratio": "longest side over shortest side (400 above)",
    "time_limit_s": "seconds a request may take, waiting for a slot included (504 after)",
    "max_concurrent": "inferences at a time",
    "queue_size": "requests that may wait for a slot; beyond them the server answers 503",
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_commands(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve trained models: a page to try them on and a JSON API",
        description="Serve trained models over HTTP: the page at /, POST /api/detect, GET /api/models, GET /healthz.",
    )
    serve.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="RUN/best",
        help="a model to serve (RUN/best, RUN/last, a .pt file or a run folder); repeat for more. "
        "Clients choose a model by its run folder's name",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
    serve.add_argument("--device", default="auto", help="auto (default) | cpu | cuda")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's logging; info logs every request (default info)",
    )
    defaults = Limits()
    for field in dataclasses.fields(Limits):
        serve.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
            help=f"{LIMIT_HELP[field.name]} ({getattr(defaults, field.name)})",
        )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from detlab.serve.app import serve
    except ImportError as error:
        raise ValueError(
            f"detlab serve needs FastAPI and uvicorn ({error}); install them: pip install 'detlab[serve]'"
        ) from None
    limits = Limits(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Limits)})
    if args.host not in LOCAL_HOSTS:
        print(
            f"detlab serve: listening on {args.host}: other machines can reach it, and it has no authentication",
            file=sys.stderr,
        )
    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        limits=limits,
        device=args.device,
        log_level=args.log_level,
    )
    return 0
