import json

import pytest

from detlab.cli import main


def test_train_localizer_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    code = main([
        "train", "localizer", "--recipe", "4step", "--regression", "specific", "--attach", "conv",
        "--loss", "smooth_l1", "--data", "synthetic-single", "--data-root", str(tmp_path / "data"),
        "--synthetic-images", "20", "--window-size", "96", "--max-steps", "4", "--batch-size", "4",
        "--out", str(out), "--set", "model.hidden_dim=16", "--set", "train.log_every=0",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["history"]) == {"step1_classifier", "step3_regressor"}
    assert results["test"]["num_images"] == 3  # 15% of 20 images
    for key in ("classification_accuracy", "mean_iou", "top1_localization", "top5_localization"):
        assert 0 <= results["test"][key] <= 1
    assert "recipe: 4step" in (out / "config.yaml").read_text()

    from detlab.models.localizer_training import load_localizer

    model, config, classes = load_localizer(out / "model.pt")
    assert config.model.regression == "specific" and model.num_box_sets == len(classes) == 4


def test_train_keypoints_from_the_command_line(tmp_path):
    out = tmp_path / "pose"
    code = main([
        "train", "keypoints", "--synthetic-images", "20", "--stages", "1", "--max-steps", "2",
        "--batch-size", "4", "--out", str(out), "--set", "model.hidden_dim=16", "--set", "train.log_every=0",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [stage["stage"] for stage in results["stages"]] == [1, 2]


def test_keypoints_reject_a_data_flag(tmp_path, capsys):
    assert main(["train", "keypoints", "--data", "synthetic", "--out", str(tmp_path)]) == 2
    assert "--data does not apply" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--recipe", "both"], ["--attach", "middle"]])
def test_bad_choices_are_rejected(flag):
    with pytest.raises(SystemExit):
        main(["train", "localizer", *flag])
