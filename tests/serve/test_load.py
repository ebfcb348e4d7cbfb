"""A short hostile load on a real server (uvicorn on 127.0.0.1): stalled uploads take no place
in the queue, healthy requests keep being answered, nothing is a 5xx, and the server's memory
stays within its budget while a client sends OverFeat the largest images the budget allows.
(The full-size version: ``benchmarks/bench_robustness_serve.py --part load``.)"""

from __future__ import annotations

import dataclasses
import io
import math
import socket
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import ServerThread, image_bytes

from detlab.machine import resident_bytes
from detlab.serve.app import create_app
from detlab.serve.limits import Limits
from detlab.serve.memory import serving_cost, uploads_reserve

LOAD_SECONDS = 4.0
OVERFEAT_PIXELS = 160_000  # the pixel limit the budget is chosen to give OverFeat


def noise_png(side: int) -> bytes:
    pixels = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def stalled_upload(port: int, body_length: int) -> socket.socket:
    """A connection that sent its headers and 100 bytes of a longer body, then nothing."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(
        f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {body_length}\r\n"
        "Content-Type: multipart/form-data; boundary=detlab\r\n\r\n".encode()
        + b'--detlab\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.ljust(
            100, b"\0"
        )
    )
    return connection


def test_stalled_uploads_do_not_lock_anyone_out(untrained):
    """17 stalled uploads (the queue holds 1 + 16): a healthy request is still answered at once."""
    app = create_app({"yolov1": untrained["yolov1"]}, Limits(time_limit_s=30))
    with ServerThread(app) as server:
        stalled = [stalled_upload(server.port, 50_000) for _ in range(17)]
        try:
            time.sleep(0.3)
            files = {"image": ("a.png", image_bytes(64, 48), "image/png")}
            answer = httpx.post(server.url + "/api/detect", files=files, timeout=20)
            assert answer.status_code == 200, answer.text
            assert httpx.get(server.url + "/healthz").json()["requests_in_flight"] == 0
        finally:
            for connection in stalled:
                connection.close()


class Clients:
    """The load: counted requests from threads until ``stop_at``."""

    def __init__(self, url: str, port: int, stop_at: float):
        self.url, self.port, self.stop_at = url, port, stop_at
        self.statuses: dict[str, Counter] = {
            "healthy": Counter(),
            "overfeat": Counter(),
            "hostile": Counter(),
        }
        self.lock = threading.Lock()

    def post(self, kind: str, model: str, image: bytes) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while time.monotonic() < self.stop_at:
                files = {"image": ("a.png", image, "image/png")}
                status = client.post("/api/detect", files=files, data={"model": model}).status_code
                with self.lock:
                    self.statuses[kind][status] += 1

    def stall(self, slow: bool) -> None:
        """One upload that never ends: silent after 100 bytes, or 8 bytes every 0.1 s."""
        connection = stalled_upload(self.port, 1_000_000)
        with connection:
            while time.monotonic() < self.stop_at:
                if slow:
                    connection.sendall(b"\0" * 8)
                time.sleep(0.1)
        with self.lock:
            self.statuses["hostile"]["held to the end"] += 1


def test_a_hostile_load_leaves_healthy_requests_answered_and_memory_within_budget(untrained):
    """32 clients: 16 stall or trickle their uploads, one sends OverFeat images of its pixel limit,
    15 detect small images; about 4 s, on 127.0.0.1."""
    limits = Limits(max_upload_bytes=1024 * 1024, max_concurrent=1, queue_size=16, time_limit_s=30)
    overfeat = untrained["overfeat"]
    share = serving_cost(overfeat.model.memory_cost()).bytes_for(OVERFEAT_PIXELS)
    budget = (resident_bytes() or 0) + uploads_reserve(limits) + int(share)
    limits = dataclasses.replace(limits, memory_budget=budget)
    app = create_app({"yolov1": untrained["yolov1"], "overfeat": overfeat}, limits)
    overfeat_limit = app.state.models["overfeat"].max_pixels
    assert overfeat_limit < limits.max_pixels  # the budget, not max_pixels, bounds OverFeat's images
    largest = noise_png(math.isqrt(overfeat_limit))
    with ServerThread(app) as server:
        clients = Clients(server.url, server.port, time.monotonic() + LOAD_SECONDS)
        threads = [threading.Thread(target=clients.stall, args=(index % 2 == 1,)) for index in range(16)]
        healthy = ("healthy", "yolov1", image_bytes(64, 48))
        threads += [threading.Thread(target=clients.post, args=healthy) for _ in range(15)]
        threads.append(threading.Thread(target=clients.post, args=("overfeat", "overfeat", largest)))
        for thread in threads:
            thread.start()
        resident = []
        while any(thread.is_alive() for thread in threads):
            resident.append(resident_bytes())
            time.sleep(0.05)
    assert clients.statuses["healthy"][200] >= 30, clients.statuses
    assert clients.statuses["overfeat"][200] >= 1, clients.statuses
    assert clients.statuses["hostile"]["held to the end"] == 16
    assert not [status for status in app.state.answered if status >= 500], app.state.answered
    assert max(resident) <= limits.memory_budget, (max(resident), limits.memory_budget)


def test_every_method_states_its_memory_and_the_budget_sets_each_pixel_limit(untrained):
    """Each model's limit is the most pixels its stated cost fits in one slot's share (at most
    max_pixels); a budget too small for a model stops the server at start, saying what it needs."""
    from detlab.models import MODELS

    assert all(untrained[method].model.memory_cost() is not None for method in MODELS)
    limits = Limits(max_concurrent=2, memory_budget=(resident_bytes() or 0) + 3 * 1024**3)
    app = create_app(untrained, limits)
    plan = app.state.memory
    assert plan.per_inference == (plan.budget - plan.resident - plan.reserved) // 2
    for model in app.state.models.values():
        expected = serving_cost(model.predictor.model.memory_cost()).pixels_within(plan.per_inference)
        assert model.max_pixels == min(limits.max_pixels, expected) > 0
    assert app.state.models["overfeat"].max_pixels < limits.max_pixels  # about a kilobyte a pixel
    with pytest.raises(ValueError, match="--memory-budget"):
        create_app({"overfeat": untrained["overfeat"]}, Limits(memory_budget=(resident_bytes() or 0) + 1))
