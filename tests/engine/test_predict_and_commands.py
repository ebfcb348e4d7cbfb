"""Predictor, detlab predict / detlab train and the Python API, end to end on tiny runs."""

import json

import pytest
import torch
from tiny_detector import SquaresDataset

import detlab
from detlab.cli import main
from detlab.data.images import load_image, save_image
from detlab.engine.predict import Predictor, evaluate_checkpoint, predict_files


@pytest.fixture(scope="module")
def synthetic_voc(tmp_path_factory):
    from detlab.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "shapes", num_images=12, seed=0)


@pytest.fixture(scope="module")
def reordered_voc(synthetic_voc):
    """The same images with the class order reversed: a checkpoint's labels would mean other classes."""
    import shutil

    copy = shutil.copytree(synthetic_voc, synthetic_voc.parent / "reordered")
    names = (copy / "classes.txt").read_text().split()
    (copy / "classes.txt").write_text("".join(f"{name}\n" for name in reversed(names)))
    return copy


def test_predictor_from_a_checkpoint_predicts_tensors_and_files(tmp_path, tiny_run):
    predictor = detlab.load(tiny_run / "last", device="cpu")
    image, _ = SquaresDataset(10, flip=False)[0]
    result = predictor.predict(image)
    assert result["boxes"].shape == (1, 4) and result["labels"].dtype == torch.int64
    assert result["names"] == [predictor.classes[result["labels"][0] - 1]]
    save_image(image, tmp_path / "square.png")
    from_file = predictor.predict(tmp_path / "square.png")
    torch.testing.assert_close(
        from_file["boxes"], predictor.predict(load_image(tmp_path / "square.png"))["boxes"]
    )
    assert len(predictor.predict(image, score_threshold=1.01)["boxes"]) == 0


def test_predict_files_writes_annotated_images_and_coco_results(tmp_path, tiny_run):
    folder = tmp_path / "images"
    for index in range(3):
        save_image(SquaresDataset(10, flip=False)[index][0], folder / f"image{index}.png")
    (folder / "notes.txt").write_text("not an image")
    predictor = detlab.load(tiny_run, device="cpu")
    summary = predict_files(predictor, folder, tmp_path / "out", draw_threshold=0.0)
    assert summary == {
        "images": 3,
        "detections": 3,
        "out_dir": str(tmp_path / "out"),
        "draw_threshold": 0.0,
        "skipped": [],
    }
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "image0.png",
        "image1.png",
        "image2.png",
    ]
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [d["image_id"] for d in detections] == [1, 2, 3]
    assert [i["file_name"] for i in images] == ["image0.png", "image1.png", "image2.png"]
    for detection in detections:
        x, y, width, height = detection["bbox"]
        assert width > 0 and height > 0 and 0 <= x and x + width <= 32.01
        assert detection["category_id"] in (1, 2) and 0 <= detection["score"] <= 1


def test_predict_files_keeps_same_named_images_apart_and_never_overwrites_the_input(tmp_path, tiny_run):
    folder = tmp_path / "images"
    image = SquaresDataset(10, flip=False)[0][0]
    save_image(image, folder / "a.png")
    save_image(image, folder / "a.bmp")
    before = (folder / "a.png").read_bytes()
    predictor = detlab.load(tiny_run, device="cpu")
    with pytest.raises(ValueError, match="is the input folder"):
        predict_files(predictor, folder, folder)
    with pytest.raises(ValueError, match="is the input folder"):
        predict_files(predictor, folder / "a.png", folder)
    assert (folder / "a.png").read_bytes() == before
    predict_files(predictor, folder, tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "a.bmp.png",
        "a.png",
        "detections.json",
        "images.json",
    ]


def test_predict_command_batches_images_as_asked_with_the_same_detections(
    tmp_path, tiny_run, capsys, monkeypatch
):
    folder = tmp_path / "images"
    for index in range(5):
        save_image(SquaresDataset(10, flip=False)[index][0], folder / f"image{index}.png")
    batches: list[int] = []
    real = Predictor.predict_batch

    def counted(self, images, *args, **kwargs):
        images = list(images)
        batches.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", counted)
    found = {}
    for batch_size in (1, 2):
        out = tmp_path / f"batch{batch_size}"
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(tiny_run),
                    "--input",
                    str(folder),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--batch-size",
                    str(batch_size),
                ]
            )
            == 0
        )
        found[batch_size] = json.loads((out / "detections.json").read_text())
    assert batches == [1] * 5 + [2, 2, 1]
    assert len(found[1]) == len(found[2]) > 0
    for one, two in zip(found[1], found[2]):
        assert one["image_id"] == two["image_id"] and one["category_id"] == two["category_id"]
        assert one["bbox"] == pytest.approx(two["bbox"], abs=1e-3) and one["score"] == pytest.approx(
            two["score"], abs=1e-4
        )
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_run),
                "--input",
                str(folder),
                "--out",
                str(tmp_path / "x"),
                "--batch-size",
                "0",
            ]
        )
        == 2
    )
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err


