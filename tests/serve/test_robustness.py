"""Hostile input to ``POST /api/detect`` of every method: fuzzed images (at the pixel limit
included), broken multipart framing and headers, absurd lengths, non-finite model outputs,
disconnects mid-upload; never a 5xx, always the security headers. MPO photos are images."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving import CLASSES, LOCAL, ServerThread, image_bytes

from detlab.engine.predict import Predictor
from detlab.models import MODELS
from detlab.models.contract import BoxesView, DetectorModule, HeatmapView, Inside, PointsView, WindowView
from detlab.serve.app import create_app
from detlab.serve.limits import Limits

PIXEL_LIMIT = (120, 90)  # max_pixels = 120 x 90: an image at the limit, and one a column over it
LIMITS = Limits(max_upload_bytes=200_000, max_pixels=PIXEL_LIMIT[0] * PIXEL_LIMIT[1], time_limit_s=30)
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options")


@pytest.fixture(scope="module")
def client(untrained):
    with TestClient(create_app(untrained, LIMITS), base_url=LOCAL) as client:
        yield client


def strict_json(text: str):
    """JSON as browsers read it: no NaN or Infinity."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_answered(response) -> dict:
    """Not a 5xx, the security headers, a JSON body: the detections or an error message."""
    assert response.status_code < 500, (response.status_code, response.text)
    for name in SECURITY_HEADERS:
        assert name in response.headers, (response.status_code, dict(response.headers))
    body = strict_json(response.text)
    if response.status_code == 200:
        assert isinstance(body["detections"], list)
    else:
        assert isinstance(body["error"], str) and body["error"]
    return body


def encoded(width: int, height: int, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 160, 90)).save(buffer, format)
    return buffer.getvalue()


def mpo(width: int = 48, height: int = 32) -> bytes:
    """A phone camera's MPO: a JPEG with a second picture after it."""
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (width, height), "red"), Image.new("RGB", (width, height), "blue")
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    return buffer.getvalue()


@pytest.mark.parametrize("method", list(MODELS))
def test_every_method_takes_an_image_at_the_limit_and_refuses_one_pixel_more(client, method):
    width, height = PIXEL_LIMIT
    at_limit = client.post(
        "/api/detect", files={"image": ("a.png", encoded(width, height), "image/png")}, data={"model": method}
    )
    assert at_limit.status_code == 200 and assert_answered(at_limit)["image"] == {
        "width": width,
        "height": height,
    }
    over = client.post(
        "/api/detect",
        files={"image": ("a.png", encoded(width + 1, height), "image/png")},
        data={"model": method},
    )
    assert over.status_code == 413 and f"limit of {width * height}" in assert_answered(over)["error"]


def test_an_mpo_photo_is_an_image(client):
    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    response = client.post(
        "/api/detect", files={"image": ("photo.jpg", data, "image/jpeg")}, data={"model": "yolov1"}
    )
    assert response.status_code == 200 and assert_answered(response)["image"] == {"width": 48, "height": 32}


IMAGES = st.one_of(
    st.binary(max_size=600),
    st.builds(
        encoded,
        st.integers(1, PIXEL_LIMIT[0] + 2),
        st.integers(1, PIXEL_LIMIT[1] + 2),
        st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"]),
    ),
    st.builds(lambda cut: mpo()[:cut], st.integers(0, 2000)),
    st.builds(
        lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
        st.just(image_bytes(40, 30, "JPEG")),
        st.integers(0, 800),
        st.integers(0, 255),
    ),
)


@settings(max_examples=48, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(list(MODELS)),
    image=IMAGES,
    fields=st.dictionaries(
        st.sampled_from(["score_threshold", "inside", "extra"]),
        st.sampled_from(["0", "-1e308", "1e309", "true", "", "\x00", "ü" * 40]),
        max_size=3,
    ),
)
def test_fuzzed_images_and_fields_of_every_method_are_never_a_5xx(client, method, image, fields):
    files = {"image": ("a.png", image, "image/png")}
    assert_answered(client.post("/api/detect", files=files, data={"model": method, **fields}))


