"""The web service: a FastAPI app over :mod:`detlab.serve.served`, and :func:`serve` to run it.

Routes:

- ``GET /``: the page (``static/index.html``; its scripts, styles and sample images come from
  ``/static``, nothing from elsewhere: every response says so with a Content-Security-Policy);
- ``POST /api/detect``: multipart form ``image`` (a file), ``model`` (a name of ``GET
  /api/models``; default the first), ``score_threshold`` (default 0.5), ``inside`` (``true`` adds
  the look-inside stages and views) -> the answer of :func:`detlab.serve.served.detect` with
  ``"timings"`` also holding ``"queue_ms"`` and ``"total_ms"``;
- ``GET /api/models``: ``{"models": [{"name", "method", "classes", "checkpoint", "max_pixels"}],
  "limits": {...}, "memory": {...}}``;
- ``GET /api/samples``: ``{"samples": [{"name", "url"}]}``, the bundled sample images;
- ``GET /healthz``: ``{"status": "ok"}``, answered while inferences run (they run in worker threads).

Who may call: :mod:`detlab.serve.access` (Host, Origin, token). Every error is ``{"error": "..."}``:
400 bad field, corrupt image or unknown Host, 401 no token, 403 sent by another web site, 408 an
upload slower than the time limit, 413 too large (bytes, or pixels for the model's share of the
memory budget), 415 not an image (or not a multipart form), 422 an image the model cannot use,
503 full, 504 out of time (:mod:`detlab.serve.limits`). Every answer, errors and 500s included,
carries the Content-Security-Policy and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from detlab.serve.access import Access, CallerCheck, check_exposure
from detlab.serve.errors import error_views
from detlab.serve.limits import (
    FORM_OVERHEAD_BYTES,
    Limits,
    Places,
    RequestRefused,
    UploadSizeLimit,
    WorkQueue,
)
from detlab.serve.memory import plan_memory
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
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
]


class ServeApp(FastAPI):
    """FastAPI with :class:`AnswerHeaders` around its whole stack, so the 500s of Starlette's
    outermost error middleware carry the security headers too."""

    def build_middleware_stack(self):
        return AnswerHeaders(super().build_middleware_stack(), self.state.answered)


class AnswerHeaders:
    """ASGI middleware: the security headers on every answer, and a count of answers by status
    (``app.state.answered``: the tests and the load benchmark read the 5xx the server sent)."""

    def __init__(self, app, answered: Counter):
        self.app, self.answered = app, answered

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": headers + SECURITY_HEADERS}
                self.answered[message["status"]] += 1
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def create_app(
    models,
    limits: Limits | None = None,
    device: str = "auto",
    access: Access | None = None,
    errors_data: str | None = None,
    errors_split: str | None = None,
) -> FastAPI:
    """The app serving ``models``: checkpoint paths (``RUN/best``, a ``.pt`` file, a run folder)
    and/or :class:`~detlab.engine.predict.Predictor` objects, or a dict ``name -> either``
    (see :func:`detlab.serve.served.served_models`). ``limits``: :class:`Limits` (defaults);
    ``access``: :class:`~detlab.serve.access.Access`, who may call (defaults: this machine, no
    token). Each model's pixel limit comes from ``limits.memory_budget``
    (:func:`detlab.serve.memory.plan_memory`; ``ValueError`` when a model does not fit it).
    ``errors_data``: a data set spec on which every detector's errors are analysed once, now, for
    the page's Errors view (``errors_split``: its split, default each run's test split;
    :mod:`detlab.serve.errors`)."""
    limits, access = limits or Limits(), access or Access()
    served = served_models(models, device=device)
    memory = plan_memory(
        {name: model.predictor.model.memory_cost() for name, model in served.items()}, limits
    )
    for name, model in served.items():
        model.max_pixels = memory.max_pixels[name]
    # FastAPI's docs pages load scripts from a CDN: off.
    app = ServeApp(title="detlab serve", docs_url=None, redoc_url=None)
    app.state.answered = Counter()
    # Outermost last: who may call first, then the body's size.
    app.add_middleware(UploadSizeLimit, max_body_bytes=limits.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(CallerCheck, access=access)
    app.state.models, app.state.limits, app.state.access, app.state.memory = served, limits, access, memory
    app.state.queue = WorkQueue(limits.max_concurrent, limits.queue_size)
    app.state.uploads = Places(limits.max_uploads)
    app.state.errors = error_views(served, errors_data, errors_split) if errors_data else None
    add_answers_to_errors(app)
    add_reading_routes(app)
    add_detect_route(app)
    add_error_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def add_reading_routes(app: FastAPI) -> None:
    """The page, ``/healthz``, ``/api/models`` and ``/api/samples``."""
    served, limits, queue = app.state.models, app.state.limits, app.state.queue

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
            "limits": {**dataclasses.asdict(limits), "memory_budget": app.state.memory.budget},
            "memory": app.state.memory.describe(),
        }

    @app.get("/api/samples")
    async def list_samples() -> dict:
        files = sorted((STATIC_DIR / "samples").glob("*.png"))
        return {"samples": [{"name": path.stem, "url": f"/static/samples/{path.name}"} for path in files]}


def add_detect_route(app: FastAPI) -> None:
    """``POST /api/detect``: the upload (in its own bounded places), then a queue place, then the work."""
    served, limits, queue, uploads = app.state.models, app.state.limits, app.state.queue, app.state.uploads

    @app.post("/api/detect")
    async def detect_route(request: Request) -> JSONResponse:
        started = time.monotonic()
        deadline = started + limits.time_limit_s
        form = await read_form(request, uploads, deadline, limits)
        try:
            model, upload, score_threshold, inside, tiling = detect_fields(form, served)
            # A place in the queue only now, once the whole body has arrived: a slow upload holds none.
            if not queue.admit():
                raise RequestRefused(
                    503, f"busy: {queue.capacity} requests are already running or waiting; try again shortly"
                )
            try:
                data = await upload.read(limits.max_upload_bytes + 1)
                model.check_pixels(check_upload(data, limits))  # the header only: refuse before waiting

                def work() -> dict:
                    waited = time.monotonic() - started  # reading the form, then waiting for a slot
                    answer = detect(model, data, score_threshold, inside, limits, deadline, tiling)
                    answer["timings"] = {"queue_ms": round(waited * 1000, 2), **answer["timings"]}
                    return answer

                answer = await queue.run(work, deadline, limits.time_limit_s)
            finally:
                queue.leave()
        finally:
            await form.close()
        answer["timings"]["total_ms"] = round((time.monotonic() - started) * 1000, 2)
        return JSONResponse(answer)


def add_error_routes(app: FastAPI) -> None:
    """``GET /api/errors`` (404 when the server was started without ``--data``) and
    ``GET /api/errors/MODEL/NAME``: a figure or gallery of the Errors view."""

    @app.get("/api/errors")
    async def errors_view() -> dict:
        if app.state.errors is None:
            raise RequestRefused(404, "no error analysis: start detlab serve with --data SPEC to have one")
        return app.state.errors.answer()

    @app.get("/api/errors/{model}/{name}")
    async def errors_figure(model: str, name: str) -> FileResponse:
        path = app.state.errors.figure(model, name) if app.state.errors is not None else None
        if path is None:
            raise RequestRefused(404, f"no figure {name[:40]!r} of model {model[:80]!r}")
        return FileResponse(path, media_type="image/jpeg" if path.suffix == ".jpg" else "image/png")


def add_answers_to_errors(app: FastAPI) -> None:
    """Every error is a JSON ``{"error": ...}`` (the security headers come from :class:`AnswerHeaders`)."""

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


async def read_form(request: Request, uploads: Places, deadline: float, limits: Limits) -> FormData:
    """The whole multipart form of ``POST /api/detect``, received in one of the ``max_uploads``
    places (503 when none is free) by ``deadline`` (408 after); the image stays spooled (in
    memory up to 1 MiB, then on disk) until read."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        sent = content_type[:80] or "no content type"
        raise RequestRefused(
            415, f"send a multipart/form-data form (fields image, model, score_threshold, inside), not {sent}"
        )
    if not uploads.take():
        raise RequestRefused(503, f"busy: {uploads.capacity} uploads are already arriving; try again shortly")

    async def whole_form() -> FormData:
        return await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)

    try:  # a client sending its upload slowly holds its place: not for ever
        return await asyncio.wait_for(whole_form(), max(deadline - time.monotonic(), 0.0))
    except asyncio.TimeoutError:  # not an alias of TimeoutError before Python 3.11
        raise RequestRefused(
            408, f"the upload took longer than the time limit of {limits.time_limit_s:g} s"
        ) from None
    except ClientDisconnect:  # nobody reads this answer; it is not the server's failure
        raise RequestRefused(400, "the client disconnected before its upload ended") from None
    finally:
        uploads.give_back()


