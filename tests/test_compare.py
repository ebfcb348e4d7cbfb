"""``detlab compare``: a tiny comparison of two methods end to end, resumed, with a failing method
and the bad input it refuses before training."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from detlab import comparison
from detlab.cli import main as cli_main
from detlab.eval.errors import ERROR_TYPES, SPECIAL_ERROR_TYPES

TINY = ["model.backbone_width=8", "train.eval_every=0", "train.batch_size=2"]


def test_a_tiny_comparison_writes_the_tables_and_a_second_run_trains_nothing(synthetic_root, tmp_path):
    out = tmp_path / "compare"
    lines: list[str] = []
    settings = [*TINY, "train.seed=5", "yolo:train.seed=3"]  # the last one for yolo only, and it wins there
    report = comparison.compare(
        str(synthetic_root),
        "faster_rcnn,yolo",
        budget_s=3,
        out=out,
        set=settings,
        threads=2,
        progress=lines.append,
    )
    assert [row["method"] for row in report["rows"]] == ["faster_rcnn", "yolo"]
    seeds = {
        name: yaml.safe_load((out / name / "config.yaml").read_text())["train"]["seed"]
        for name in ("faster_rcnn", "yolo")
    }
    assert seeds == {"yolo": 3, "faster_rcnn": 5}
    assert all(row["status"] == "done" for row in report["rows"]), report["rows"]
    for row in report["rows"]:
        assert 0 < row["training_s"] < 60 and row["steps"] > 0 and row["parameters"] > 1000
        assert 0 <= row["mAP50_voc07"] <= 1 and 0 <= row["AP_coco"] <= 1
        assert set(row["per_class_AP50_voc07"]) == set(report["classes"])
        # TIDE's dAP: fixing one kind of error gains AP, and never beyond a perfect AP50
        assert set(row["dap"]) == {*ERROR_TYPES, *SPECIAL_ERROR_TYPES}
        for kind in ERROR_TYPES:
            assert 0 <= row["dap"][kind] <= 1 - row["AP50_coco"] + 1e-6, (kind, row)
        assert not row["external_proposals"]
        assert row["s_per_image_with_proposals"] == row["s_per_image_without_proposals"] > 0
    assert report["test_images"] > 0 and report["threads"] == 2
    table = (out / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method | training s"))
    for column in (
        "test s/image without proposals",
        "with proposals",
        "speed-up vs R-CNN",
        "mAP@0.5 (VOC07)",
        "mAP@[.5:.95]",
        "parameters",
    ):
        assert column in header
    assert (
        "| Faster R-CNN |" in table
        and "| yolo (anchor-free) (`train.seed=3`) |" in table
        and "Per-class AP@0.5" in table
    )
    assert "Where the AP is lost" in table and "| method | Cls | Loc | Both | Dupe | Bkg | Miss |" in table
    assert json.loads((out / "compare.json").read_text())["rows"][0]["method"] == "faster_rcnn"
    assert (out / "speed_vs_map.png").stat().st_size > 1000 and (out / "detections.png").stat().st_size > 1000
    assert len([line for line in lines if "s of training in" in line]) == 2

    # Again: the stored rows are reused, nothing is trained.
    checkpoint = out / "yolo" / "last.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again_lines: list[str] = []
    again = comparison.compare(
        str(synthetic_root),
        "faster_rcnn,yolo",
        budget_s=3,
        out=out,
        set=settings,
        threads=2,
        progress=again_lines.append,
    )
    assert checkpoint.stat().st_mtime_ns == stamp
    assert len([line for line in again_lines if "stored row reused" in line]) == 2
    assert "reused" not in again["rows"][0]
    assert [row["training_s"] for row in again["rows"]] == [row["training_s"] for row in report["rows"]]

    # A method whose row is gone but whose run finished (interrupted after training) is resumed,
    # not retrained: its step count stays, and it is scored again.
    # The same settings in another order and spacing are the same run.
    (out / "yolo" / comparison.ROW_FILE).unlink()
    reordered = [" yolo : train.seed=3", "train.seed= 5", *reversed(TINY)]
    resumed = comparison.compare(
        str(synthetic_root), "yolo", budget_s=3, out=out, set=reordered, threads=2, progress=lambda line: None
    )
    assert (
        resumed["rows"][0]["status"] == "done" and resumed["rows"][0]["steps"] == report["rows"][1]["steps"]
    )
    assert (out / "yolo" / comparison.ROW_FILE).is_file()

    # Other settings for a method whose folder holds a run: that method's row is an error (its run
    # is neither resumed with its old settings nor overwritten); Faster R-CNN's row is reused.
    changed = comparison.compare(
        str(synthetic_root),
        "faster_rcnn,yolo",
        budget_s=3,
        out=out,
        set=[*TINY, "train.seed=5", "yolo:train.seed=4"],
        threads=2,
        progress=lambda line: None,
    )
    kept, refused = changed["rows"]
    assert kept["status"] == "done" and kept["training_s"] == report["rows"][0]["training_s"]
    assert (
        refused["status"] == "failed"
        and "holds a run started with other data or settings" in refused["error"]
    )
    assert checkpoint.stat().st_mtime_ns == stamp

    # A larger budget with the same settings continues the run.
    longer = comparison.compare(
        str(synthetic_root), "yolo", budget_s=5, out=out, set=settings, threads=2, progress=lambda line: None
    )
    assert longer["rows"][0]["status"] == "done" and longer["rows"][0]["steps"] > report["rows"][1]["steps"]


def test_settings_for_one_method_are_told_apart_from_settings_for_all():
    common, own = comparison.method_settings(
        [
            "train.lr=0.01",
            "rcnn:model.window_size=227",
            "data.spec=voc:/data/x",
            " yolo : train.seed=2",
            "fast_rcnn:train.lr=1",
        ],
        ["rcnn", "yolo"],
    )
    assert common == ["train.lr=0.01", "data.spec=voc:/data/x"]  # a colon in the value is the value's
    assert own == {"rcnn": ["model.window_size=227"], "yolo": ["train.seed=2"]}  # fast_rcnn is not compared
    with pytest.raises(ValueError, match="unknown method 'ssd' before the colon; choose from overfeat"):
        comparison.method_settings(["ssd:model.x=1"], ["rcnn"])
    with pytest.raises(ValueError, match="expected yolo:KEY=VALUE"):
        comparison.method_settings(["yolo:model.input_size"], ["rcnn"])  # even for a method not compared


def test_a_failing_method_gets_its_row_and_the_others_still_run(synthetic_root, tmp_path, monkeypatch):
    real = comparison.prepare_method

    def failing(name, settings, run_dir, test_set):
        if name == "yolo":
            raise RuntimeError("out of memory (simulated)")
        return real(name, settings, run_dir, test_set)

    monkeypatch.setattr(comparison, "prepare_method", failing)
    out = tmp_path / "compare"
    report = comparison.compare(
        str(synthetic_root),
        "yolo,faster_rcnn",
        budget_s=2,
        out=out,
        set=TINY,
        threads=2,
        progress=lambda line: None,
    )
    failed, done = report["rows"]
    assert failed["status"] == "failed" and "out of memory (simulated)" in failed["error"]
    assert done["status"] == "done" and (out / "faster_rcnn" / comparison.ROW_FILE).is_file()
    assert "failed: RuntimeError: out of memory (simulated)" in (out / "compare.md").read_text()
    assert "Traceback" in (out / "yolo" / "compare_error.txt").read_text()


def test_unknown_methods_and_too_small_data_are_refused_before_training(synthetic_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="choose from overfeat, rcnn, fast_rcnn, faster_rcnn, yolov1, yolo"):
        comparison.parse_methods("faster_rcnn,ssd")
    assert (
        cli_main(
            ["compare", "--data", str(synthetic_root), "--methods", "yolo9000", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "unknown method(s) yolo9000" in capsys.readouterr().err
    # One training image: refused for every method before anything trains.
    one = tmp_path / "one"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (one / folder).mkdir(parents=True)
    names = sorted(path.stem for path in (synthetic_root / "Annotations").glob("*.xml"))[:3]
    for name in names:
        os.link(synthetic_root / "Annotations" / f"{name}.xml", one / "Annotations" / f"{name}.xml")
        image = next((synthetic_root / "JPEGImages").glob(f"{name}.*"))
        os.link(image, one / "JPEGImages" / image.name)
    os.link(synthetic_root / "classes.txt", one / "classes.txt")
    (one / "ImageSets/Main/train.txt").write_text(names[0] + "\n")
    (one / "ImageSets/Main/test.txt").write_text("\n".join(names[1:]) + "\n")
    out = tmp_path / "small"
    with pytest.raises(ValueError, match=r"1 training image\(s\), too few for faster_rcnn"):
        comparison.compare(
            f"voc:{one}", "faster_rcnn", budget_s=2, out=out, set=TINY, progress=lambda line: None
        )
    assert not out.exists()


class _Recorder:
    """A stand-in detector that writes its name into ``calls`` on every image; it detects the one
    object exactly (``right``) or off by a whole box, and raises from its ``fail_after``-th call."""

    def __init__(self, name, calls, right=True, fail_after=None, label=1):
        self.name, self.calls, self.right, self.fail_after, self.label = name, calls, right, fail_after, label

    def proposal_method(self):
        return None  # the detector contract: its proposals, if any, come from inside

    def __call__(self, images, proposals=None):
        import torch

        self.calls.append(self.name)
        if self.fail_after is not None and self.calls.count(self.name) > self.fail_after:
            raise RuntimeError("lost the GPU (simulated)")
        box = [10.0, 10.0, 30.0, 30.0] if self.right else [40.0, 40.0, 60.0, 60.0]
        return [
            {
                "boxes": torch.tensor([box]),
                "scores": torch.tensor([0.9]),
                "labels": torch.tensor([self.label]),
            }
        ]


class _OneBoxImages:
    classes = ("thing",)

    def __len__(self):
        return 5

    def __getitem__(self, index):
        import torch

        return torch.zeros(3, 64, 64), {
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
            "labels": torch.tensor([1]),
            "image_id": f"image{index}",
        }


def test_the_timing_pass_runs_every_method_on_each_image_in_turn_and_survives_a_failing_one():
    import torch

    calls: list[str] = []
    models = {
        name: comparison.Timed(
            _Recorder(name, calls, right=name != "b", fail_after=4 if name == "c" else None),
            torch.device("cpu"),
            amp=False,
        )
        for name in ("a", "b", "c")
    }
    results = comparison.score_and_time_together(models, _OneBoxImages())
    warmup = comparison.WARMUP_IMAGES
    # Warm-up images: every model once each, in order; then the order rotates from image to image.
    assert calls[: 3 * warmup] == ["a", "b", "c"] * warmup
    timed = calls[3 * warmup :]
    assert timed[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    # "c" raised on its fifth call (the third timed image) and was left out from then on.
    assert isinstance(results["c"], RuntimeError) and "c" not in timed[9:]
    assert results["a"]["mAP50_voc07"] == pytest.approx(1.0) and results["b"]["mAP50_voc07"] == 0.0
    for name in ("a", "b"):
        assert len(results[name]["figure_outputs"]) == comparison.FIGURE_IMAGES
        assert results[name]["s_per_image_with_proposals"] > 0 and not results[name]["external_proposals"]
    # Detections that cannot be scored (a label past the classes) fail that model alone, at the end.
    scored = comparison.score_and_time_together(
        {
            name: comparison.Timed(_Recorder(name, [], label=label), torch.device("cpu"), amp=False)
            for name, label in (("a", 1), ("d", 7))
        },
        _OneBoxImages(),
    )
    assert isinstance(scored["d"], ValueError) and "labels must be in 1..1" in str(scored["d"])
    assert scored["a"]["mAP50_voc07"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="lost the GPU"):
        comparison.score_and_time(models["c"].model, _OneBoxImages(), torch.device("cpu"), amp=False)
