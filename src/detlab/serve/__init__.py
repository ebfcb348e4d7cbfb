"""``detlab serve``: trained models behind a small web service and a page to try them on.

    from detlab.serve import Limits, create_app, serve
    app = create_app(["runs/shapes/best"], Limits(max_concurrent=1))  # a FastAPI app (TestClient-ready)
    serve(["runs/shapes/best"], port=8000)                            # uvicorn on 127.0.0.1:8000

The parts: :mod:`~detlab.serve.app` (routes, :func:`create_app`, :func:`serve`),
:mod:`~detlab.serve.served` (loading models, one detection), :mod:`~detlab.serve.inside` (the
look-inside stages of every method), :mod:`~detlab.serve.upload` (checking and decoding uploads),
:mod:`~detlab.serve.limits` (what is refused; bounded work), ``static/`` (the page). FastAPI and
uvicorn are the optional ``serve`` extra (``pip install 'detlab[serve]'``), imported only when a
server is made, so ``detlab --help`` works without them.
"""

from __future__ import annotations

import typing

from detlab.serve.limits import Limits

if typing.TYPE_CHECKING:
    from detlab.serve.app import create_app, serve


def __getattr__(name: str):
    # create_app / serve import FastAPI: on first use, as detlab.train does for torch.
    if name in ("create_app", "serve"):
        from detlab.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'detlab.serve' has no attribute {name!r}")


__all__ = ["Limits", "create_app", "serve"]
