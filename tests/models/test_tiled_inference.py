"""Tiled inference of a detector: every tile through the model, batched, and the passes merged so
that an object cut by a seam is one box (the rule itself: tests/test_tiles.py)."""

import pytest
import torch
from scipy import ndimage

from detlab.engine.predict import Predictor
from detlab.models.contract import DetectorModule
from detlab.models.inference import TiledDetector
from detlab.tiles import Tiling


class ColourRegions(DetectorModule):
    """Finds each connected red (label 1) or blue (label 2) region of its input as one box scored
    0.9: what a perfect detector sees in the tile it is given. Counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, images, targets=None, *, trace=None):
        self.batches.append(len(images))
        return [self.regions(image) for image in images]

    @staticmethod
    def regions(image):
        boxes, labels = [], []
        for label, channel in ((1, 0), (2, 2)):
            found, _ = ndimage.label((image[channel] > 0.5).numpy())
            for rows, columns in ndimage.find_objects(found):
                boxes.append([columns.start, rows.start, columns.stop, rows.stop])
                labels.append(label)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.full((len(boxes),), 0.9),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }


def scene(objects, height=100, width=170):
    image = torch.zeros(3, height, width)
    for channel, (x1, y1, x2, y2) in objects:
        image[channel, y1:y2, x1:x2] = 1.0
    return image


def test_an_object_on_a_seam_yields_one_box():
    # tiles [0, 100] and [70, 170] (100 px, overlap 0.3); the red object spans 60..110, so both
    # tiles cut it; a blue one lies inside the second tile only, a red one inside the first only
    image = scene([(0, (60, 20, 110, 50)), (2, (130, 60, 150, 80)), (0, (10, 60, 30, 90))])
    model = ColourRegions()
    found = TiledDetector(model, Tiling(100, overlap=0.3)).eval()([image])[0]
    assert model.batches == [2]  # the two tiles in one pass
    assert sorted(found["boxes"].tolist()) == [[10, 60, 30, 90], [60, 20, 110, 50], [130, 60, 150, 80]]
    assert sorted(found["labels"].tolist()) == [1, 1, 2]
    kept = TiledDetector(ColourRegions(), Tiling(100, overlap=0.3, merge="nms")).eval()([image])[0]
    assert len(kept["boxes"]) == 3  # nms keeps one piece of the cut object
    # without the merge, each tile reports its piece
    assert sum(len(ColourRegions.regions(image[:, :, x : x + 100])["boxes"]) for x in (0, 70)) == 4


def test_tiles_go_batch_size_a_pass_and_the_full_image_adds_one():
    image = scene([(0, (5, 5, 200, 40))], height=150, width=300)  # wider than the overlap: cut everywhere
    model = ColourRegions()
    tiling = Tiling(64, overlap=0.25, full_image=True, batch_size=4)
    found = TiledDetector(model, tiling).eval()([image])[0]
    assert model.batches == [4, 4, 4, 4, 2, 1]  # 6 x 3 tiles, then the whole image
    assert found["boxes"].tolist() == [[5, 5, 200, 40]]


def test_an_image_of_one_tile_gets_the_models_own_output():
    image = scene([(0, (10, 10, 30, 30)), (0, (12, 40, 20, 50))], height=60, width=60)
    found = TiledDetector(ColourRegions(), Tiling(64)).eval()([image])[0]
    expected = ColourRegions.regions(image)
    torch.testing.assert_close(found["boxes"], expected["boxes"])


def test_the_predictor_tiles_when_asked_and_predicts_lists():
    images = [scene([(0, (60, 20, 110, 50))]), scene([(2, (0, 0, 10, 10))], height=80, width=90)]
    plain = Predictor(ColourRegions(), ["red", "blue"], device="cpu")
    untiled = plain.predict(images[0])
    assert len(untiled["boxes"]) == 1
    tiled = plain.predict(images, tiling=Tiling(100, overlap=0.3))
    assert isinstance(tiled, list) and [result["names"] for result in tiled] == [["red"], ["blue"]]
    assert tiled[0]["boxes"].tolist() == [[60, 20, 110, 50]]
    always = Predictor(ColourRegions(), ["red", "blue"], device="cpu", tiling=Tiling(100, overlap=0.3))
    assert always.predict(images[0])["boxes"].tolist() == [[60, 20, 110, 50]]


def test_tiling_refuses_what_is_not_a_detector():
    class Classifier(ColourRegions):
        evaluation = "localization"

    with pytest.raises(ValueError, match="not a detector"):
        TiledDetector(Classifier(), Tiling(64))
    with pytest.raises(ValueError, match="does not train"):
        TiledDetector(ColourRegions(), Tiling(64)).train()([torch.zeros(3, 8, 8)])


def test_eval_checkpoint_scores_tiled_inference_and_says_so(synthetic_root, tmp_path, monkeypatch):
    import json

    from detlab import config as config_io
    from detlab.cli import main
    from detlab.data.synthetic import CLASSES
    from detlab.engine.checkpoint import save_checkpoint
    from detlab.engine.run import build_model, resolve_run_config

    torch.manual_seed(0)
    overrides = [
        "model.min_size=64",
        "model.max_size=96",
        "model.backbone_width=8",
        "model.score_threshold=0.3",
    ]
    run_config = resolve_run_config("faster_rcnn", overrides=overrides)
    model = build_model(run_config, len(CLASSES))
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(
        {"config": config_io.to_dict(run_config), "classes": list(CLASSES), "model": model.state_dict()},
        checkpoint,
    )
    tiles_seen = []
    real_detect = TiledDetector.detect
    monkeypatch.setattr(
        TiledDetector,
        "detect",
        lambda self, image: tiles_seen.append(self.tiling) or real_detect(self, image),
    )
    command = ["eval", "--checkpoint", str(checkpoint), "--data", f"voc:{synthetic_root}", "--split", "test"]
    command += ["--max-images", "2", "--no-plots", "--out", str(tmp_path / "eval")]
    assert main([*command, "--tile", "192", "--overlap", "0.25", "--tile-merge", "nms"]) == 0
    assert tiles_seen == [Tiling(192, 0.25, merge="nms")] * 2  # each test image, tiled
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["settings"]["tiling"] == {
        "size": 192, "overlap": 0.25, "full_image": False, "merge": "nms", "match_threshold": 0.5, "batch_size": 8,
    }  # fmt: skip