def detect_fields(form: FormData, models: dict[str, ServedModel]):
    """``(model, image upload, score threshold, inside, tiling)`` from the form of ``POST /api/detect``;
    :class:`RequestRefused` naming the field at fault."""
    upload = form.get("image")
    if upload is None:
        raise RequestRefused(400, "the form has no 'image' field: attach the image file as 'image'")
    if not isinstance(upload, UploadFile):
        raise RequestRefused(400, "the 'image' field must be a file upload, not text")
    name = form.get("model") or next(iter(models))
    if name not in models:
        raise RequestRefused(400, f"unknown model {str(name)[:80]!r}; loaded models: {', '.join(models)}")
    return (
        models[name],
        upload,
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
    token: str | None = None,
    allow_hosts: tuple[str, ...] = (),
    insecure: bool = False,
    errors_data: str | None = None,
    errors_split: str | None = None,
) -> None:
    """Load ``models`` (as :func:`create_app` takes them) and serve them with uvicorn until
    interrupted. Binds to ``host`` (127.0.0.1: this machine only); another address needs a
    ``token`` (every ``/api/`` request then carries ``Authorization: Bearer TOKEN``) unless
    ``insecure``. ``allow_hosts``: Host names to answer besides this machine's and ``host``.
    ``errors_data``, ``errors_split``: the Errors view's data set (see :func:`create_app`)."""
    import uvicorn

    check_exposure(host, token, insecure)
    access = Access(token=token, allow_hosts=tuple(allow_hosts), host=host)
    app = create_app(models, limits, device, access, errors_data, errors_split)
    names = ", ".join(f"{model.name} ({model.method})" for model in app.state.models.values())
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/" + (f"#token={token}" if token else "")
    print(f"detlab serve: {names} on {url}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
