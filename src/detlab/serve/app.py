"""The web service: a FastAPI app over :mod:`detlab.serve.served`, and :func:`serve` to run it.

Routes:

- ``GET /``: the page (``static/index.html``; its scripts, styles and sample images come from
  ``/static``, nothing from elsewhere: every response says so with a Content-Security-Policy);
- ``POST /api/detect``: multipart form ``image`` (a file), ``model`` (a name of ``GET
  /api/models``; default the first), ``score_threshold`` (default 0.5), ``inside`` (``true`` adds
  the look-inside stages and views) -> the answer of :func:`detlab.serve.served.detect` with
  ``"timings"`` also holding ``"queue_ms"`` and ``"total_ms"``;
- ``GET /api/models``: ``{"models": [{"name", "method", "classes", "checkpoint"}], "limits": {...}}``;
- ``GET /api/samples``: ``{"samples": [{"name", "url"}]}``, the bundled sample images;
- ``GET /healthz``: ``{"status": "ok"}``, answered while inferences run (they run in worker threads).

Every error is ``{"error": "..."}``: 400 bad field or corrupt image, 408 an upload slower than the
time limit, 413 too large, 415 not an image (or not a multipart form), 422 an image the model
cannot use, 503 the queue is full, 504 out of time (:mod:`detlab.serve.limits`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from detlab.serve.limits import FORM_OVERHEAD_BYTES, Limits, RequestRefused, UploadSizeLimit, WorkQueue
from detlab.serve.served import ServedModel, detect, served_models
from detlab.serve.upload import check_upload
from detlab.tiles import Tiling, tiling_of

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_SCORE_THRESHOLD = 0.5
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
# The page and everything it loads come from this server; canvases draw uploads (blob:) and the
# look-inside windows (data:).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(models, limits: Limits | None = None, device: str = "auto") -> FastAPI:
    """The app serving ``models``: checkpoint paths (``RUN/best``, a ``.pt`` file, a run folder)
    and/or :class:`~detlab.engine.predict.Predictor` objects, or a dict ``name -> either``
    (see :func:`detlab.serve.served.served_models`). ``limits``: :class:`Limits` (defaults)."""
    limits = limits or Limits()
    served = served_models(models, device=device)
    queue = WorkQueue(limits.max_concurrent, limits.queue_size)
    app = FastAPI(
        title="detlab serve", docs_url=None, redoc_url=None
    )  # the docs pages load scripts from a CDN
    app.add_middleware(UploadSizeLimit, max_body_bytes=limits.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.state.models, app.state.limits, app.state.queue = served, limits, queue
    add_answers_to_errors(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "models": len(served), "requests_in_flight": queue.admitted}

    @app.get("/api/models")
    async def list_models() -> dict:
        return {
            "models": [model.describe() for model in served.values()],
            "limits": dataclasses.asdict(limits),
        }

    @app.get("/api/samples")
    async def list_samples() -> dict:
        files = sorted((STATIC_DIR / "samples").glob("*.png"))
        return {"samples": [{"name": path.stem, "url": f"/static/samples/{path.name}"} for path in files]}

    @app.post("/api/detect")
    async def detect_route(request: Request) -> JSONResponse:
        if not queue.admit():
            raise RequestRefused(
                503, f"busy: {queue.capacity} requests are already running or waiting; try again shortly"
            )
        started = time.perf_counter()
        try:
            try:  # a client sending its upload slowly holds a place in the queue: not for ever
                form = await asyncio.wait_for(read_detect_form(request, served, limits), limits.time_limit_s)
            except TimeoutError:
                raise RequestRefused(
                    408, f"the upload took longer than the time limit of {limits.time_limit_s:g} s"
                ) from None
            model, data, score_threshold, inside, tiling = form
            check_upload(data, limits)  # the header only: refuse before waiting for a slot

            def work() -> dict:
                waited = time.perf_counter() - started  # reading the form, then waiting for a slot
                answer = detect(model, data, score_threshold, inside, limits, tiling)
                answer["timings"] = {"queue_ms": round(waited * 1000, 2), **answer["timings"]}
                return answer

            deadline = (
                asyncio.get_running_loop().time() + limits.time_limit_s - (time.perf_counter() - started)
            )
            answer = await queue.run(work, deadline, limits.time_limit_s)
            answer["timings"]["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
            return JSONResponse(answer)
        finally:
            queue.leave()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def add_answers_to_errors(app: FastAPI) -> None:
    """Every answer carries the security headers; every error is a JSON ``{"error": ...}``."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, error: RequestRefused) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # A bug, not bad input (that is RequestRefused): answered as JSON, then logged by the server.
        return JSONResponse(
            {"error": f"internal error ({type(error).__name__}); see the server's log"}, status_code=500
        )


async def read_detect_form(request: Request, models: dict[str, ServedModel], limits: Limits):
    """``(model, image bytes, score threshold, inside, tiling)`` from the multipart form of ``POST
    /api/detect``; :class:`RequestRefused` naming the field at fault."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        sent = content_type or "no content type"
        raise RequestRefused(
            415, f"send a multipart/form-data form (fields image, model, score_threshold, inside), not {sent}"
        )
    form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
    try:
        upload = form.get("image")
        if upload is None:
            raise RequestRefused(400, "the form has no 'image' field: attach the image file as 'image'")
        if not isinstance(upload, UploadFile):
            raise RequestRefused(400, "the 'image' field must be a file upload, not text")
        data = await upload.read(limits.max_upload_bytes + 1)
    finally:
        await form.close()
    name = form.get("model") or next(iter(models))
    if name not in models:
        raise RequestRefused(400, f"unknown model {str(name)[:80]!r}; loaded models: {', '.join(models)}")
    return (
        models[name],
        data,
        parse_threshold(form.get("score_threshold")),
        parse_flag(form.get("inside"), "inside"),
        parse_tiling(form.get("tile"), form.get("overlap")),
    )


def parse_threshold(value) -> float:
    if value is None or value == "":
        return DEFAULT_SCORE_THRESHOLD
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise RequestRefused(400, f"score_threshold must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(threshold):
        raise RequestRefused(400, f"score_threshold must be a finite number, got {value!r}")
    return threshold


def parse_tiling(tile, overlap) -> Tiling | None:
    """The ``tile`` and ``overlap`` fields -> a :class:`~detlab.tiles.Tiling`, or ``None``."""
    try:
        side = int(tile) if tile not in (None, "") else 0
        share = float(overlap) if overlap not in (None, "") else 0.2
        return tiling_of(side, share)
    except (TypeError, ValueError) as error:
        raise RequestRefused(400, f"tile and overlap: {str(error)[:120]}") from None


def parse_flag(value, field: str) -> bool:
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise RequestRefused(400, f"{field} must be true or false, got {str(value)[:40]!r}")


def serve(
    models,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    device: str = "auto",
    log_level: str = "info",
) -> None:
    """Load ``models`` (as :func:`create_app` takes them) and serve them with uvicorn until
    interrupted. Binds to ``host`` (127.0.0.1: this machine only)."""
    import sys

    import uvicorn

    app = create_app(models, limits, device)
    names = ", ".join(f"{model.name} ({model.method})" for model in app.state.models.values())
    shown_host = f"[{host}]" if ":" in host else host
    print(f"detlab serve: {names} on http://{shown_host}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
