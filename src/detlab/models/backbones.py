"""Convolutional feature extractors shared by every detector.

``build_backbone(name)`` returns a module ``forward(x: Tensor[B, 3, H, W]) -> Tensor[B, C, H', W']``
with ``H' ~ H / stride`` and two attributes, ``out_channels`` (C) and ``stride``. The torchvision
architectures keep torchvision's parameter names (``features.0.weight``, ``layer1.0.conv1.weight``,
...), so a state dict saved from the full torchvision model loads into the extractor directly: the
classifier keys are ignored.

``build_classifier_net(name, window_size)`` returns the same features plus the fully-connected
layers that follow them in the classification network (AlexNet, VGG-16, or the small net's own FC
layers). The localizer attaches its heads after these layers and OverFeat turns them into
convolutions, so their input is the flattened feature grid of exactly one training window.

Weights: ``pretrained=True`` asks torchvision for its ImageNet weights (needs internet, or
torchvision's cache); ``weights_path`` loads a local state dict (``torch.load(weights_only=True)``,
so loading never runs code from the file). With neither, the network starts from random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models

# Widths of the small net's five conv blocks: a VGG-like net sized to train from scratch on a CPU.
SMALL_WIDTHS = (32, 64, 128, 256, 256)
# What the small classifier net's first FC layer sees: the flattened grid, or its channel maxima.
POOL_CHOICES = ("none", "max")


class FeatureExtractor(nn.Sequential):
    """An ``nn.Sequential`` of named stages that records ``out_channels`` and ``stride``."""

    def __init__(self, stages: OrderedDict[str, nn.Module], out_channels: int, stride: int):
        super().__init__(stages)
        self.out_channels = out_channels
        self.stride = stride


def _conv_block(in_channels: int, out_channels: int, pool: bool, padding: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_features(padding: int = 1, num_blocks: int = 5) -> FeatureExtractor:
    """``num_blocks`` (2-5) 3x3 conv + BatchNorm + ReLU blocks (widths 32-64-128-256-256); all but
    the last end in a 2x2 max-pool. With five blocks the stride is 16 and a 128x128 image gives an
    8x8x256 feature map; with four (widths 32-64-128-256) the stride is 8.

    ``padding=0`` ("valid" convolutions) makes the output at every position depend only on the
    pixels of its receptive field, never on zero padding at the image border. That is what makes a
    sliding-window pass over a large image exactly equal to running the net on each crop (OverFeat,
    section 3.5), so the OverFeat detector's small net uses it: a 128x128 window then gives a 4x4
    grid with five blocks, a 64x64 window a 4x4 grid with four.
    """
    if not 2 <= num_blocks <= len(SMALL_WIDTHS):
        raise ValueError(f"the small net has 2 to {len(SMALL_WIDTHS)} blocks, got {num_blocks}")
    widths = SMALL_WIDTHS[:num_blocks]
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for index, width in enumerate(widths):
        last = index == len(widths) - 1
        stages[f"block{index + 1}"] = _conv_block(in_channels, width, pool=not last, padding=padding)
        in_channels = width
    return FeatureExtractor(stages, out_channels=widths[-1], stride=2 ** (num_blocks - 1))


def _torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """A torchvision classification model, with its ImageNet weights when ``pretrained``."""
    builder = getattr(tv_models, name)
    if not pretrained:
        return builder(weights=None)
    try:
        return builder(weights="DEFAULT")
    except Exception as error:  # URLError, socket errors, hash mismatch: all mean "no weights here"
        raise ValueError(
            f"could not get torchvision's ImageNet weights for {name!r} ({type(error).__name__}: {error}). "
            "They are downloaded from the internet on first use; on a machine without internet, download "
            "them elsewhere, save the state dict to a file and pass it with --backbone-weights FILE "
            "(weights_path=...) instead of --pretrained."
        ) from error


def _resnet_features(name: str, out_channels: int) -> Callable[[bool], tuple[FeatureExtractor, nn.Module]]:
    def build(pretrained: bool) -> tuple[FeatureExtractor, nn.Module]:
        model = _torchvision_model(name, pretrained)
        stage_names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        stages = OrderedDict((stage, getattr(model, stage)) for stage in stage_names)
        return FeatureExtractor(stages, out_channels=out_channels, stride=32), model

    return build


def _features_attribute(name: str, out_channels: int) -> Callable[[bool], tuple[FeatureExtractor, nn.Module]]:
    """Models whose convolutional part is ``model.features`` (AlexNet, VGG, MobileNets)."""

    def build(pretrained: bool) -> tuple[FeatureExtractor, nn.Module]:
        model = _torchvision_model(name, pretrained)
        return FeatureExtractor(OrderedDict(features=model.features), out_channels, stride=32), model

    return build


def _small(pretrained: bool) -> tuple[FeatureExtractor, nn.Module | None]:
    if pretrained:
        raise ValueError(
            "the 'small' backbone has no pretrained weights; train it from scratch or pass --backbone-weights FILE"
        )
    return small_features(), None


# name -> build(pretrained) -> (feature extractor, full torchvision model or None)
BACKBONES: dict[str, Callable[[bool], tuple[FeatureExtractor, nn.Module | None]]] = {
    "small": _small,
    "alexnet": _features_attribute("alexnet", 256),
    "vgg16": _features_attribute("vgg16", 512),
    "resnet18": _resnet_features("resnet18", 512),
    "resnet34": _resnet_features("resnet34", 512),
    "resnet50": _resnet_features("resnet50", 2048),
    "mobilenet_v2": _features_attribute("mobilenet_v2", 1280),
    "mobilenet_v3_large": _features_attribute("mobilenet_v3_large", 960),
}


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")


def load_weights_file(module: nn.Module, weights_path: str | Path) -> None:
    """Load the parameters of ``module`` from a state dict file.

    The file may hold more keys than ``module`` needs (a full torchvision model's state dict for a
    feature extractor: its classifier is ignored), but every key of ``module`` must be there with
    the right shape.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot read a state dict ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a detlab checkpoint: the weights live under "model"
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    wanted = module.state_dict()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(wanted)} parameters are missing (first: {missing[:3]}); "
            "the file does not hold weights for this architecture"
        )
    mismatched = [key for key in wanted if tuple(state[key].shape) != tuple(wanted[key].shape)]
    if mismatched:
        key = mismatched[0]
        raise ValueError(
            f"{path}: parameter {key!r} has shape {tuple(state[key].shape)}, "
            f"expected {tuple(wanted[key].shape)}; the file holds a different architecture"
        )
    module.load_state_dict({key: state[key] for key in wanted})


