"""What the server refuses: every bad request is a JSON error with a 4xx status, never a 5xx;
bounded concurrency (503), the time limit (504); /healthz keeps answering."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving import CLASSES, LOCAL, image_bytes

from detlab.engine.predict import Predictor
from detlab.models.contract import NO_TRACE, DetectorModule
from detlab.serve.app import create_app
from detlab.serve.limits import Limits

MAX_UPLOAD = 200_000
LIMITS = Limits(max_upload_bytes=MAX_UPLOAD, max_pixels=1_000_000, max_aspect_ratio=20, time_limit_s=30)


@pytest.fixture(scope="module")
def client(untrained):
    models = {"faster_rcnn": untrained["faster_rcnn"], "yolov1": untrained["yolov1"]}
    with TestClient(create_app(models, LIMITS), base_url=LOCAL) as client:
        yield client


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def encoded(width: int, height: int, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format)
    return buffer.getvalue()


def assert_refused(response, status: int | tuple[int, ...], words: str = "") -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error, str) and words.lower() in error.lower(), error


def post(client, data: bytes, name: str = "image.png", content_type: str = "image/png", **fields):
    return client.post("/api/detect", files={"image": (name, data, content_type)}, data=fields)


def test_named_bad_requests(client):
    jpeg, png = image_bytes(64, 48, "JPEG"), image_bytes(64, 48, "PNG")
    assert_refused(post(client, png_header_only(30000, 30000)), 413, "pixels")
    assert_refused(post(client, png_header_only(2000, 1000)), 413, "limit of 1000000")
    assert_refused(post(client, png_header_only(0, 0)), (400, 415))  # PIL does not recognise a 0 x 0 PNG
    assert_refused(
        post(client, png_header_only(64, 64)), 400, "corrupt or truncated"
    )  # a valid header, no pixels
    assert_refused(post(client, jpeg[: len(jpeg) // 2], "cut.jpg", "image/jpeg"), 400, "truncated")
    assert_refused(post(client, png[: len(png) // 2]), 400)
    assert_refused(
        post(client, b"hello, I am a text file\n" * 10, "notes.jpg", "image/jpeg"), 415, "not an image"
    )
    assert_refused(post(client, b""), 400, "empty")
    assert_refused(post(client, encoded(400, 10, "PNG")), 400, "times longer")
    assert_refused(post(client, png, model="nope"), 400, "unknown model")
    assert_refused(post(client, png, score_threshold="high"), 400, "score_threshold")
    assert_refused(post(client, png, score_threshold="nan"), 400, "finite")
    assert_refused(post(client, png, inside="maybe"), 400, "inside")
    misnamed = client.post(
        "/api/detect", files={"picture": ("a.png", png, "image/png")}, data={"model": "yolov1"}
    )
    assert_refused(misnamed, 400, "no 'image' field")
    as_text = client.post(
        "/api/detect", files={"other": ("a.txt", b"x", "text/plain")}, data={"image": "not a file"}
    )
    assert_refused(as_text, 400, "file upload")
    assert_refused(
        client.post("/api/detect", data={"model": "yolov1"}), 415, "multipart"
    )  # a urlencoded form
    assert_refused(
        client.post("/api/detect", content=png, headers={"content-type": "image/png"}), 415, "multipart"
    )
    assert_refused(client.post("/api/detect", json={"image": "x"}), 415, "multipart")
    assert_refused(post(client, encoded(8, 8, "ICO"), "icon.ico", "image/x-icon"), 415, "not accepted")
    assert_refused(client.get("/api/detect"), 405)
    too_big = post(client, b"\xff\xd8" + b"\0" * (MAX_UPLOAD + 20_000), "big.jpg", "image/jpeg")
    assert_refused(too_big, 413, "larger than")
    assert client.get("/healthz").status_code == 200


def test_an_oversized_body_without_a_length_is_refused_as_it_arrives(client):
    def chunks():
        yield b'--boundary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 10_000

    response = client.post(
        "/api/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=boundary"}
    )
    assert_refused(response, 413, "larger than")


def test_small_and_odd_images_are_answered(client):
    """1 x 1, greyscale, RGBA, palette, 16-bit and a two-frame GIF: all images, all answered."""
    images = [encoded(1, 1, "PNG"), encoded(1, 1, "JPEG"), encoded(3, 40, "BMP")]
    for mode in ("L", "RGBA", "P", "I;16"):
        buffer = io.BytesIO()
        Image.new(mode, (17, 9)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (20, 20), colour) for colour in ("red", "blue")]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    images.append(buffer.getvalue())
    for data in images:
        for model in ("faster_rcnn", "yolov1"):
            response = post(client, data, model=model, score_threshold="0", inside="true")
            assert response.status_code == 200, response.text
            assert isinstance(response.json()["detections"], list)


REQUEST_PARTS = st.fixed_dictionaries(
    {
        "image": st.one_of(
            st.binary(max_size=2000),
            st.builds(
                lambda cut, fmt: encoded(23, 17, fmt)[:cut],
                st.integers(0, 400),
                st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]),
            ),
            st.builds(
                lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
                st.just(image_bytes(24, 16, "JPEG")),
                st.integers(0, 600),
                st.integers(0, 255),
            ),
            st.builds(png_header_only, st.integers(0, 40000), st.integers(0, 40000)),
            st.builds(
                encoded,
                st.integers(1, 48),
                st.integers(1, 48),
                st.sampled_from(["PNG", "JPEG", "BMP", "WEBP", "TIFF"]),
            ),
        ),
        "filename": st.sampled_from(["a.png", "a.jpg", "notes.txt", "", "../../etc/passwd"]),
        "content_type": st.sampled_from(
            ["image/png", "image/jpeg", "text/plain", "application/octet-stream"]
        ),
        "fields": st.dictionaries(
            st.sampled_from(["model", "score_threshold", "inside", "extra"]),
            st.one_of(
                st.sampled_from(
                    ["yolov1", "faster_rcnn", "0", "0.5", "-3", "1e309", "true", "no", "", "../best.pt"]
                ),
                st.text(max_size=12),
            ),
            max_size=3,
        ),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUEST_PARTS)
def test_fuzzed_requests_are_answered_or_refused_never_failed(client, request):
    files = {"image": (request["filename"] or "image", request["image"], request["content_type"])}
    response = client.post("/api/detect", files=files, data=request["fields"])
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["detections"], list)
    else:
        assert 400 <= response.status_code < 500 and isinstance(body["error"], str) and body["error"]


def test_health_after_the_fuzzing(client):
    assert client.get("/healthz").json()["status"] == "ok"


class HeldModel(DetectorModule):
    """A model whose forward waits until ``release`` is set (and says when it started)."""

    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def forward(self, images, targets=None, trace=None):
        self.started.set()
        self.release.wait(timeout=30)
        return [
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
            }
            for _ in images
        ]


def test_a_full_queue_answers_503_at_once_and_health_stays_up():
    model = HeldModel()
    app = create_app({"held": Predictor(model, CLASSES)}, Limits(max_concurrent=1, queue_size=0))
    data = image_bytes(32, 32)
    with TestClient(app, base_url=LOCAL) as client:
        first = {}
        thread = threading.Thread(target=lambda: first.update(response=post(client, data)))
        thread.start()
        assert model.started.wait(timeout=10)
        started = time.monotonic()
        second = post(client, data)
        assert_refused(second, 503, "busy")
        assert time.monotonic() - started < 5
        health = client.get("/healthz")  # the event loop is free while the inference runs in a thread
        assert health.status_code == 200 and health.json()["requests_in_flight"] == 1
        model.release.set()
        thread.join(timeout=10)
        assert first["response"].status_code == 200 and first["response"].json()["detections"] == []
        assert post(client, data).status_code == 200  # the slot is free again


def test_a_request_over_the_time_limit_is_answered_504():
    model = HeldModel()
    app = create_app(
        {"held": Predictor(model, CLASSES)}, Limits(time_limit_s=0.5, max_concurrent=1, queue_size=2)
    )
    with TestClient(app, base_url=LOCAL) as client:
        started = time.monotonic()
        assert_refused(post(client, image_bytes(32, 32)), 504, "time limit")
        assert time.monotonic() - started < 5
        # The inference still holds its slot: a new request waits for it, then runs.
        waiting = {}
        thread = threading.Thread(target=lambda: waiting.update(response=post(client, image_bytes(32, 32))))
        thread.start()
        time.sleep(0.1)
        model.release.set()
        thread.join(timeout=10)
        assert waiting["response"].status_code == 200


class FailingModel(DetectorModule):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def forward(self, images, targets=None, trace=None):
        raise self.error


def test_an_image_the_model_fails_on_is_422_and_a_server_bug_is_a_json_500_with_the_headers(monkeypatch):
    models = {
        "refuses": Predictor(FailingModel(ValueError("expected images as Tensor[3, H, W]")), CLASSES),
        "broken": Predictor(FailingModel(RuntimeError("a bug\nmore lines")), CLASSES),
    }
    with TestClient(create_app(models), raise_server_exceptions=False, base_url=LOCAL) as client:
        assert_refused(
            post(client, image_bytes(32, 32), model="refuses"), 422, "refuses cannot use this image"
        )
        # Any error of the model on one image is that image's answer, not the server's failure.
        assert_refused(post(client, image_bytes(32, 32), model="broken"), 422, "(RuntimeError: a bug)")
        import detlab.serve.app as app_module

        def server_bug(*args, **kwargs):
            raise KeyError("a bug of the server")

        monkeypatch.setattr(app_module, "detect", server_bug)
        broken = post(client, image_bytes(32, 32), model="refuses")
        assert broken.status_code == 500 and broken.json() == {
            "error": "internal error (KeyError); see the server's log"
        }
        assert broken.headers["content-security-policy"].startswith("default-src 'self'")
        assert broken.headers["x-content-type-options"] == "nosniff"
        assert client.get("/healthz").status_code == 200
        assert client.app.state.answered[500] == 1


def test_an_upload_slower_than_the_time_limit_is_answered_408():
    """A real server (the test client reads a streamed body before the app sees it): 8 bytes
    every 0.2 s, answered 408 at the time limit, holding no place afterwards."""
    import socket

    from serving import ServerThread

    app = create_app({"held": Predictor(HeldModel(), CLASSES)}, Limits(time_limit_s=0.5))
    with (
        ServerThread(app) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as upload,
    ):
        upload.sendall(
            f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 10000\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode()
            + b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        )
        started, answer = time.monotonic(), b""
        upload.settimeout(0.2)
        while not answer and time.monotonic() - started < 5:
            upload.sendall(b"\0" * 8)
            try:
                answer = upload.recv(4096)
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408") and b"upload took longer" in answer, answer
        assert time.monotonic() - started < 2
        assert app.state.uploads.taken == 0 and app.state.queue.admitted == 0


class StagedModel(DetectorModule):
    """Five stages of ``seconds`` each, marked like a detlab model's; counts the stages it ran."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.stages_run, self.calls = seconds, 0, 0

    def forward(self, images, targets=None, trace=NO_TRACE):
        self.calls += 1
        for stage in range(5):
            time.sleep(self.seconds)
            self.stages_run += 1
            trace(f"stage {stage}")
        return [
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
            }
            for _ in images
        ]


