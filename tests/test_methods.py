"""Every method of ``detlab.models.MODELS`` on the one engine: it trains through ``detlab train``,
resumes exactly (2N steps straight equal N, a pause, a resume and N more), and its checkpoint is
opened by ``detlab.load``, ``detlab predict`` and ``detlab eval --checkpoint``."""

import json

import pytest
import torch

import detlab
from detlab.cli import main
from detlab.data import loading as detlab_loading
from detlab.engine.checkpoint import load_checkpoint
from detlab.engine.predict import evaluate_checkpoint
from detlab.engine.run import resolve_run_config, train_run
from detlab.models import MODELS

# Per method: the data it trains on and settings that make a run take a second or two.
TINY = {
    "localizer": ("synthetic-single", ["model.hidden_dim=16", "data.synthetic_images=20"]),
    "keypoints": ("synthetic-pose", ["model.hidden_dim=16", "data.synthetic_images=20"]),
    "overfeat": ("synthetic", ["model.hidden_dim=16", "model.scales=[1.0]", "model.windows_per_image=2",
                               "data.synthetic_images=12"]),
    "fast_rcnn": ("synthetic", ["model.min_size=96", "model.max_size=96", "model.backbone_width=8",
                                "model.proposal_method=sliding", "model.max_proposals=100", "data.synthetic_images=12"]),
    "faster_rcnn": ("synthetic", ["model.min_size=96", "model.max_size=96", "model.backbone_width=8",
                                  "data.synthetic_images=12"]),
    "rcnn": ("synthetic", ["model.backbone_width=8", "model.window_size=32", "model.pool_size=2",
                           "model.representation_size=16", "model.windows_per_batch=16", "model.proposal_method=sliding",
                           "model.max_proposals=50", "data.synthetic_images=12"]),
    "yolo": ("synthetic", ["model.input_size=96", "model.backbone_width=8", "model.neck_channels=[16,32,64]",
                           "data.synthetic_images=12"]),
    "yolov1": ("synthetic", ["model.input_size=96", "model.backbone_width=8", "model.hidden=32",
                             "model.grid_channels=8", "data.synthetic_images=12"]),
}  # fmt: skip


def cache_settings(name: str, folder) -> list[str]:
    """Proposal and feature caches of a test run in its temporary folder."""
    settings = [f"model.proposal_cache_dir={folder}/proposals"] if name in ("fast_rcnn", "rcnn") else []
    return settings + ([f"model.feature_cache_dir={folder}/features"] if name == "rcnn" else [])


def tiny_config(name: str, data_root, out, recipe: str = "", **train):
    spec, overrides = TINY[name]
    extra = cache_settings(name, data_root)
    return resolve_run_config(
        name,
        overrides=[*overrides, *extra],
        data={"spec": spec, "root": str(data_root / spec)},
        train={
            "out_dir": str(out),
            "batch_size": 2,
            "device": "cpu",
            "log_every": 1,
            "recipe": recipe,
            **train,
        },
    )


def test_every_method_is_registered():
    assert (
        set(MODELS)
        == {"localizer", "keypoints", "overfeat", "rcnn", "fast_rcnn", "faster_rcnn", "yolo", "yolov1"}
        == set(TINY)
    )


@pytest.mark.parametrize("name,recipe", [*((name, "") for name in TINY), ("localizer", "4step")])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, name, recipe):
    steps = 6 if recipe == "4step" else 4
    straight = train_run(tiny_config(name, tmp_path, tmp_path / "straight", recipe, max_steps=steps))
    paused = train_run(
        tiny_config(name, tmp_path, tmp_path / "split", recipe, max_steps=steps), stop_at_step=1
    )
    assert paused.status == "paused"
    resumed = train_run(
        tiny_config(name, tmp_path, tmp_path / "split", recipe, max_steps=steps), resume=tmp_path / "split"
    )
    assert resumed.status == "finished" and resumed.state.step == straight.state.step
    expected = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    found = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, atol=1e-5, rtol=0, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", list(TINY))
