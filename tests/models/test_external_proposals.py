"""R-CNN's and Fast R-CNN's proposal caches: opening one (as loading a checkpoint does) writes
nothing, and methods with other settings keep their proposals apart."""

import os

import torch

from detlab.models import build_model
from detlab.models.fast_rcnn import FastRCNNConfig
from detlab.models.rcnn import RCNNConfig


def files_under(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_building_or_loading_creates_no_file_even_in_a_read_only_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(cache))
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    os.chmod(working, 0o555)  # a read-only working folder
    try:
        build_model(
            "fast_rcnn",
            FastRCNNConfig(backbone_width=8, proposal_method="sliding"),
            2,
            weights_from_checkpoint=True,
        )
        build_model(
            "rcnn", RCNNConfig(backbone_width=8, proposal_method="sliding"), 2, weights_from_checkpoint=True
        )
    finally:
        os.chmod(working, 0o755)
    assert files_under(working) == [] and not cache.exists()


def test_loading_a_fast_rcnn_or_rcnn_checkpoint_creates_no_file_in_the_working_folder(tmp_path, monkeypatch):
    """Through the loader users call (``detlab.load``, what predict, eval and serve do): its
    caches go to the user cache folder (``$DETLAB_CACHE_DIR``), and loading writes none yet."""
    import detlab
    from detlab import config as config_io
    from detlab.engine.checkpoint import save_checkpoint
    from detlab.engine.run import resolve_run_config
    from detlab.models import build_model as build

    cache, working = tmp_path / "cache", tmp_path / "working"
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(cache))
    paths = []
    for method in ("fast_rcnn", "rcnn"):
        run_config = resolve_run_config(
            method, overrides=["model.backbone_width=8", "model.proposal_method=sliding"]
        )
        model = build(method, run_config.model, 2)
        paths.append(
            save_checkpoint(
                {"config": config_io.to_dict(run_config), "classes": ["a", "b"], "model": model.state_dict()},
                tmp_path / "runs" / f"{method}.pt",
            )
        )
    working.mkdir()
    monkeypatch.chdir(working)
    os.chmod(working, 0o555)  # a read-only working folder: a write there would fail loudly
    try:
        predictors = [detlab.load(path, device="cpu") for path in paths]
    finally:
        os.chmod(working, 0o755)
    assert [predictor.classes for predictor in predictors] == [["a", "b"], ["a", "b"]]
    assert files_under(working) == [] and not cache.exists()


def test_two_proposal_settings_share_one_cache_folder_without_clashing(tmp_path):
    models = [
        build_model(
            "fast_rcnn",
            FastRCNNConfig(
                backbone_width=8,
                proposal_method="sliding",
                max_proposals=count,
                proposal_cache_dir=str(tmp_path),
            ),
            2,
        )
        for count in (50, 80)
    ]
    image = torch.rand(3, 64, 64)
    for model in models:
        model.proposal_cache.put("image-1", model.proposer(image))
    folders = sorted(path.name for path in tmp_path.iterdir())
    assert len(folders) == 2 and all(name.startswith("sliding-") for name in folders)
    assert [len(model.proposal_cache) for model in models] == [1, 1]
