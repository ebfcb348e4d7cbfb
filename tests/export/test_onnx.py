"""ONNX export: the exported graph and the numpy runtime around it give what PyTorch gives.

Each exportable method is built untrained (random weights, BatchNorm statistics perturbed so the
folded constants are not the identity), saved as a checkpoint, exported, and compared: raw outputs
on the same input tensor, and final detections from the image file through each path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detlab
from detlab import config as config_io
from detlab.cli import main
from detlab.engine.checkpoint import save_checkpoint
from detlab.engine.run import build_model, resolve_run_config
from detlab.export import parity, runtime
from detlab.export.onnx_export import export_onnx
from detlab.models import MODELS
from detlab.models.contract import NotExportable

CLASSES = ["cell", "ring", "blob"]
# Small inputs keep export and inference quick. Score thresholds keep the untrained detectors' few
# best boxes: among hundreds of random overlapping ones, a 1e-5 difference in a coordinate (float
# noise between the two runtimes) can move an IoU across the NMS threshold and change what is kept.
SETTINGS = {
    "faster_rcnn": ["model.min_size=160", "model.max_size=224", "model.score_threshold=0.01"],
    "yolo": ["model.input_size=192", "model.score_threshold=0.05"],
    "yolov1": ["model.input_size=224", "model.score_threshold=0.001"],
    "localizer": [],
}


def write_checkpoint(method: str, path: Path, overrides: list[str]) -> Path:
    torch.manual_seed(0)
    run_config = resolve_run_config(method, overrides=overrides)
    model = build_model(run_config, len(CLASSES))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        if method == "yolo":  # an untrained head scores every point near its prior: ties everywhere
            for branch in model.head.cls:
                branch[-1].weight.mul_(20)
    save_checkpoint(
        {"config": config_io.to_dict(run_config), "classes": CLASSES, "model": model.state_dict()}, path
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """method -> (checkpoint, ONNX file)."""
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for method, overrides in SETTINGS.items():
        checkpoint = write_checkpoint(method, folder / f"{method}.pt", overrides)
        export_onnx(checkpoint, folder / f"{method}.onnx")
        files[method] = (checkpoint, folder / f"{method}.onnx")
    return files


def sample_images(synthetic_root: Path) -> list[Path]:
    """Two synthetic images, a portrait and a small odd-sized one, with pixel noise: the synthetic
    set's flat backgrounds give many exactly tied scores, which the two paths may order differently
    at the NMS (photos have no such ties; the BCCD test below uses them as they are)."""
    first, second = sorted((synthetic_root / "JPEGImages").glob("*.jpg"))[:2]
    rng = np.random.default_rng(0)
    made = []
    for name, image in (
        ("a", Image.open(first)),
        ("b", Image.open(second)),
        ("portrait", Image.open(first).transpose(Image.Transpose.ROTATE_90).resize((150, 233))),
        ("small", Image.open(first).resize((97, 61))),
    ):
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16) + rng.integers(
            -12, 13, (image.height, image.width, 3)
        )
        path = synthetic_root.parent / f"{synthetic_root.name}_noisy_{name}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        made.append(path)
    return made


def real_images(root: Path, count: int = 3) -> list[Path]:
    return sorted((root / "JPEGImages").glob("*.jpg"))[:count]


def assert_same_detections(expected: dict, found: dict) -> None:
    report = parity.matched_detections(expected, found)
    assert parity.all_matched(report), report


@pytest.mark.parametrize("method", list(SETTINGS))
def test_raw_outputs_match_pytorch_on_the_same_input(method, exported, synthetic_root):
    checkpoint, onnx_file = exported[method]
    predictor = detlab.load(checkpoint, device="cpu")
    plan = predictor.model.export_plan()
    session = runtime.OnnxPredictor(onnx_file)
    for path in sample_images(synthetic_root):
        expected, found, side = parity.raw_outputs(plan, session, path)
        report = parity.raw_output_differences(expected, found, side)
        assert report["within_tolerance"] and report["unpaired_rows"] == 0, report


@pytest.mark.parametrize("method", list(SETTINGS))
def test_detections_match_pytorch_from_the_file(method, exported, synthetic_root):
    checkpoint, onnx_file = exported[method]
    expected_predictor, found_predictor = detlab.load(checkpoint, device="cpu"), detlab.load(onnx_file)
    assert isinstance(found_predictor, runtime.OnnxPredictor) and found_predictor.classes == CLASSES
    total = 0
    for path in sample_images(synthetic_root):
        expected, found = expected_predictor.predict(path), found_predictor.predict(path)
        assert_same_detections(expected, found)
        assert found["names"] == [CLASSES[label - 1] for label in found["labels"]]
        total += len(found["boxes"])
    assert total > 0  # the comparison compared something


@pytest.mark.parametrize("method", ["faster_rcnn", "yolo"])
def test_detections_match_pytorch_on_real_photos(method, exported, bccd_root):
    checkpoint, onnx_file = exported[method]
    expected_predictor, found_predictor = detlab.load(checkpoint, device="cpu"), detlab.load(onnx_file)
    for path in real_images(bccd_root):
        assert_same_detections(expected_predictor.predict(path, 0.05), found_predictor.predict(path, 0.05))


def same_size_images(synthetic_root: Path) -> list[Path]:
    """Four noisy images of one size: the two synthetic ones and their mirror images."""
    first, second = sample_images(synthetic_root)[:2]
    mirrored = []
    for path in (first, second):
        target = path.with_name(path.stem + "_mirrored.png")
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
        mirrored.append(target)
    return [first, second, *mirrored]


@pytest.mark.parametrize("method", list(SETTINGS))
def test_a_batch_of_four_is_one_run_that_finds_what_pytorch_finds_image_by_image(
    method, exported, synthetic_root, monkeypatch
):
    checkpoint, onnx_file = exported[method]
    expected_predictor, found_predictor = detlab.load(checkpoint, device="cpu"), detlab.load(onnx_file)
    images = same_size_images(synthetic_root)
    plan = expected_predictor.model.export_plan()
    for batch in (images, sample_images(synthetic_root)):  # one size; four sizes padded to one
        expected, found, side = parity.raw_outputs(plan, found_predictor, batch)
        assert len(found[found_predictor.session.get_outputs()[0].name]) > 0
        report = parity.raw_output_differences(expected, found, side)
        assert report["within_tolerance"] and report["unpaired_rows"] == 0, report
    runs = []
    real_run = found_predictor.run
    monkeypatch.setattr(
        found_predictor, "run", lambda inputs: runs.append(len(inputs["images"])) or real_run(inputs)
    )
    batch = found_predictor.predict(images)
    assert runs == [4]
    for path, found_one in zip(images, batch):
        assert_same_detections(expected_predictor.predict(path), found_one)


@pytest.mark.parametrize("method", ["faster_rcnn", "yolo"])
def test_tiled_inference_from_the_file_is_pytorchs_on_real_photos(method, exported, bccd_root):
    checkpoint, onnx_file = exported[method]
    options = {"tile": 256, "overlap": 0.25, "tile_full_image": True}
    expected_predictor = detlab.load(checkpoint, device="cpu", **options)
    found_predictor = detlab.load(onnx_file, **options)
    path = real_images(bccd_root, 1)[0]
    found = found_predictor.predict(path, 0.05)
    assert_same_detections(expected_predictor.predict(path, 0.05), found)
    assert len(found["boxes"]) > 0
    untiled = detlab.load(checkpoint, device="cpu").predict(path, 0.05)
    assert not parity.all_matched(parity.matched_detections(untiled, found))  # the tiles changed them


def test_raw_comparison_pairs_reordered_proposals_and_scales_coordinates():
    rng = np.random.default_rng(0)
    expected = {
        "proposals": rng.uniform(0, 400, (6, 4)).astype(np.float32),
        "proposal_image": np.array([0, 0, 0, 1, 1, 1]),
        "probabilities": rng.uniform(0, 1, (6, 3)).astype(np.float32),
        "boxes": rng.uniform(0, 400, (6, 2, 4)).astype(np.float32),
    }
    order = np.array([1, 0, 2, 3, 5, 4])  # two pairs of tied proposals kept in the other order
    found = {name: value[order] for name, value in expected.items()}
    found["boxes"] = found["boxes"] + np.float32(3e-5)  # float32 spacing at 400 px
    report = parity.raw_output_differences(expected, found, input_side=416)
    assert report["within_tolerance"] and report["unpaired_rows"] == 0
    assert 0 < report["outputs"]["boxes"] < 1e-6  # about 3e-5 / 416
    found["proposals"][2] += 5.0  # a proposal that is not there
    report = parity.raw_output_differences(expected, found, input_side=416)
    assert not report["within_tolerance"] and report["unpaired_rows"] == 1
    found = {name: value.copy() for name, value in expected.items()}
    found["probabilities"][3, 1] += 2e-3
    assert not parity.raw_output_differences(expected, found, input_side=416)["within_tolerance"]
    found = {name: value.copy() for name, value in expected.items()}
    found["proposal_image"] = expected["proposal_image"][::-1].copy()  # the same boxes, other images
    assert parity.raw_output_differences(expected, found, input_side=416)["unpaired_rows"] == 6


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(
    "sizes", [((37, 53), (20, 31)), ((37, 53), (64, 97)), ((480, 640), (320, 427)), ((9, 9), (9, 4))]
)
def test_numpy_resize_is_torchs(antialias, sizes):
    source, target = sizes
    image = torch.rand(3, *source)
    expected = torch.nn.functional.interpolate(
        image[None], size=target, mode="bilinear", align_corners=False, antialias=antialias
    )[0]
    found = runtime.resize(image.numpy(), target, antialias)
    np.testing.assert_allclose(found, expected.numpy(), atol=1e-5)


def test_runtime_runs_without_torch(exported, synthetic_root, run_without_torch):
    _, onnx_file = exported["yolo"]
    image = sorted((synthetic_root / "JPEGImages").glob("*.jpg"))[0]
    output = run_without_torch(f"""
