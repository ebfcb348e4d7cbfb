"""``detlab serve``: argument parsing over :func:`detlab.serve.app.serve`.

The limit options are the fields of :class:`~detlab.serve.limits.Limits` (``--max-upload-bytes``
is ``Limits(max_upload_bytes=...)``) and the access options those of
:class:`~detlab.serve.access.Access` (``--token``, ``--allow-host``), so the command line and
``create_app(..., limits, access=...)`` agree. The token may come from ``$DETLAB_SERVE_TOKEN``
instead, which keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from detlab.serve.access import TOKEN_VARIABLE, is_loopback
from detlab.serve.limits import Limits, parse_bytes

LIMIT_HELP = {
    "max_upload_bytes": "largest image file accepted, in bytes (413 above)",
    "max_pixels": "most pixels an image may have, read from its header before decoding (413 above)",
    "max_aspect_ratio": "longest side over shortest side (400 above)",
    "time_limit_s": "seconds a request may take, its upload and waiting included (408 while uploading, 504 after)",
    "max_concurrent": "inferences at a time",
    "queue_size": "requests that may wait for a slot; beyond them the server answers 503",
    "max_uploads": "uploads that may be arriving at a time; beyond them the server answers 503",
    "memory_budget": "resident memory the whole server may use, models included, e.g. 4G; each model's "
    "pixel limit follows from it (default: what the loaded models use plus half the available memory)",
}
LIMIT_TYPES = {"memory_budget": parse_bytes}


def add_commands(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve trained models: a page to try them on and a JSON API",
        description="Serve trained models over HTTP: the page at /, POST /api/detect, GET /api/models, "
        "GET /api/errors (with --data), GET /healthz.",
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
        default = getattr(defaults, field.name)
        serve.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=LIMIT_TYPES.get(field.name, type(default)),
            default=default,
            help=LIMIT_HELP[field.name] + ("" if default is None else f" ({default})"),
        )
    add_access_options(serve)
    serve.add_argument(
        "--data",
        help="a data set (as train's --data) on which each served detector's errors are analysed at "
        "start, for the page's Errors view and GET /api/errors (as eval --errors)",
    )
    serve.add_argument("--split", help="with --data: the split (default: each run's test split)")
    serve.set_defaults(handler=run_serve)


def add_access_options(serve) -> None:
    serve.add_argument(
        "--token",
        default=None,
        help=f"require Authorization: Bearer TOKEN on every /api/ request (default ${TOKEN_VARIABLE}); "
        "the page takes it from http://HOST:PORT/#token=TOKEN once",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name to answer besides localhost, IP addresses and --host (repeat for more)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve on an address other machines can reach without a token",
    )


def run_serve(args: argparse.Namespace) -> int:
    try:
        from detlab.serve.app import serve
    except ImportError as error:
        raise ValueError(
            f"detlab serve needs FastAPI and uvicorn ({error}); install them: pip install 'detlab[serve]'"
        ) from None
    limits = Limits(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Limits)})
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and args.insecure and not token:
        print(
            f"detlab serve: listening on {args.host} with no token (--insecure): anyone who can reach it may use it",
            file=sys.stderr,
        )
    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        limits=limits,
        device=args.device,
        log_level=args.log_level,
        token=token,
        allow_hosts=tuple(args.allow_host),
        insecure=args.insecure,
        errors_data=args.data,
        errors_split=args.split,
    )
    return 0
