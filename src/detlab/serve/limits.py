"""What ``detlab serve`` refuses, and how it keeps its memory and CPU bounded.

- :class:`Limits`: the settings (``detlab serve --max-upload-bytes ...`` and ``create_app(...,
  limits)`` take the same fields).
- :class:`RequestRefused`: the one error a request can end in; its ``status`` is the HTTP status
  (4xx for anything a client sent or asked, 503 when the server is full, 504 when a request ran out
  of time) and its message is the ``{"error": ...}`` of the JSON answer.
- :class:`UploadSizeLimit`: ASGI middleware that refuses a request body larger than the limit
  before it is read (``Content-Length``) or while it is read (chunked uploads), so a body is never
  held whole when it is too large.
- :class:`Places`: at most ``max_uploads`` uploads arriving at a time (503 beyond), so slow
  clients hold a bounded share of memory and none of the queue.
- :class:`WorkQueue`: at most ``max_concurrent`` inferences at a time and ``queue_size`` requests
  waiting for one; a request takes its place only once its whole body has arrived, and beyond
  that is answered 503 at once. Work whose deadline has passed is never started; a request whose
  time runs out is answered 504 and its pass stops at its next stage mark
  (:func:`detlab.models.contract.stop_at`), keeping its slot until then (a thread cannot be
  stopped), so the CPU work in flight never exceeds ``max_concurrent``.

Memory: :mod:`detlab.serve.memory` turns ``memory_budget`` into the most pixels each model may take.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import Any

# Multipart framing and the small form fields around the image: the body may exceed the image by this.
FORM_OVERHEAD_BYTES = 16 * 1024
# A Content-Length longer than this is refused without being converted to a number (Python
# refuses to convert one of over 4,300 digits at all; no body has 10^18 bytes).
MAX_LENGTH_DIGITS = 18
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclasses.dataclass
class Limits:
    """``max_upload_bytes``: the largest image file accepted (10 MiB); ``max_pixels``: the most
    pixels an image may have, checked from its header before decoding (a decompression bomb is a
    small file claiming a huge image; 4096 x 4096; a model whose passes would not fit the memory
    budget takes fewer, see :mod:`detlab.serve.memory`); ``max_aspect_ratio``: longer side over
    shorter side (a 1 x 5000 image would be resized to nothing); ``time_limit_s``: seconds a
    request may take, its upload and waiting included, before it is answered 408 (upload) or 504;
    ``max_concurrent``: inferences at a time (on a CPU torch already uses every core for one: 1);
    ``queue_size``: requests that may wait for a free slot before the server answers 503;
    ``max_uploads``: uploads that may be arriving at a time (503 beyond); ``memory_budget``: bytes
    of resident memory the whole server may use, its models included (``None``: what it uses
    once its models are loaded plus half of the memory the machine has available then)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 50.0
    time_limit_s: float = 60.0
    max_concurrent: int = 1
    queue_size: int = 16
    max_uploads: int = 64
    memory_budget: int | None = None

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "max_uploads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be 0 or more, got {self.queue_size}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive, got {self.time_limit_s}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}")
        if self.memory_budget is not None and self.memory_budget < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {self.memory_budget}")


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (K, M, G, T are powers of 1024)."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not found:
        raise ValueError(f"not an amount of memory: {text!r} (write e.g. 4G, 512M or a number of bytes)")
    return int(float(found.group(1)) * UNITS[found.group(2).lower()])


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
        digits = declared.lstrip(b"0") if declared is not None else b""
        if len(digits) > MAX_LENGTH_DIGITS or int(digits or b"0") > self.max_body_bytes:
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


async def send_json(send, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
    """Answer an ASGI request with ``content`` as JSON (for middleware, which has no response classes)."""
    body = json.dumps(content).encode()
    extra = [(name.lower().encode(), value.encode("latin-1")) for name, value in (headers or {}).items()]
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Places:
    """At most ``capacity`` requests in one phase at a time: :meth:`take` (``False``: full) first,
    :meth:`give_back` last."""

    def __init__(self, capacity: int):
        self.capacity, self.taken = capacity, 0

    def take(self) -> bool:
        if self.taken >= self.capacity:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1


class WorkQueue:
    """Bounded inference: ``max_concurrent`` slots, ``queue_size`` waiting places, a deadline.

    :meth:`admit` is the first thing a request does once its body has arrived (``False``: answer
    503); :meth:`leave` the last. :meth:`run` waits for a slot and runs a blocking function in the
    thread pool (so the event loop keeps answering ``/healthz``) within the request's deadline.
    Deadlines are ``time.monotonic()`` seconds (the event loop's clock).
    """

    def __init__(self, max_concurrent: int, queue_size: int):
        self.max_concurrent = max_concurrent
        self.places = Places(max_concurrent + queue_size)
        self.capacity = self.places.capacity
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @property
    def admitted(self) -> int:
        return self.places.taken

    def slots(self) -> asyncio.Semaphore:
        """The semaphore of the running event loop (an asyncio semaphore belongs to one loop; a
        server has one, but each ``with TestClient(app)`` block runs its own)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_concurrent))
        return self._slots[1]

    def admit(self) -> bool:
        return self.places.take()

    def leave(self) -> None:
        self.places.give_back()

    async def run(self, work: Callable[[], Any], deadline: float, time_limit_s: float) -> Any:
        """``work()`` in a worker thread once a slot is free, never after ``deadline``;
        :class:`RequestRefused` (504) when the deadline passes first (the slot is then freed when
        ``work`` ends; it should stop early, see :func:`detlab.models.contract.stop_at`)."""
        from starlette.concurrency import run_in_threadpool  # the serve extra, imported when serving

        slots = self.slots()
        try:
            await asyncio.wait_for(slots.acquire(), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:  # not an alias of TimeoutError before Python 3.11
            raise RequestRefused(
                504, f"no worker became free within the time limit of {time_limit_s:g} s"
            ) from None
        if time.monotonic() >= deadline:  # a slot freed at the last moment: too late to start
            slots.release()
            raise RequestRefused(504, f"no worker became free within the time limit of {time_limit_s:g} s")
        task = asyncio.ensure_future(run_in_threadpool(work))
        task.add_done_callback(lambda finished: self._finished(finished, slots))
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:  # not an alias of TimeoutError before Python 3.11
            raise RequestRefused(
                504, f"the request took longer than the time limit of {time_limit_s:g} s"
            ) from None

    @staticmethod
    def _finished(task: asyncio.Future, slots: asyncio.Semaphore) -> None:
        slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a request that timed out does not log its late error
