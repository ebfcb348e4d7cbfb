"""``detlab serve``: trained models behind a small web service and a page to try them on.

    from detlab.serve.app import create_app, serve
    from detlab.serve.limits import Limits
    app = create_app(["runs/shapes/best"], Limits(max_concurrent=1))  # a FastAPI app (TestClient-ready)
    serve(["runs/shapes/best"], port=8000)                            # uvicorn on 127.0.0.1:8000

The parts: :mod:`~detlab.serve.app` (routes, :func:`create_app`, :func:`serve`),
:mod:`~detlab.serve.served` (loading models, one detection), :mod:`~detlab.serve.inside` (the
look-inside view as JSON), :mod:`~detlab.serve.upload` (checking and decoding uploads),
:mod:`~detlab.serve.limits` (what is refused; bounded work), ``static/`` (the page). FastAPI and
uvicorn are the optional ``serve`` extra (``pip install 'detlab[serve]'``), imported by
:mod:`~detlab.serve.app` only, so ``detlab --help`` works without them.
"""