import detlab
result = detlab.load({str(onnx_file)!r}).predict({str(image)!r})
print(len(result["boxes"]), TORCH_MODULES)
""").split()
    assert int(output[0]) > 0 and output[1:] == ["[]"]


@pytest.mark.parametrize("method", ["fast_rcnn", "keypoints", "overfeat", "rcnn"])
def test_methods_that_cannot_be_exported_say_why(method, tmp_path):
    run_config = resolve_run_config(method)
    with pytest.raises(NotExportable, match=".+ not exportable as one graph|outside the network"):
        build_model(run_config, 2).export_plan()


def test_every_other_method_has_an_export_plan():
    exportable = sorted(set(MODELS) - {"fast_rcnn", "keypoints", "overfeat", "rcnn"})
    assert exportable == sorted(SETTINGS)
    for method in exportable:
        plan = build_model(resolve_run_config(method), 2).export_plan()
        assert len(plan.example) == len(plan.input_names) and plan.layout in runtime.POSTPROCESS


def test_a_yolov1_whose_grid_does_not_divide_its_features_says_so():
    run_config = resolve_run_config("yolov1", overrides=["model.input_size=160"])
    with pytest.raises(NotExportable, match="input_size 160 cannot be exported.+multiples of 224"):
        build_model(run_config, 2).export_plan()


def test_export_and_predict_commands(exported, synthetic_root, tmp_path, capsys):
    checkpoint, _ = exported["faster_rcnn"]
    onnx_file = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(onnx_file),
                "--set",
                "model.score_threshold=0.2",
            ]
        )
        == 0
    )
    assert "faster_rcnn -> " in capsys.readouterr().out
    assert runtime.OnnxPredictor(onnx_file).metadata["postprocess"]["score_threshold"] == 0.2
    images = synthetic_root / "JPEGImages"
    assert (
        main(["predict", "--model", str(onnx_file), "--input", str(images), "--out", str(tmp_path / "onnx")])
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--set",
                "model.score_threshold=0.2",
                "--input",
                str(images),
                "--out",
                str(tmp_path / "torch"),
            ]
        )
        == 0
    )
    found = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    expected = json.loads((tmp_path / "torch" / "detections.json").read_text())
    assert len(found) == len(expected) > 0
    assert len(list((tmp_path / "onnx").glob("*.jpg"))) == len(list(images.glob("*.jpg")))


def test_the_best_f1_confidence_travels_into_the_onnx_file(exported, tmp_path, capsys):
    checkpoint, onnx_file = exported["faster_rcnn"]
    assert runtime.OnnxPredictor(onnx_file).best_confidence is None  # its checkpoint recorded none
    stored = torch.load(checkpoint, weights_only=True)
    save_checkpoint(
        {**stored, "metrics": {"AP50": 0.5, "best_f1_confidence": 0.37}}, tmp_path / "evaluated.pt"
    )
    export_onnx(tmp_path / "evaluated.pt", tmp_path / "evaluated.onnx")
    assert runtime.OnnxPredictor(tmp_path / "evaluated.onnx").best_confidence == 0.37
    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(image)
    command = ["predict", "--input", str(image), "--score-threshold", "auto", "--out"]
    assert main([*command, str(tmp_path / "a"), "--model", str(tmp_path / "evaluated.onnx")]) == 0
    assert "drawn from score 0.37)" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="records no best-F1 confidence"):
        assert main([*command, str(tmp_path / "b"), "--model", str(onnx_file)]) == 0
    assert "drawn from score 0.5)" in capsys.readouterr().out


def test_bad_model_files_get_clear_errors(exported, tmp_path, capsys):
    checkpoint, _ = exported["yolo"]
    assert main(["predict", "--model", str(checkpoint), "--input", ".", "--out", str(tmp_path / "p")]) == 2
    assert "--model takes an .onnx file" in capsys.readouterr().err
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    with pytest.raises(ValueError, match="fake.onnx: not a loadable ONNX model"):
        detlab.load(fake)
    import onnx

    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(exported["localizer"][1]))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match="without detlab's metadata"):
        detlab.load(bare)
    with pytest.raises(FileNotFoundError):
        detlab.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="settings are fixed"):
        detlab.load(exported["localizer"][1], set=["model.top_k=1"])