def test_every_checkpoint_opens_in_load_predict_and_eval(tmp_path, name):
    spec, overrides = TINY[name]
    run = tmp_path / "run"
    data = ["--data", spec, "--data-root", str(tmp_path / spec)]
    extra = [item for setting in cache_settings(name, tmp_path) for item in ("--set", setting)]
    sets = [item for override in overrides for item in ("--set", override)] + extra
    assert (
        main(["train", name, *data, "--max-steps", "2", "--batch-size", "2", "--out", str(run), *sets]) == 0
    )
    stored = load_checkpoint(run / "last.pt")
    # DeepPose's cascade trains stage 2 last (1 of the 2 steps); R-CNN ends in a non-gradient step
    final_stage_steps = {"keypoints": 1, "rcnn": 0}.get(name, 2)
    assert stored["model_name"] == name and stored["progress"]["step"] == final_stage_steps
    assert stored["optimizer"] or name == "rcnn"

    dataset = detlab_loading.load_dataset(
        spec, "test", root=tmp_path / spec, num_synthetic=20 if name in ("localizer", "keypoints") else 12
    )
    image_path = dataset.records[0].image_path
    predictor = detlab.load(run, device="cpu")
    found = predictor.predict(image_path)
    assert {"boxes", "scores", "labels", "names"} <= set(found)
    assert ("keypoints" in found) == (name == "keypoints")
    import numpy as np
    from PIL import Image

    as_array = np.asarray(Image.open(image_path).convert("RGB"))
    for form in (Image.open(image_path), as_array):  # the forms users hold an image in
        again = predictor.predict(form)
        torch.testing.assert_close(again["scores"], found["scores"])

    # An untrained OverFeat votes nowhere at its default threshold; --set changes a test-time setting.
    test_time = ["--set", "model.score_threshold=0"] if name == "overfeat" else []
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run),
                "--input",
                str(image_path),
                "--out",
                str(tmp_path / "p"),
                *test_time,
            ]
        )
        == 0
    )
    entries = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert entries and ("keypoints" in entries[0]) == (name == "keypoints")

    report, _ = evaluate_checkpoint(
        run, spec, "test", device="cpu", data_root=str(tmp_path / spec), max_images=3
    )
    expected_metric = {"localizer": "localization_top1", "keypoints": "pck@0.2"}.get(name, "AP50")
    assert expected_metric in report["metrics"] and report["num_images"] == min(3, len(dataset))
    code = main(
        [
            "eval",
            "--checkpoint",
            str(run),
            "--data",
            spec,
            "--data-root",
            str(tmp_path / spec),
            "--max-images",
            "2",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert (
        code == 0 and expected_metric in json.loads((tmp_path / "e" / "report.json").read_text())["metrics"]
    )


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    spec, overrides = TINY["faster_rcnn"]
    run = tmp_path / "run"
    sets = [item for override in overrides for item in ("--set", override)]
    args = [
        "train",
        "faster_rcnn",
        "--data",
        spec,
        "--data-root",
        str(tmp_path / spec),
        "--max-steps",
        "2",
        *sets,
    ]
    assert main([*args, "--out", str(run)]) == 0
    before = load_checkpoint(run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 0
    assert "is finished" in capsys.readouterr().out
    after = load_checkpoint(run / "last.pt")
    assert after["progress"] == before["progress"] and after["metrics"] == before["metrics"]
    assert main(["train", "--resume", str(run), "--max-steps", "3"]) == 0  # a larger budget extends it
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 3


def test_a_fresh_run_of_any_method_refuses_a_folder_holding_a_run(tmp_path, capsys):
    spec, overrides = TINY["localizer"]
    sets = [item for override in overrides for item in ("--set", override)]
    args = [
        "train",
        "localizer",
        "--data-root",
        str(tmp_path / spec),
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        *sets,
    ]
    assert main(args) == 0
    assert "localizer: training in" in capsys.readouterr().out  # it says where it writes
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