def build_backbone(
    name: str, pretrained: bool = False, weights_path: str | Path | None = None
) -> FeatureExtractor:
    """Feature extractor ``Tensor[B, 3, H, W] -> Tensor[B, out_channels, H/stride, W/stride]``.

    ``name`` is a key of :data:`BACKBONES`. ``pretrained`` loads torchvision's ImageNet weights
    (raises ``ValueError`` with advice when they cannot be downloaded); ``weights_path`` loads a
    local state dict (the extractor's own, or the full torchvision model's).
    """
    _check_name(name)
    features, _ = BACKBONES[name](pretrained)
    if weights_path is not None:
        load_weights_file(features, weights_path)
    return features


@dataclass
class ClassifierNet:
    """The parts of a classification network with fully-connected layers.

    ``features``: conv part, ``Tensor[B, 3, S, S] -> Tensor[B, C, h, w]`` for the window size S;
    ``hidden``: ``nn.Sequential`` starting with ``nn.Flatten`` then Linear/ReLU/Dropout layers,
    ``Tensor[B, C, h, w] -> Tensor[B, hidden_dim]`` (the last FC layer before the class scores);
    ``grid``: ``(h, w)``, the feature grid of one window, which the first Linear layer flattens.
    """

    features: FeatureExtractor
    hidden: nn.Sequential
    hidden_dim: int
    grid: tuple[int, int]


