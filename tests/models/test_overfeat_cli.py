import json

from detlab.cli import main


def test_overfeat_train_and_evaluate_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    code = main([
        "overfeat", "--data", "synthetic", "--data-root", str(tmp_path / "data"), "--window-size", "96",
        "--max-steps", "3", "--batch-size", "4", "--scales", "1.0", "1.5", "--score-threshold", "0.3",
        "--eval-images", "2", "--out", str(out), "--set", "model.synthetic_images=12",
        "--set", "model.hidden_dim=16", "--set", "train.log_every=0", "--set", "detector.windows_per_image=2",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "detection.json").read_text())
    assert results["scales"] == [1.0, 1.5]
    assert results["detection"]["images"] == 2
    assert 0 <= results["detection"]["mAP@0.5"] <= 1
    assert "score_threshold: 0.3" in (out / "overfeat.yaml").read_text()
    # Evaluating the saved checkpoint again gives the same mAP (deterministic detector).
    again = tmp_path / "again"
    assert main(["overfeat", "--checkpoint", str(out / "model.pt"), "--data", "synthetic", "--data-root",
                 str(tmp_path / "data"), "--scales", "1.0", "1.5", "--score-threshold", "0.3", "--eval-images", "2",
                 "--out", str(again), "--set", "model.synthetic_images=12"]) == 0  # fmt: skip
    repeated = json.loads((again / "detection.json").read_text())["detection"]
    assert repeated["mAP@0.5"] == results["detection"]["mAP@0.5"]
    assert repeated["per_class_AP"] == results["detection"]["per_class_AP"]
