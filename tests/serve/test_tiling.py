"""``POST /api/detect`` with the tile request option: tiled inference, as the predictor runs it."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from serving import LOCAL, decoded, image_bytes

from detlab.engine.predict import Predictor
from detlab.serve.app import create_app
from detlab.tiles import Tiling


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app([trained_run / "best"], device="cpu"), base_url=LOCAL) as client:
        yield client


def post(client, data: bytes, **fields):
    return client.post("/api/detect", files={"image": ("image.png", data, "image/png")}, data=fields)


def test_a_tiled_request_answers_what_the_tiled_predictor_finds(client, trained_run):
    data = image_bytes(160, 120)
    answer = post(client, data, tile="64", overlap="0.25", score_threshold="0.0").json()
    predictor = Predictor.from_checkpoint(trained_run / "best", device="cpu")
    expected = predictor.predict(decoded(data), 0.0, tiling=Tiling(64, 0.25))
    assert len(answer["detections"]) == len(expected["boxes"]) > 0
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in answer["detections"])])
    torch.testing.assert_close(boxes, expected["boxes"], atol=0.01, rtol=0)
    untiled = post(client, data, score_threshold="0.0").json()["detections"]
    assert [d["bbox"] for d in untiled] != [d["bbox"] for d in answer["detections"]]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tile": "8"}, "tile side of at least 16"),
        ({"tile": "sixty"}, "tile and overlap"),
        ({"tile": "64", "overlap": "0.9"}, "--overlap 0.9"),
        ({"tile": "64", "inside": "true"}, "inside and tile cannot be combined"),
    ],
)
def test_bad_tile_requests_are_refused(client, fields, message):
    answer = post(client, image_bytes(96, 80), **fields)
    assert answer.status_code == 400 and message in answer.json()["error"]
