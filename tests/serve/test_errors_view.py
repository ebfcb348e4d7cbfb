"""The served page's Errors view (``detlab serve --data``): the numbers ``detlab eval --errors``
gives for the same checkpoint and data, figures and galleries by name only, and nothing without
``--data``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving import LOCAL

from detlab.engine.predict import evaluate_checkpoint
from detlab.eval.error_report import write_error_report
from detlab.eval.errors import ERROR_TYPES, SPECIAL_ERROR_TYPES
from detlab.serve.access import Access
from detlab.serve.app import create_app


@pytest.fixture(scope="module")
def data_spec(synthetic_root):
    return f"voc:{synthetic_root}"


@pytest.fixture(scope="module")
def client(trained_run, data_spec):
    app = create_app([trained_run / "best"], device="cpu", errors_data=data_spec)
    with TestClient(app, base_url=LOCAL) as client:
        yield client


def test_the_errors_view_holds_what_eval_errors_reports(client, trained_run, data_spec, tmp_path):
    answer = client.get("/api/errors").json()
    assert answer["data"] == data_spec
    assert [entry["type"] for entry in answer["types"]] == [*ERROR_TYPES, *SPECIAL_ERROR_TYPES]
    view = answer["models"]["shapes"]
    assert view["available"] and "folder" not in view
    report, result = evaluate_checkpoint(trained_run / "best", data_spec, None, device="cpu")
    expected = write_error_report(result.problem, tmp_path, image_paths=result.problem.image_paths)
    assert view["images"] == len(result.problem.image_ids) > 0
    assert view["AP50"] == pytest.approx(report["metrics"]["AP50"])
    assert view["dap"] == pytest.approx(expected["dap"])
    assert view["counts"] == expected["counts"]
    assert set(view["galleries"]) <= set(ERROR_TYPES) and view["galleries"]


def test_figures_and_galleries_are_served_by_name_only(client):
    view = client.get("/api/errors").json()["models"]["shapes"]
    for kind, gallery in view["galleries"].items():
        image = client.get(gallery["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg", kind
        assert image.content[:2] == b"\xff\xd8"
    for url in view["figures"].values():
        figure = client.get(url)
        assert figure.status_code == 200 and figure.content[:8] == b"\x89PNG\r\n\x1a\n"
    missing = [kind for kind in ERROR_TYPES if kind not in view["galleries"]]
    refused = [
        "/api/errors/shapes/" + (missing[0] if missing else "nothing") + ".jpg",  # no example of it
        "/api/errors/shapes/gallery_missed.jpg",  # a file name, not a type
        "/api/errors/shapes/errors.json",
        "/api/errors/shapes/..%2F..%2Fetc%2Fpasswd",
        "/api/errors/other/errors.png",
    ]
    for url in refused:
        answer = client.get(url)
        assert answer.status_code == 404 and "error" in answer.json(), url


def test_without_data_there_is_no_errors_view(untrained):
    with TestClient(create_app({"yolov1": untrained["yolov1"]}), base_url=LOCAL) as client:
        answer = client.get("/api/errors")
        assert answer.status_code == 404 and "--data" in answer.json()["error"]
        assert client.get("/api/errors/yolov1/errors.png").status_code == 404


def test_the_errors_view_needs_the_token_too(trained_run, data_spec):
    token = "errors-token"
    app = create_app([trained_run / "best"], device="cpu", errors_data=data_spec, access=Access(token=token))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/api/errors").status_code == 401
        view = client.get("/api/errors", headers={"Authorization": f"Bearer {token}"}).json()["models"][
            "shapes"
        ]
        assert client.get(view["figures"]["errors"]).status_code == 401


def test_a_keypoint_model_gets_a_view_saying_why_not(untrained):
    from detlab.serve.errors import unavailable_reason

    assert "not a box detector" in unavailable_reason(untrained["keypoints"])
    assert unavailable_reason(untrained["yolo"]) is None
