"""Opening a checkpoint never touches the network; prediction and evaluation pick their device."""

import dataclasses

import pytest
import torch
import torchvision
from tiny_detector import CountingEvaluator, SquaresDataset, TinyDetector

from detlab import config as config_io
from detlab.engine import checkpoint as checkpoints
from detlab.engine import sampling
from detlab.engine.predict import Predictor, model_from_checkpoint
from detlab.engine.run import build_model, resolve_run_config, run_config_from_dict
from detlab.engine.train import evaluate
from detlab.models.backbones import without_backbone_weights
from detlab.models.localizer import LocalizerConfig
from detlab.models.overfeat import OverFeatConfig


def refuse_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download ImageNet weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)


def test_a_checkpoint_of_a_pretrained_resnet_loads_without_downloading_its_imagenet_weights(
    tmp_path, monkeypatch
):
    model_values = {
        "backbone": "resnet18",
        "pretrained_backbone": True,
        "backbone_weights": str(tmp_path / "gone.pt"),
        "fpn": True,
        "fpn_channels": 16,
        "min_size": 64,
        "max_size": 64,
    }
    run_config = resolve_run_config("faster_rcnn", model=model_values)
    torch.manual_seed(0)
    trained = build_model(
        dataclasses.replace(run_config, model=without_backbone_weights(run_config.model)), 2
    )
    path = checkpoints.save_checkpoint(
        {
            "model_name": "faster_rcnn",
            "classes": ["a", "b"],
            "config": config_io.to_dict(run_config),
            "model": trained.state_dict(),
        },
        tmp_path / "run" / "last.pt",
    )
    refuse_downloads(monkeypatch)
    with pytest.raises(ValueError, match="could not get torchvision's ImageNet weights"):
        build_model(run_config, 2)  # what loading used to do
    model, classes, stored = model_from_checkpoint(path)
    assert classes == ["a", "b"] and not model.training
    assert stored.model.pretrained_backbone and stored.model.backbone_weights  # the config as trained
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    assert Predictor.from_checkpoint(path, device="cpu").predict(torch.rand(3, 64, 64))["boxes"].shape[1] == 4


@pytest.mark.parametrize("config_class", [LocalizerConfig, OverFeatConfig])
def test_every_method_config_with_backbone_weights_builds_without_them(config_class):
    config = config_class(pretrained_backbone=True, backbone_weights="weights.pt")
    plain = without_backbone_weights(config)
    assert not plain.pretrained_backbone and plain.backbone_weights is None
    assert config.pretrained_backbone  # a copy: the stored config is left as it was


def test_predictor_and_evaluate_choose_the_device_automatically(monkeypatch):
    asked = []

    def select_device(name="auto", local_rank=0):
        asked.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(sampling, "select_device", select_device)
    predictor = Predictor(TinyDetector(), ["red", "green"])
    assert asked == ["auto"] and predictor.device == torch.device("cpu")
    dataset = SquaresDataset(4, flip=False)
    loader = sampling.make_loader(dataset, 2, torch.utils.data.SequentialSampler(dataset), num_workers=0)
    evaluate(TinyDetector(), loader, CountingEvaluator())
    assert asked == ["auto", "auto", "auto"]  # the loader's device, then evaluate's


def test_the_training_seed_does_not_regenerate_the_synthetic_set(tmp_path):
    """A run with another ``train.seed`` reads the same built-in set; ``data.synthetic_seed`` is
    what generates another."""
    import json

    from detlab.engine.run import load_split, resolve_run_config

    def generated(**data) -> tuple[int, list]:
        config = resolve_run_config(
            "faster_rcnn",
            data={"spec": "synthetic", "root": str(tmp_path / "set"), "synthetic_images": 6, **data},
            train={"seed": 3},
        )
        dataset, _ = load_split(config, "train", check=False)
        seed = json.loads((tmp_path / "set" / "synthetic.json").read_text())["seed"]
        return seed, [record.boxes.tolist() for record in dataset.records]

    seed, boxes = generated()
    assert seed == 0
    assert generated() == (0, boxes)
    other_seed, other_boxes = generated(synthetic_seed=2)
    assert other_seed == 2 and other_boxes != boxes


def test_an_overfeat_checkpoint_saved_before_strided_blocks_rebuilds_its_max_pooled_net(tmp_path):
    # Checkpoints saved before the field existed were trained with a max-pool in every block; the
    # weights fit the strided net too (same shapes), so only the stored-defaults rule keeps them apart.
    run_config = resolve_run_config("overfeat", model={"strided_blocks": 0, "hidden_dim": 16})
    torch.manual_seed(0)
    trained = build_model(run_config, 2).eval()
    stored = config_io.to_dict(run_config)
    del stored["model"]["strided_blocks"]
    path = checkpoints.save_checkpoint(
        {"model_name": "overfeat", "classes": ["a", "b"], "config": stored, "model": trained.state_dict()},
        tmp_path / "old" / "last.pt",
    )
    model, _, loaded = model_from_checkpoint(path)
    assert loaded.model.strided_blocks == 0
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.localizer.features.modules()) == 3
    windows = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.localizer.raw_outputs(windows), trained.localizer.raw_outputs(windows)
        )
    # A config that names the field keeps it; a new run gets the strided default.
    assert run_config_from_dict(config_io.to_dict(resolve_run_config("overfeat"))).model.strided_blocks == 2