def framed(boundary: bytes, parts: list[tuple[bytes, bytes]], closing: bytes) -> bytes:
    body = b"".join(
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts
    )
    return body + closing


PART_HEADS = st.sampled_from(
    [
        b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png',
        b'Content-Disposition: form-data; name="image"',
        b"Content-Disposition: form-data",
        b"",
        b'Content-Disposition: form-data; name="image"; filename="\xff\xfe"',
        b"Content-Type: image/png",
        b'Content-Disposition: form-data; name="model"',
        b'Content-Disposition: attachment; name="image"; filename=a',
        b"X-" + b"a" * 70_000 + b": b",
    ]
)
CONTENT_TYPES = st.sampled_from(
    [
        "multipart/form-data; boundary={b}",
        'multipart/form-data; boundary="{b}"',
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=other",
        "multipart/form-data; boundary={b}; charset=x-nope",
        "multipart/mixed; boundary={b}",
        "MULTIPART/FORM-DATA; BOUNDARY={b}",
        "multipart/form-data; boundary=" + "b" * 300,
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    boundary=st.sampled_from([b"detlab", b"a", b"--", b"x" * 200, b"\xc3\x28"]),
    parts=st.lists(
        st.tuples(PART_HEADS, st.sampled_from([encoded(20, 10), b"", b"yolov1", b"\r\n--detlab"])), max_size=4
    ),
    closing=st.sampled_from([b"--detlab--\r\n", b"--detlab--", b"", b"--detlab", b"--other--\r\n"]),
    content_type=CONTENT_TYPES,
    cut=st.one_of(st.none(), st.integers(0, 300)),
    headers=st.dictionaries(
        st.sampled_from(["content-length", "content-disposition", "transfer-encoding", "origin"]),
        st.sampled_from(["9" * 5000, "0" * 5000 + "7", "-1", "1e3", "abc", "", "null", "chunked"]),
        max_size=2,
    ),
)
def test_broken_multipart_framing_and_headers_are_never_a_5xx(
    client, boundary, parts, closing, content_type, cut, headers
):
    body = framed(boundary, parts, closing)
    body = body if cut is None else body[:cut]
    sent = {"content-type": content_type.encode().replace(b"{b}", boundary), **headers}
    response = client.post("/api/detect", content=body, headers=sent)
    assert_answered(response)
    if headers.get("content-length", "").startswith("9" * 100):  # absurd, and refused before any reading
        # (a foreign Origin beside it is refused first, also unread)
        assert response.status_code in ((413, 403) if "origin" in headers else (413,))


def with_non_finite_outputs(forward):
    """``forward`` whose first detection scores NaN and whose second box is infinite."""

    def corrupted(images, *args, **kwargs):
        outputs = forward(images, *args, **kwargs)
        for output in outputs:
            if len(output["scores"]) > 0:
                output["scores"][0] = float("nan")
            if len(output["boxes"]) > 1:
                output["boxes"][1, 2] = float("inf")
        return outputs

    return corrupted


@pytest.mark.parametrize("method", list(MODELS))
def test_non_finite_model_outputs_are_dropped_from_every_method(untrained, method, monkeypatch):
    predictor = untrained[method]
    monkeypatch.setattr(predictor.model, "forward", with_non_finite_outputs(predictor.model.forward))
    with TestClient(create_app({method: predictor}, LIMITS), base_url=LOCAL) as client:
        for inside in ("false", "true"):
            response = client.post(
                "/api/detect",
                files={"image": ("a.png", image_bytes(64, 48), "image/png")},
                data={"score_threshold": "-1e9", "inside": inside},
            )
            assert (
                response.status_code == 200 and "NaN" not in response.text and "Infinity" not in response.text
            )
            assert_answered(response)


class NonFiniteModel(DetectorModule):
    """Detections and look-inside views full of NaN and infinities, beside finite ones."""

    def forward(self, images, targets=None, trace=None):
        nan, inf = float("nan"), float("inf")
        boxes = torch.tensor([[1.0, 2.0, 10.0, 12.0], [nan, 0, 4, 4], [0, 0, inf, 4], [0, 0, 3, 3]])
        return [
            {
                "boxes": boxes,
                "scores": torch.tensor([0.9, 0.8, 0.7, inf]),
                "labels": torch.tensor([1, 2, 3, 1]),
            }
        ]

    def look_inside(self, image, class_name):
        output = self([image])[0]
        points = torch.tensor([[1.0, 1.0], [float("nan"), 2.0]])
        views = [
            BoxesView("boxes", output["boxes"], ["a", "b", "c", "d"], output["scores"]),
            HeatmapView(
                "map",
                torch.tensor([[float("nan"), float("inf")], [-float("inf"), 0.5]]),
                (0.0, float("nan"), 10.0, 10.0),
            ),
            PointsView("points", points, ["p", "q"], torch.tensor([float("nan"), 1.0])),
            WindowView("window", torch.full((3, 8, 8), float("nan")), points=points, labels=["p", "q"]),
        ]
        return output, Inside([], views)


def test_non_finite_detections_and_views_become_valid_json():
    with TestClient(create_app({"nan": Predictor(NonFiniteModel(), CLASSES)}), base_url=LOCAL) as client:
        response = client.post(
            "/api/detect",
            files={"image": ("a.png", image_bytes(32, 32), "image/png")},
            data={"score_threshold": "0", "inside": "true"},
        )
    answer = assert_answered(response)
    assert [d["bbox"] for d in answer["detections"]] == [[1.0, 2.0, 9.0, 10.0]]  # the one finite detection
    boxes, heatmap, points, window = answer["inside"]["views"]
    assert (
        boxes["boxes"] == [[1.0, 2.0, 10.0, 12.0]] and boxes["labels"] == ["a"] and boxes["scores"] == [0.9]
    )
    assert heatmap["values"] == [[0.0, 1.0], [0.0, 0.5]] and heatmap["region"] == [0.0, 0.0, 10.0, 10.0]
    assert points["points"] == [] and points["labels"] == []  # the finite point's score is NaN
    assert window["points"] == [[1.0, 1.0]] and window["labels"] == ["p"]


def raw_post(port: int, head_length: int, body: bytes) -> bytes:
    return (
        f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {head_length}\r\n"
        "Content-Type: multipart/form-data; boundary=detlab\r\n\r\n"
    ).encode() + body


def test_disconnects_mid_upload_are_not_server_errors(untrained, caplog):
    """A real uvicorn on 127.0.0.1; clients hang up at every point of their upload."""
    app = create_app({"yolov1": untrained["yolov1"]}, LIMITS)
    body = framed(
        b"detlab",
        [(b'Content-Disposition: form-data; name="image"; filename="a.png"', encoded(60, 40))],
        b"--detlab--\r\n",
    )
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to caplog's
    uvicorn_log.addHandler(caplog.handler)
    try:
        answered = hang_up_at_every_point(app, body)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [status for status in answered if status >= 500], answered
    assert not [record for record in caplog.records if "Exception in ASGI application" in record.getMessage()]


def hang_up_at_every_point(app, body: bytes):
    """Clients hanging up after every few bytes of an upload, then one whole upload (answered 200);
    the statuses the server answered."""
    with ServerThread(app) as server:
        for cut in (0, 10, 60, len(body) // 2, len(body) - 3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
                connection.sendall(raw_post(server.port, len(body), body[:cut]))
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(raw_post(server.port, len(body), body))
            assert connection.recv(12) == b"HTTP/1.1 200"  # the server still answers
        deadline = time.monotonic() + 5
        while sum(app.state.answered.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    return app.state.answered
