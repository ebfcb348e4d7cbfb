"""The lecture's test-time additions: box refinement, multi-scale testing, ensembles of checkpoints."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from detlab.engine.predict import Predictor
from detlab.engine.run import resolve_run_config, train_run
from detlab.models.contract import DetectorModule
from detlab.models.inference import TestTimeCombination, input_scale, merge_detections
from detlab.models.roi_heads import RoIHead
from detlab.models.transform import ImageBatcher


class ZeroPooler(nn.Module):
    def forward(self, features, rois, image_sizes):
        return torch.zeros(sum(len(r) for r in rois), 1, 1, 1)


def shifting_head(box_refinement: bool) -> RoIHead:
    """A head whose every RoI scores class 1 and whose box moves right by half its width."""
    head = RoIHead(
        ZeroPooler(),
        1,
        num_classes=1,
        representation_size=4,
        box_refinement=box_refinement,
        score_threshold=0.0,
    )
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.box_regressor.weight.zero_()
        head.classifier.bias.copy_(torch.tensor([0.0, 3.0]))
        head.box_regressor.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # dx 0.5 after the weight 10
    return head.eval()


def test_box_refinement_scores_the_heads_own_boxes_again_and_merges_both():
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    features = OrderedDict(p3=torch.zeros(1, 1, 32, 32))
    plain = shifting_head(False)(features, proposals, [(32, 32)])[0][0]
    assert torch.allclose(plain["boxes"], torch.tensor([[5.0, 0.0, 15.0, 10.0]]))
    refined = shifting_head(True)(features, proposals, [(32, 32)])[0][0]
    # The second pass starts from the first pass's box and moves it again; no overlap: both kept.
    assert sorted(refined["boxes"].tolist()) == [[5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0]]
    assert torch.equal(refined["labels"], torch.tensor([1, 1]))
    # Two images keep their own RoIs apart.
    two = shifting_head(True)(features, proposals * 2, [(32, 32)] * 2)[0]
    assert [len(result["boxes"]) for result in two] == [2, 2]


class SizeReporter(DetectorModule):
    """A 'detector' that reports one box as large as its batcher's short side, scored by it."""

    def __init__(self):
        super().__init__()
        self.batcher = ImageBatcher(100, 200)

    def image_batcher(self) -> ImageBatcher:
        return self.batcher

    def forward(self, images, targets=None, trace=None):
        side = float(self.batcher.min_size)
        return [
            {
                "boxes": torch.tensor([[0.0, 0.0, side, side]]),
                "scores": torch.tensor([side / 1000]),
                "labels": torch.tensor([1]),
            }
            for _ in images
        ]


def test_multi_scale_testing_runs_every_scale_and_restores_the_model():
    model = SizeReporter().eval()
    combined = TestTimeCombination([model], scales=(0.5, 1.0, 2.0), nms_threshold=0.9).eval()
    output = combined([torch.zeros(3, 8, 8)])[0]
    # Boxes of sides 50, 100 and 200 overlap below IoU 0.9: all kept, best score first.
    assert output["boxes"][:, 2].tolist() == [200.0, 100.0, 50.0]
    assert (model.batcher.min_size, model.batcher.max_size) == (100, 200)
    with input_scale(model, 1.5):
        assert (model.batcher.min_size, model.batcher.max_size) == (150, 300)
    with pytest.raises(ValueError, match="does not resize its input"):
        TestTimeCombination([DetectorModule()], scales=(1.0, 2.0))
    with pytest.raises(ValueError, match="combines detlab detectors"):
        TestTimeCombination([nn.Identity()], scales=(1.0, 2.0))
    with pytest.raises(ValueError, match="positive"):
        TestTimeCombination([model], scales=(0.0,))


def test_merging_is_per_class_nms_over_the_union():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    parts = [
        {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
        {"boxes": box + 1, "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},
        {"boxes": box, "scores": torch.tensor([0.7]), "labels": torch.tensor([2])},
    ]
    merged = merge_detections(parts, 0.5, 100)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7]) and merged["labels"].tolist() == [1, 2]
    assert len(merge_detections(parts, 0.5, 1)["boxes"]) == 1


def test_an_ensemble_of_checkpoints_and_test_scales_through_the_predictor(synthetic_root, tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        run_config = resolve_run_config(
            "faster_rcnn",
            overrides=[
                f"data.spec={synthetic_root}",
                f"train.out_dir={out}",
                "train.max_steps=2",
                "train.eval_every=0",
                f"train.seed={seed}",
                "model.backbone_width=8",
                "model.score_threshold=0.0",
            ],
        )
        train_run(run_config)
        runs.append(out)
    image = torch.rand(3, 64, 80)
    single = [Predictor.from_checkpoint(run).model([image])[0] for run in runs]
    both = Predictor.from_checkpoint(runs[0], ensemble=[runs[1]])
    assert isinstance(both.model, TestTimeCombination) and len(both.model.models) == 2
    merged = both.model([image])[0]
    expected = merge_detections(single, 0.5, 100)
    assert torch.allclose(merged["boxes"], expected["boxes"], atol=1e-4) and torch.equal(
        merged["labels"], expected["labels"]
    )
    scaled = Predictor.from_checkpoint(runs[0], test_scales=[0.75, 1.25])
    assert scaled.model.scales == (0.75, 1.25) and scaled.predict(image)["boxes"].shape[1] == 4
    refined = Predictor.from_checkpoint(runs[0], overrides=["model.box_refinement=true"])
    assert refined.model.roi_head.box_refinement
