"""What ``detlab serve`` refuses, and how it keeps its memory and CPU bounded.

- :class:`Limits`: the settings (``detlab serve --max-upload-bytes ...`` and ``create_app(...,
  limits)`` take the same fields).
- :class:`RequestRefused`: the one error a request can end in; its ``status`` is the HTTP status
  (4xx for anything a client sent or asked, 503 when the server is full, 504 when a request ran out
  of time) and its message is the ``{"error": ...}`` of the JSON answer.
- :class:`UploadSizeLimit`: ASGI middleware that refuses a request body larger than the limit
  before it is read (``Content-Length``) or while it is read (chunked uploads), so a body is never
  held whole when it is too large.
- :class:`WorkQueue`: at most ``max_concurrent`` inferences at a time and ``queue_size`` requests
  waiting for one; a request beyond that is answered 503 at once. A request whose time runs out is
  answered 504, but its inference keeps its slot until it really ends (a thread cannot be
  stopped), so the CPU work in flight never exceeds ``max_concurrent``.

Memory held by requests is then at most ``(max_concurrent + queue_size) * max_upload_bytes`` of
uploads plus ``max_concurrent`` decoded images of at most ``max_pixels`` pixels each (12 bytes a
pixel as a float tensor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

# Multipart framing and the small form fields around the image: the body may exceed the image by this.
FORM_OVERHEAD_BYTES = 16 * 1024


@dataclasses.dataclass
class Limits:
    """``max_upload_bytes``: the largest image file accepted (10 MiB); ``max_pixels``: the most
    pixels an image may have, checked from its header before decoding (a decompression bomb is a
    small file claiming a huge image; 4096 x 4096); ``max_aspect_ratio``: longer side over shorter
    side (a 1 x 5000 image would be resized to nothing); ``time_limit_s``: seconds a request may
    take, waiting included, before it is answered 504; ``max_concurrent``: inferences at a time
    (on a CPU torch already uses every core for one: 1); ``queue_size``: requests that may wait for
    a free slot before the server answers 503."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 50.0
    time_limit_s: float = 60.0
    max_concurrent: int = 1
    queue_size: int = 16

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be 0 or more, got {self.queue_size}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive, got {self.time_limit_s}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")


class RequestRefused(ValueError):
    """A request the server will not (or cannot) answer with a result; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UploadSizeLimit:
    """ASGI middleware: 413 for a request body over ``max_body_bytes``, checked on the declared
    ``Content-Length`` first, then on the bytes as they arrive (a chunked body declares none)."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await send_json(send, 400, {"error": "the Content-Length header is not a number of bytes"})
        if declared is not None and int(declared) > self.max_body_bytes:
            return await send_json(send, 413, {"error": self.message()})
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise RequestRefused(413, self.message())
            return message

        return await self.app(scope, counting_receive, send)

    def message(self) -> str:
        return (
            f"the request body is larger than {self.max_body_bytes} bytes; upload an image of at most "
            f"{self.max_body_bytes - FORM_OVERHEAD_BYTES} bytes (detlab serve --max-upload-bytes raises the limit)"
        )


async def send_json(send, status: int, content: dict) -> None:
    """Answer an ASGI request with ``content`` as JSON (for middleware, which has no response classes)."""
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WorkQueue:
    """Bounded inference: ``max_concurrent`` slots, ``queue_size`` waiting places, a time limit.

    :meth:`admit` is the first thing a request does (``False``: answer 503); :meth:`leave` the
    last. :meth:`run` waits for a slot and runs a blocking function in the thread pool (so the
    event loop keeps answering ``/healthz``) within the request's deadline.
    """

    def __init__(self, max_concurrent: int, queue_size: int):
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + queue_size
        self.admitted = 0
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def slots(self) -> asyncio.Semaphore:
        """The semaphore of the running event loop (an asyncio semaphore belongs to one loop; a
        server has one, but each ``with TestClient(app)`` block runs its own)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_concurrent))
        return self._slots[1]

    def admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    async def run(self, work: Callable[[], Any], deadline: float, time_limit_s: float) -> Any:
        """``work()`` in a worker thread once a slot is free; :class:`RequestRefused` (504) when the
        loop's clock passes ``deadline`` first (the slot is then freed when ``work`` ends)."""
        from starlette.concurrency import run_in_threadpool  # the serve extra, imported when serving

        loop, slots = asyncio.get_running_loop(), self.slots()
        try:
            await asyncio.wait_for(slots.acquire(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            raise RequestRefused(
                504, f"no worker became free within the time limit of {time_limit_s:g} s"
            ) from None
        task = asyncio.ensure_future(run_in_threadpool(work))
        task.add_done_callback(lambda finished: self._finished(finished, slots))
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            raise RequestRefused(
                504, f"the request took longer than the time limit of {time_limit_s:g} s"
            ) from None

    @staticmethod
    def _finished(task: asyncio.Future, slots: asyncio.Semaphore) -> None:
        slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a request that timed out does not log its late error