def test_predict_command_and_its_errors(tmp_path, tiny_run, capsys):
    save_image(torch.rand(3, 20, 30), tmp_path / "one.jpg")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_run / "best"),
                "--input",
                str(tmp_path / "one.jpg"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no such checkpoint" in capsys.readouterr().err  # no evaluation ran, so there is no best.pt
    code = main(
        [
            "predict",
            "--checkpoint",
            str(tiny_run),
            "--input",
            str(tmp_path / "one.jpg"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0 and (tmp_path / "o" / "one.jpg").is_file()
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_run),
                "--input",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_api_train_then_resume_with_more_epochs(tmp_path, synthetic_voc, reordered_voc, tiny_in_models):
    run = tmp_path / "run"
    first = detlab.train(
        "tiny", data=f"voc:{synthetic_voc}", epochs=1, out=str(run), device="cpu", set=["train.batch_size=4"]
    )
    assert first.status == "finished" and first.state.step == 2  # 8 training images, 4 a step
    assert "AP50" in first.metrics  # evaluated with detlab.eval's COCO evaluator on the val split
    assert (run / "config.yaml").read_text().startswith("model_name: tiny")
    second = detlab.train(resume=str(run), epochs=2)
    assert second.state.step == 4 and second.state.epoch == 2
    report, result = evaluate_checkpoint(run / "last", f"voc:{synthetic_voc}", "test", device="cpu")
    assert 0.0 <= result.summary()["AP50"] <= 1.0 and report
    with pytest.raises(ValueError, match="classes"):
        evaluate_checkpoint(run / "last", f"voc:{reordered_voc}", "test")
    with pytest.raises(ValueError, match="holds a tiny run"):
        detlab.train("faster_rcnn", resume=str(run))
    with pytest.raises(ValueError, match="unknown config key train.learning_rate"):
        detlab.train(
            "tiny", data=f"voc:{synthetic_voc}", out=str(tmp_path / "x"), set=["train.learning_rate=1"]
        )


def test_cli_trains_faster_rcnn_and_predicts(tmp_path, synthetic_voc, capsys):
    run = tmp_path / "frcnn"
    small = ["--set", "model.min_size=128", "--set", "model.max_size=160", "--set", "train.log_every=1"]
    code = main(
        [
            "train",
            "faster_rcnn",
            "--data",
            f"voc:{synthetic_voc}",
            "--max-steps",
            "2",
            "--out",
            str(run),
            *small,
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box"} <= set(train[0])
    assert [r["kind"] for r in records][-1] == "eval"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(run / "best"),
            "--input",
            str(synthetic_voc / "JPEGImages" / "synth_000000.jpg"),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert code == 0 and (tmp_path / "p" / "detections.json").is_file()
    # the evaluation recorded the best-F1 score threshold with the checkpoint; auto draws from it
    stored = torch.load(run / "best.pt", weights_only=True)["metrics"]["best_f1_confidence"]
    capsys.readouterr()
    command = ["predict", "--checkpoint", str(run / "best"), "--out", str(tmp_path / "q")]
    image = str(synthetic_voc / "JPEGImages" / "synth_000000.jpg")
    assert main([*command, "--input", image, "--score-threshold", "auto"]) == 0
    assert f"drawn from score {stored:.3g})" in capsys.readouterr().out
    assert main([*command, "--input", image, "--score-threshold", "0.25"]) == 0
    assert "drawn from score 0.25)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*command, "--input", image, "--score-threshold", "high"])
    code = main(
        [
            "eval",
            "--checkpoint",
            str(run / "best"),
            "--data",
            f"voc:{synthetic_voc}",
            "--split",
            "test",
            "--out",
            str(tmp_path / "e"),
            "--errors",
        ]
    )
    assert code == 0 and "AP50" in json.dumps(json.loads((tmp_path / "e" / "report.json").read_text()))
    errors = json.loads((tmp_path / "e" / "errors.json").read_text())
    assert errors["num_images"] == len((synthetic_voc / "ImageSets/Main/test.txt").read_text().split())
    assert main(["train", "nothing", "--data", "synthetic", "--out", str(tmp_path / "n")]) == 2


def test_train_takes_each_methods_own_options_and_refuses_others(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:  # --attach is the localizer's, not Faster R-CNN's
        main(
            ["train", "faster_rcnn", "--attach", "conv", "--data", "synthetic", "--out", str(tmp_path / "r")]
        )
    assert stopped.value.code == 2 and "--attach" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "localizer", "--pool", "mean"])  # not one of the config's choices... parsed as str
    with pytest.raises(SystemExit) as stopped:
        main(["train", "localizer", "--help"])
    shown = capsys.readouterr().out
    assert (
        stopped.value.code == 0 and "--pool" in shown and "--window-size" in shown and "default 64" in shown
    )
    assert "--anchor-sizes" not in shown


def _weights(path) -> dict:
    from detlab.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def _parts_changed(before: dict, after: dict) -> set:
    return {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}


def test_four_step_training_trains_the_parts_of_each_step_and_resumes_exactly(tmp_path, synthetic_voc):
    """``--recipe 4step`` for Faster R-CNN: four fits of a quarter of the steps each, in the step
    folders and then the run folder; steps 3 and 4 leave the shared backbone alone; deleting the
    last step and resuming reproduces the uninterrupted run's final weights."""
    run = tmp_path / "alt"
    args = ["train", "faster_rcnn", "--recipe", "4step", "--data", f"voc:{synthetic_voc}", "--max-steps", "8"]
    small = ["--set", "model.min_size=96", "--set", "model.max_size=96", "--set", "model.backbone_width=8"]
    assert main([*args, "--out", str(run), *small]) == 0
    step_weights = [
        _weights(run / name / "last.pt") for name in ("step1_rpn", "step2_detector", "step3_rpn_shared")
    ]
    final = _weights(run / "last.pt")
    assert all(
        (run / name / "stage_done").is_file() for name in ("step1_rpn", "step2_detector", "step3_rpn_shared")
    )
    assert _parts_changed(step_weights[1], step_weights[2]) == {"rpn"}
    assert _parts_changed(step_weights[2], final) == {"roi_head"}
    assert "backbone" in _parts_changed(step_weights[0], step_weights[1])
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "curves.png"):
        (run / name).unlink(missing_ok=True)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = _weights(run / "last.pt")
    assert all(torch.allclose(resumed[name], final[name], atol=1e-6) for name in final)