def _grid_size(features: nn.Module, window_size: int) -> tuple[int, int]:
    with torch.no_grad():
        training = features.training
        features.eval()
        try:
            shape = features(torch.zeros(1, 3, window_size, window_size)).shape
        except RuntimeError as error:
            raise ValueError(f"window size {window_size} is too small for this network ({error})") from error
        finally:
            features.train(training)
    return int(shape[2]), int(shape[3])


def build_classifier_net(
    name: str,
    window_size: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    hidden_dim: int = 512,
    dropout: float = 0.5,
    pool: str = "none",
    num_blocks: int = 5,
    padding: int = 0,
) -> ClassifierNet:
    """Conv features and the fully-connected layers of an AlexNet/VGG-style classifier.

    ``alexnet`` and ``vgg16`` reuse torchvision's FC layers (4096 wide, all but the final 1000-way
    layer) and need ``window_size=224`` for their 6x6 / 7x7 grids (torchvision's adaptive pooling is
    dropped, it is the identity at that size). ``small`` gets two new FC layers of ``hidden_dim``
    over its flattened ``h x w x C`` grid (``num_blocks`` conv blocks, see :func:`small_features`) or, with ``pool="max"``, over the maximum of each
    channel across the grid (an ``h x w`` max-pool: translation-invariant class evidence, which a
    from-scratch net learns several times faster; it stays convertible to a sliding max-pool).
    ``padding=1`` pads the small net's convolutions: objects at the window border keep all their
    pixels' evidence (better for a localizer), but the net is then exactly equal to a sliding
    window only at its own window size (OverFeat's detector keeps the default 0).
    ``weights_path`` is a state dict of the full torchvision model (features and classifier).
    """
    _check_name(name)
    if pool not in POOL_CHOICES:
        raise ValueError(f"pool must be one of {POOL_CHOICES}, got {pool!r}")
    if name == "small":
        if pretrained:
            raise ValueError("the 'small' network has no pretrained weights")
        features = small_features(padding=padding, num_blocks=num_blocks)
        grid = _grid_size(features, window_size)
        pooled: list[nn.Module] = [nn.MaxPool2d(grid)] if pool == "max" else []
        cells = 1 if pool == "max" else grid[0] * grid[1]
        hidden = nn.Sequential(
            *pooled,
            nn.Flatten(),
            nn.Linear(features.out_channels * cells, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        net = ClassifierNet(features, hidden, hidden_dim, grid)
        if weights_path is not None:
            load_weights_file(nn.ModuleDict({"features": features, "hidden": hidden}), weights_path)
        return net
    if pool != "none":
        raise ValueError(f"pool={pool!r} is for the 'small' net; {name!r} keeps its own FC layers")
    if name not in ("alexnet", "vgg16"):
        raise ValueError(
            f"backbone {name!r} has no fully-connected layers; use 'small', 'alexnet' or 'vgg16'"
        )
    features, model = BACKBONES[name](pretrained)
    if weights_path is not None:
        load_weights_file(model, weights_path)
    grid = _grid_size(features, window_size)
    expected = 6 if name == "alexnet" else 7
    if grid != (expected, expected):
        raise ValueError(
            f"{name}'s fully-connected layers expect a {expected}x{expected} feature grid; window size "
            f"{window_size} gives {grid[0]}x{grid[1]} (use --window-size 224)"
        )
    # torchvision: classifier = [Dropout?, Linear, ReLU, Dropout, Linear, ReLU, (Dropout), Linear(->1000)]
    hidden = nn.Sequential(nn.Flatten(), *list(model.classifier.children())[:-1])
    return ClassifierNet(features, hidden, model.classifier[-1].in_features, grid)
