"""Helpers of the serve tests: image files, and a real server in a thread."""

from __future__ import annotations

import io
import socket
import threading
import time

import torch
from PIL import Image

CLASSES = ["circle", "square", "triangle", "star"]
LOCAL = "http://127.0.0.1"  # the base URL of test clients: a Host the server answers (not "testserver")


def image_bytes(width: int = 64, height: int = 48, format: str = "PNG", seed: int = 0) -> bytes:
    """An image file's bytes: one of the synthetic set's images, cropped and resized."""
    from detlab.data.synthetic import render_image

    image, _ = render_image(seed=seed, index=1, size=128)
    buffer = io.BytesIO()
    image.resize((width, height)).save(buffer, format)
    return buffer.getvalue()


def decoded(data: bytes) -> torch.Tensor:
    from detlab.data.images import to_image_tensor

    return to_image_tensor(Image.open(io.BytesIO(data)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread (``with`` block)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
