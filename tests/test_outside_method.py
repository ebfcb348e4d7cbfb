"""A method defined outside the package (``tests/outside_method.py``) and registered with one line
goes through every command with no change to ``src/detlab``: it trains and resumes exactly,
evaluates, predicts, exports to ONNX (and the runtime runs the file), serves with its look-inside
view, and takes its place in ``detlab compare``."""

import json
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import detlab
from detlab.cli import main
from detlab.engine.checkpoint import load_checkpoint
from detlab.engine.run import resolve_run_config, train_run
from detlab.models import MODELS
from detlab.serve.app import create_app

sys.path.insert(0, str(Path(__file__).parent))
from outside_method import METHOD  # noqa: E402

DATA = ["--data", "synthetic", "--set", "data.synthetic_images=12"]


@pytest.fixture(scope="module")
def registered():
    """``MODELS["outside"] = METHOD``, the one line a user adds, undone after the module."""
    MODELS["outside"] = METHOD
    yield "outside"
    del MODELS["outside"]


@pytest.fixture(scope="module")
def trained(registered, tmp_path_factory):
    folder = tmp_path_factory.mktemp("outside")
    run = folder / "run"
    assert (
        main(
            [
                "train",
                "outside",
                *DATA,
                "--data-root",
                str(folder / "data"),
                "--max-steps",
                "6",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    return folder, run


def config(folder: Path, out: Path, steps: int):
    return resolve_run_config(
        "outside",
        data={"spec": "synthetic", "root": str(folder / "data"), "synthetic_images": 12},
        train={"out_dir": str(out), "max_steps": steps, "device": "cpu"},
    )


def test_it_trains_through_the_command_line_and_resumes_exactly(trained):
    folder, run = trained
    stored = load_checkpoint(run / "last.pt")
    assert stored["model_name"] == "outside" and stored["progress"]["step"] == 6
    assert stored["config"]["model"] == {"window": 32, "width": 8}
    torch.manual_seed(0)
    straight = train_run(config(folder, folder / "straight", 6))
    torch.manual_seed(0)
    assert train_run(config(folder, folder / "split", 6), stop_at_step=3).status == "paused"
    resumed = train_run(config(folder, folder / "split", 6), resume=folder / "split")
    assert resumed.status == "finished" and resumed.state.step == straight.state.step == 6
    expected, found = (
        load_checkpoint(folder / "straight" / "last.pt")["model"],
        load_checkpoint(folder / "split" / "last.pt")["model"],
    )
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, atol=1e-6, rtol=0)


def test_it_evaluates_and_predicts(trained):
    folder, run = trained
    code = main(
        [
            "eval",
            "--checkpoint",
            str(run),
            "--data",
            "synthetic",
            "--data-root",
            str(folder / "data"),
            "--max-images",
            "3",
            "--out",
            str(folder / "eval"),
        ]
    )
    assert code == 0 and "AP50" in json.loads((folder / "eval" / "report.json").read_text())["metrics"]
    image = sorted((folder / "data" / "JPEGImages").glob("*.jpg"))[0]
    assert (
        main(["predict", "--checkpoint", str(run), "--input", str(image), "--out", str(folder / "predicted")])
        == 0
    )
    entries = json.loads((folder / "predicted" / "detections.json").read_text())
    assert len(entries) == 1 and entries[0]["category_id"] in range(1, 5)


def test_it_exports_and_the_runtime_gives_the_same_guess(trained):
    folder, run = trained
    onnx_file = folder / "outside.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(onnx_file)]) == 0
    image = sorted((folder / "data" / "JPEGImages").glob("*.jpg"))[1]
    expected, found = detlab.load(run, device="cpu").predict(image), detlab.load(onnx_file).predict(image)
    assert found["labels"].tolist() == expected["labels"].tolist() and found["names"] == expected["names"]
    torch.testing.assert_close(torch.from_numpy(found["boxes"]), expected["boxes"], atol=0.05, rtol=0)


def test_it_is_served_with_its_look_inside_view(trained):
    folder, run = trained
    image = sorted((folder / "data" / "JPEGImages").glob("*.jpg"))[2]
    with TestClient(create_app([run], device="cpu"), base_url="http://127.0.0.1") as client:
        assert [model["method"] for model in client.get("/api/models").json()["models"]] == ["outside"]
        answer = client.post(
            "/api/detect",
            files={"image": ("image.jpg", image.read_bytes(), "image/jpeg")},
            data={"score_threshold": "0", "inside": "true"},
        ).json()
    assert [stage["name"] for stage in answer["inside"]["stages"]] == [
        "warp to 32 x 32",
        "conv stem",
        "class and box heads",
    ]
    assert [view["kind"] for view in answer["inside"]["views"]] == ["heatmap", "boxes"]
    assert len(answer["detections"]) == 1


def test_it_takes_its_place_in_detlab_compare(registered, tmp_path):
    report = detlab.compare(
        data="synthetic",
        methods="outside",
        budget_s=2,
        out=tmp_path / "compare",
        set=["data.synthetic_images=12", f"data.root={tmp_path / 'data'}"],
    )
    (row,) = report["rows"]
    assert row["method"] == "outside" and row["status"] == "done" and 0 <= row["AP_coco"] <= 1
    assert "a method from outside" in (tmp_path / "compare" / "compare.md").read_text()
