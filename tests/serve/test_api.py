"""The JSON API on a checkpoint trained by ``detlab.train``, and the look-inside of every method."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from serving import CLASSES, LOCAL, decoded, image_bytes

from detlab.cli import build_parser
from detlab.engine.predict import Predictor
from detlab.models import MODELS
from detlab.serve.app import create_app
from detlab.serve.inside import look_inside
from detlab.serve.limits import Limits
from detlab.serve.samples import SAMPLES, SAMPLES_DIR
from detlab.serve.served import served_models


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app([trained_run / "best"], device="cpu"), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def every_method(untrained):
    with TestClient(create_app(untrained), base_url=LOCAL) as client:
        yield client


def post(client, data: bytes, **fields):
    return client.post("/api/detect", files={"image": ("image.png", data, "image/png")}, data=fields)


def xyxy(detections: list[dict]) -> torch.Tensor:
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in detections)]).reshape(
        -1, 4
    )


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_detect_answers_what_the_predictor_finds(client, trained_run, threshold):
    data = image_bytes(96, 80)
    answer = post(client, data, model="shapes", score_threshold=str(threshold)).json()
    expected = Predictor.from_checkpoint(trained_run / "best", device="cpu").predict(decoded(data), threshold)
    assert answer["model"] == "shapes" and answer["image"] == {"width": 96, "height": 80}
    assert len(answer["detections"]) == len(expected["boxes"])
    if threshold == 0.0:
        assert len(answer["detections"]) > 0  # an untrained head scores every class a little
    torch.testing.assert_close(xyxy(answer["detections"]), expected["boxes"], atol=0.01, rtol=0)
    assert [d["category_name"] for d in answer["detections"]] == expected["names"]
    assert [d["category_id"] for d in answer["detections"]] == expected["labels"].tolist()
    assert all(d["score"] >= threshold for d in answer["detections"])
    assert (
        set(answer["timings"]) == {"queue_ms", "decode_ms", "model_ms", "total_ms"} and "inside" not in answer
    )


def test_models_health_page_and_samples(client, trained_run):
    assert client.get("/healthz").json()["status"] == "ok"
    listed = client.get("/api/models").json()
    (model,) = listed["models"]
    assert {key: model[key] for key in ("name", "method", "classes", "checkpoint")} == {
        "name": "shapes",
        "method": "faster_rcnn",
        "classes": CLASSES,
        "checkpoint": "shapes/best.pt",  # the run folder and file, never the server's absolute path
    }
    assert 0 < model["max_pixels"] <= Limits().max_pixels
    assert listed["limits"]["max_upload_bytes"] == Limits().max_upload_bytes
    page = client.get("/")
    assert page.status_code == 200 and '<tbody id="detections">' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    samples = client.get("/api/samples").json()["samples"]
    assert [sample["name"] for sample in samples] == sorted(SAMPLES)
    for sample in samples:
        assert client.get(sample["url"]).status_code == 200
        assert (SAMPLES_DIR / f"{sample['name']}.png").stat().st_size < 50_000
    missing = client.get("/static/none.js")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_page_loads_nothing_from_elsewhere():
    """Every ``src``/``href``/``url(`` of the page's files is this server's (or a data: URL)."""
    import re

    for path in SAMPLES_DIR.parent.glob("*.*"):
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name
        for reference in re.findall(r"""(?:src|href)=["']([^"']+)""", text):
            assert reference.startswith(("/static/", "data:")), (path.name, reference)


def test_look_inside_of_the_trained_model_shows_the_rpn_proposals(client):
    answer = post(client, image_bytes(96, 80), score_threshold="0", inside="true").json()
    stages = answer["inside"]["stages"]
    assert [stage["name"].split(" ")[0] for stage in stages] == ["resize", "backbone", "RPN:", "RoI", "boxes"]
    assert all(stage["ms"] >= 0 for stage in stages)
    assert sum(stage["ms"] for stage in stages) <= answer["timings"]["model_ms"] + 1
    view, anchors = answer["inside"]["views"]
    assert view["kind"] == "boxes" and 0 < len(view["boxes"]) <= 300
    assert all(0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 80 for x1, y1, x2, y2 in view["boxes"])
    assert anchors["kind"] == "boxes" and "anchors of one location" in anchors["title"]
    plain = post(client, image_bytes(96, 80), score_threshold="0").json()
    assert xyxy(plain["detections"]).tolist() == xyxy(answer["detections"]).tolist()


FIRST_STAGES = {
    "faster_rcnn": "resize", "fast_rcnn": "Selective Search", "rcnn": "Selective Search", "overfeat": "scale",
    "yolo": "letterbox", "yolov1": "warp", "localizer": "warp", "keypoints": "warp",
}  # fmt: skip
VIEW_KINDS = {
    "faster_rcnn": {"boxes"}, "fast_rcnn": {"boxes", "heatmap"}, "rcnn": {"boxes", "window"}, "overfeat": {"heatmap"},
    "yolo": {"heatmap", "points"}, "yolov1": {"heatmap"}, "localizer": {"window", "boxes"}, "keypoints": {"window", "points"},
}  # fmt: skip


@pytest.mark.parametrize("method", list(MODELS))
def test_every_method_shows_its_stages_with_times(every_method, untrained, method):
    data = image_bytes(64, 56)
    answer = post(every_method, data, model=method, score_threshold="0", inside="true").json()
    stages, views = answer["inside"]["stages"], answer["inside"]["views"]
    assert stages[0]["name"].startswith(FIRST_STAGES[method]) and len(stages) >= 2
    assert all(isinstance(stage["ms"], float) and stage["ms"] >= 0 for stage in stages)
    assert {view["kind"] for view in views} == VIEW_KINDS[method]
    for view in views:
        if view["kind"] == "heatmap":
            assert (
                all(0 <= value <= 1 for row in view["values"] for value in row) and len(view["region"]) == 4
            )
        if view["kind"] == "window":
            assert view["src"].startswith("data:image/png;base64,")
    # Looking inside changes nothing: the same detections as the predictor's.
    expected = untrained[method].predict(decoded(data), 0.0)
    assert len(answer["detections"]) == len(expected["boxes"])
    torch.testing.assert_close(xyxy(answer["detections"]), expected["boxes"], atol=0.01, rtol=0)
    if method == "keypoints":
        assert len(answer["detections"][0]["keypoints"]) == 3 * expected["keypoints"].shape[1]


def test_looking_inside_in_several_threads_at_once_keeps_each_pass_apart(untrained):
    """The model records a pass's stages in that call's own trace (no hooks on the shared model),
    so requests looking inside at the same time each see their own pass, whole."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = untrained["yolo"]
    image = decoded(image_bytes(64, 64))
    alone_output, alone = look_inside(predictor, image)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: look_inside(predictor, image), range(8)))
    for output, inside in results:
        assert [stage["name"] for stage in inside["stages"]] == [stage["name"] for stage in alone["stages"]]
        assert [view["title"] for view in inside["views"]] == [view["title"] for view in alone["views"]]
        torch.testing.assert_close(output["boxes"], alone_output["boxes"])


def test_models_are_named_after_their_runs(trained_run, untrained):
    models = served_models([trained_run / "best", trained_run, untrained["yolov1"]], device="cpu")
    assert list(models) == ["shapes", "shapes-2", "yolov1"]
    assert models["shapes"].checkpoint == str(trained_run / "best.pt") and models["yolov1"].checkpoint == ""
    with pytest.raises(ValueError, match="no model to serve"):
        served_models([])
    with pytest.raises(FileNotFoundError):
        served_models([trained_run / "nothing"])


def test_the_serve_command_line():
    args = build_parser().parse_args(
        [
            "serve",
            "--checkpoint",
            "runs/a/best",
            "--checkpoint",
            "runs/b",
            "--port",
            "9000",
            "--max-upload-bytes",
            "1000",
            "--time-limit-s",
            "5",
            "--queue-size",
            "0",
        ]
    )
    assert args.checkpoint == ["runs/a/best", "runs/b"] and args.host == "127.0.0.1" and args.port == 9000
    assert (args.max_upload_bytes, args.time_limit_s, args.queue_size, args.max_concurrent) == (
        1000,
        5.0,
        0,
        1,
    )
    with pytest.raises(ValueError, match="queue_size"):
        Limits(queue_size=-1)


def test_detlab_serve_runs_a_server(trained_run):
    """``python -m detlab serve`` in a subprocess: up, answering, stopped by SIGTERM."""
    import subprocess
    import sys
    import time

    import httpx
    from serving import free_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "detlab",
        "serve",
        "--checkpoint",
        str(trained_run / "best"),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "detlab serve did not start"
                time.sleep(0.2)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/detect",
            files={"image": ("a.png", image_bytes(), "image/png")},
            data={"score_threshold": "0"},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json()["model"] == "shapes"
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert f"shapes (faster_rcnn) on http://127.0.0.1:{port}/" in errors
