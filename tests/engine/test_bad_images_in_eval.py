"""Broken image files met by ``detlab eval --checkpoint`` and ``detlab predict`` (issue 38): the
bad-input policy of training (``data.on_bad``) as ``--on-bad`` / ``on_bad=``; under ``skip`` the
summary and the report say how many images were left out, which, and why."""

import json
import shutil

import pytest
import torch

from detlab import config as config_io
from detlab.cli import main
from detlab.data.synthetic import make_synthetic
from detlab.engine.checkpoint import save_checkpoint
from detlab.engine.predict import Predictor, evaluate_checkpoint, predict_files
from detlab.engine.run import build_model, resolve_run_config

SMALL = ["model.min_size=96", "model.max_size=96", "model.backbone_width=8", "model.fpn_channels=16"]


@pytest.fixture(scope="module")
def broken_voc(tmp_path_factory):
    """30 synthetic images; two of the test split truncated, and a checkpoint of its classes."""
    root = make_synthetic(tmp_path_factory.mktemp("voc") / "voc", num_images=30, seed=0)
    test_ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    broken = [root / "JPEGImages" / f"{image_id}.jpg" for image_id in test_ids[:2]]
    for path in broken:
        path.write_bytes(path.read_bytes()[:600])
    classes = (root / "classes.txt").read_text().split()
    run_config = resolve_run_config("faster_rcnn", overrides=SMALL + [f"data.spec=voc:{root}"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        {
            "model_name": "faster_rcnn",
            "classes": classes,
            "config": config_io.to_dict(run_config),
            "model": build_model(run_config, len(classes)).state_dict(),
        },
        root.parent / "model.pt",
    )
    return root, broken, test_ids, checkpoint


def eval_command(root, checkpoint, *extra):
    return ["eval", "--checkpoint", str(checkpoint), "--data", f"voc:{root}", "--split", "test", *extra]


def test_eval_stops_naming_every_bad_image_and_the_way_past_them(broken_voc, capsys):
    root, broken, _, checkpoint = broken_voc
    assert main(eval_command(root, checkpoint, "--no-plots")) == 2
    error = capsys.readouterr().err
    assert all(str(path) in error for path in broken) and "--on-bad skip" in error
    assert "Traceback" not in error


def test_eval_on_bad_skip_scores_the_rest_and_lists_the_skipped_in_the_summary_and_report(
    broken_voc, tmp_path, capsys
):
    root, broken, test_ids, checkpoint = broken_voc
    out = tmp_path / "report"
    assert main(eval_command(root, checkpoint, "--on-bad", "skip", "--out", str(out), "--no-plots")) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 images (bad input, --on-bad skip):" in printed
    assert all(f"{path}: corrupt or truncated image" in printed for path in broken)
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == len(test_ids) - 2
    assert sorted(item["path"] for item in report["skipped"]) == sorted(str(path) for path in broken)
    assert all("truncated" in item["reason"] for item in report["skipped"])
    markdown = (out / "report.md").read_text()
    assert "skipped 2 images" in markdown and all(str(path) in markdown for path in broken)


def test_the_api_takes_the_same_policy_and_reports_bad_annotations_too(broken_voc, tmp_path):
    root, broken, test_ids, checkpoint = broken_voc
    copy = shutil.copytree(root, tmp_path / "voc")
    (copy / "Annotations" / f"{test_ids[2]}.xml").write_text("<annotation><object>")  # unreadable XML
    with pytest.warns(UserWarning, match="skipped"):
        report, _ = evaluate_checkpoint(checkpoint, f"voc:{copy}", "test", on_bad="skip")
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert str(copy / "Annotations" / f"{test_ids[2]}.xml") in skipped
    assert {str(copy / "JPEGImages" / path.name) for path in broken} <= set(skipped)
    assert report["num_images"] == len(test_ids) - 3
    with pytest.raises(ValueError, match="on_bad must be one of"):
        evaluate_checkpoint(checkpoint, f"voc:{copy}", "test", on_bad="ignore")


def test_predict_on_bad_skip_leaves_out_an_unreadable_image_and_says_which(broken_voc, tmp_path, capsys):
    root, broken, _, checkpoint = broken_voc
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted(set((root / "JPEGImages").glob("*.jpg")) - set(broken))[:2]
    for path in [*good, broken[0]]:
        shutil.copy(path, folder / path.name)
    base = ["predict", "--checkpoint", str(checkpoint), "--input", str(folder), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "stopped")]) == 2
    error = capsys.readouterr().err
    assert f"{folder / broken[0].name}: corrupt or truncated image" in error and "Traceback" not in error
    assert main([*base, "--out", str(tmp_path / "out"), "--on-bad", "skip"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 1 image (bad input, --on-bad skip):\n  {folder / broken[0].name}: corrupt" in printed
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [image["file_name"] for image in images] == [path.name for path in good]
    summary = predict_files(
        Predictor.from_checkpoint(checkpoint, device="cpu"), folder, tmp_path / "api", on_bad="skip"
    )
    assert summary["images"] == 2 and [item["path"] for item in summary["skipped"]] == [
        str(folder / broken[0].name)
    ]
