"""A tiny trained checkpoint (the real ``detlab train``) and untrained models of every method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# serving.py, the helpers of these tests, is imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from serving import CLASSES  # noqa: E402

# Every method, small enough to run on a 64-pixel image in well under a second, untrained.
UNTRAINED = {
    "faster_rcnn": ["model.min_size=96", "model.max_size=128", "model.backbone_width=8", "model.fpn_channels=16"],
    "fast_rcnn": ["model.min_size=96", "model.max_size=128", "model.backbone_width=8", "model.max_proposals=50",
                  "model.proposal_cache_dir="],
    "rcnn": ["model.backbone_width=8", "model.max_proposals=20", "model.window_size=32", "model.proposal_cache_dir=",
             "model.feature_cache_dir="],
    "overfeat": ["model.scales=[1.0,1.5]", "model.window_size=32", "model.blocks=2", "model.hidden_dim=32"],
    "yolo": ["model.input_size=96", "model.backbone_width=8", "model.neck_channels=[16,16,16]"],
    "yolov1": ["model.input_size=64", "model.backbone_width=8", "model.hidden=32", "model.grid_channels=8"],
    "localizer": ["model.window_size=32", "model.blocks=2", "model.hidden_dim=32"],
    "keypoints": ["model.hidden_dim=32"],
}  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(synthetic_root, tmp_path_factory):
    """A Faster R-CNN run of 2 steps through ``detlab.train``: its folder (``best.pt`` inside)."""
    import detlab

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs") / "shapes"
    detlab.train(
        "faster_rcnn",
        data=f"voc:{synthetic_root}",
        max_steps=2,
        out=str(out),
        device="cpu",
        set=["model.min_size=128", "model.max_size=160", "train.batch_size=2"],
    )
    torch.set_num_threads(previous)
    assert (out / "best.pt").is_file()
    return out


@pytest.fixture(scope="session")
def untrained():
    """``method -> Predictor`` of an untrained small model of every method (seeded)."""
    from detlab.engine.predict import Predictor
    from detlab.engine.run import build_model, resolve_run_config

    predictors = {}
    for method, overrides in UNTRAINED.items():
        torch.manual_seed(0)
        run_config = resolve_run_config(method, overrides=overrides)
        predictors[method] = Predictor(
            build_model(run_config, len(CLASSES)), CLASSES, run_config, device="cpu"
        )
    return predictors