def test_a_pass_past_its_deadline_stops_at_its_next_stage_mark():
    model = StagedModel(0.4)
    app = create_app({"staged": Predictor(model, CLASSES)}, Limits(time_limit_s=0.6))
    with TestClient(app, base_url=LOCAL) as client:
        assert_refused(post(client, image_bytes(32, 32)), 504, "time limit")
        time.sleep(2.5)  # the five stages would end 2 s after the start; the pass stopped at 0.8 s
        assert model.stages_run == 2
        assert client.get("/healthz").json()["requests_in_flight"] == 0


def test_work_whose_deadline_passed_while_decoding_never_starts(monkeypatch):
    import detlab.serve.served as served_module

    model = StagedModel(0.0)
    decode = served_module.decode_upload

    def slow_decode(data, limits):
        time.sleep(0.7)
        return decode(data, limits)

    monkeypatch.setattr(served_module, "decode_upload", slow_decode)
    app = create_app({"staged": Predictor(model, CLASSES)}, Limits(time_limit_s=0.5))
    with TestClient(app, base_url=LOCAL) as client:
        assert_refused(post(client, image_bytes(32, 32)), 504, "time")
        time.sleep(0.5)
    assert model.calls == 0


@pytest.mark.parametrize(
    "method", ["faster_rcnn", "fast_rcnn", "rcnn", "overfeat", "yolov1", "localizer", "keypoints"]
)
def test_every_method_looks_inside_in_several_threads_at_once(untrained, method):
    """As the YOLO test above, for the other methods: a server with --max-concurrent 4 runs
    looks inside one model from several threads; each pass keeps its own trace."""
    from concurrent.futures import ThreadPoolExecutor

    from detlab.serve.inside import look_inside

    predictor = untrained[method]
    image = torch.rand(3, 56, 64, generator=torch.Generator().manual_seed(0))
    alone_output, alone = look_inside(predictor, image)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: look_inside(predictor, image), range(4)))
    for output, inside in results:
        assert [stage["name"] for stage in inside["stages"]] == [stage["name"] for stage in alone["stages"]]
        assert [view["title"] for view in inside["views"]] == [view["title"] for view in alone["views"]]
        torch.testing.assert_close(output["boxes"], alone_output["boxes"])
