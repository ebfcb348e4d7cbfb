"""A data set with broken image files, met on the training path: checked before the first step."""

import json

import pytest

from detlab.cli import main
from detlab.data.synthetic import make_synthetic

SMALL = ["--set", "model.min_size=96", "--set", "model.max_size=96", "--set", "model.backbone_width=8"]


@pytest.fixture
def broken_voc(tmp_path):
    """20 synthetic images; two of the three of the test split truncated to their first 600 bytes."""
    root = make_synthetic(tmp_path / "voc", num_images=20, seed=0)
    test_ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    broken = [root / "JPEGImages" / f"{image_id}.jpg" for image_id in test_ids[:2]]
    for path in broken:
        path.write_bytes(path.read_bytes()[:600])
    return root, broken


def command(root, out, *extra):
    return [
        "train",
        "faster_rcnn",
        "--data",
        f"voc:{root}",
        "--set",
        "data.train_split=trainval",
        "--set",
        "data.val_split=test",
        "--max-steps",
        "2",
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


def test_bad_images_stop_the_run_before_the_first_step_naming_every_one(broken_voc, tmp_path, capsys):
    root, broken = broken_voc
    assert main(command(root, tmp_path / "run")) == 2
    error = capsys.readouterr().err
    assert all(str(path) in error for path in broken) and "truncated" in error and "data.on_bad=skip" in error
    assert not (tmp_path / "run" / "last.pt").exists()  # no step was trained, none is lost


def test_on_bad_skip_drops_them_with_a_warning_and_counts_them_in_the_run_log(broken_voc, tmp_path):
    root, broken = broken_voc
    with pytest.warns(UserWarning, match="skipped 2"):
        assert main(command(root, tmp_path / "run", "--set", "data.on_bad=skip")) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    data = next(record for record in records if record["kind"] == "data")
    assert sorted(path for path, _ in data["val"]["bad"]) == sorted(str(path) for path in broken)
    assert data["train"]["bad"] == [] and data["train"]["checked"] == 17
    assert records[-1]["kind"] == "eval"  # the evaluation ran on the images that are left
