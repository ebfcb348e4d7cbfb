"""Convolutional backbones shared by every method: one module, one :class:`FeatureExtractor`.

Two things are built here:

- **Bodies**: a CNN that returns its feature maps at growing strides, ``[C2, C3, C4, C5]`` at strides
  4-32 for the residual nets (``compact``, ``csp`` and torchvision's ResNets), one map for the plain nets
  (``small``, ``alexnet``, ``vgg16``, the MobileNets). :class:`FeatureExtractor` wraps a body,
  optionally adds a feature pyramid, and gives every detector the same interface: ``forward(batch)``
  returns an ``OrderedDict[name, Tensor[B, out_channels, H_l, W_l]]`` with ``strides`` and
  ``names`` per level. Only the layers a detector uses are built: without a pyramid a residual
  body stops at C4 (stride 16, as VGG16's conv5 in the R-CNN papers), and torchvision's
  classifier layers are never kept.
- **Classifier nets** (:func:`build_classifier_net`): the conv features plus the fully-connected
  layers that follow them in a classification network, for the localizer, DeepPose and OverFeat,
  whose heads sit after those layers (and which OverFeat turns into convolutions).

Weights: ``pretrained=True`` asks torchvision for its ImageNet weights (needs internet, or
torchvision's cache); ``weights_path`` loads a local state dict, the full torchvision model's or the
body's own (``torch.load(weights_only=True)``: loading never runs code from the file). The bodies
keep torchvision's parameter names (``conv1.weight``, ``layer1.0.conv1.weight``,
``features.0.weight``), so such a file loads directly. With neither, training starts from random
weights, which is what runs on a CPU here.

Shape letters: B images, C channels, H x W a feature map, S the window side of a classifier net.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tv_models
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d

from detlab.config import choice

# Widths of the small net's five conv blocks: a VGG-like net sized to train from scratch on a CPU.
SMALL_WIDTHS = (32, 64, 128, 256, 256)
# What the small classifier net's first FC layer sees: the flattened grid, or its channel maxima.
POOL_CHOICES = ("none", "max")
RESIDUAL_STRIDES = (4.0, 8.0, 16.0, 32.0)


# ------------------------------------------------------------------------------------------------
# Bodies: Tensor[B, 3, H, W] -> [Tensor[B, channels[l], H / strides[l], W / strides[l]], ...]


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (He et al. 2016); BatchNorm is what lets a detector
    train from scratch at a high learning rate in minutes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.shortcut(x)).relu()


class CompactBody(nn.Module):
    """A small residual CNN for CPUs: a stride-4 stem with ``width`` channels (C2), then stages at
    strides 8, 16 and 32 with ``width * (2, 4, 8)`` channels; ``num_levels`` of them are built."""

    def __init__(self, width: int = 32, num_levels: int = 4):
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, width // 2, 2), conv_bn(width // 2, width, 2), ResidualBlock(width, width)
        )
        channels = [width, width * 2, width * 4, width * 8][:num_levels]
        self.stages = nn.ModuleList(
            nn.Sequential(ResidualBlock(previous, current, 2), ResidualBlock(current, current))
            for previous, current in zip(channels, channels[1:])
        )
        self.channels = channels
        self.strides = list(RESIDUAL_STRIDES[:num_levels])

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = [self.stem(x)]
        for stage in self.stages:
            outputs.append(stage(outputs[-1]))
        return outputs


def conv_bn_silu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Convolution, BatchNorm, SiLU: the unit of the CSP body and the YOLO neck and head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """Two 3x3 conv-BN-SiLU layers, with a shortcut when ``shortcut`` (backbone) and none in a neck."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.layers = nn.Sequential(conv_bn_silu(channels, channels), conv_bn_silu(channels, channels))
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x) if self.shortcut else self.layers(x)


class CrossStageBlock(nn.Module):
    """A cross-stage-partial block with every intermediate output kept (the C2f layout): a 1x1
    convolution splits the input in two halves, ``depth`` bottlenecks run on the second half one
    after the other, and a 1x1 convolution fuses both halves and every bottleneck's output."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1, shortcut: bool = True):
        super().__init__()
        self.hidden = out_channels // 2
        self.split = conv_bn_silu(in_channels, 2 * self.hidden, 1)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(depth))
        self.fuse = conv_bn_silu((2 + depth) * self.hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs = list(self.split(x).chunk(2, dim=1))
        for block in self.blocks:
            outputs.append(block(outputs[-1]))
        return self.fuse(torch.cat(outputs, dim=1))


class SpatialPyramidPooling(nn.Module):
    """Three chained 5x5 max-pools (receptive fields 5, 9, 13) concatenated with their input (SPPF)."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = conv_bn_silu(channels, channels // 2, 1)
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.fuse = conv_bn_silu(channels * 2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [self.reduce(x)]
        for _ in range(3):
            outputs.append(self.pool(outputs[-1]))
        return self.fuse(torch.cat(outputs, dim=1))


CSP_DEPTHS = (1, 2, 2, 1)  # bottlenecks of the stages at strides 4, 8, 16, 32, at depth multiple 1


class CSPBody(nn.Module):
    """A cross-stage-partial CNN with SiLU (the one-stage detectors' kind of backbone), for CPUs:
    a stride-2 stem with ``width`` channels, then stages at strides 4-32 with ``width * (2, 4, 8,
    16)`` channels, each a strided 3x3 convolution and a :class:`CrossStageBlock` of
    ``round(CSP_DEPTHS * depth)`` bottlenecks; spatial pyramid pooling ends the last one.
    ``num_levels`` of C2..C5 are built. ``width`` 16 at depth 1 is about YOLOv8n's size."""

    def __init__(self, width: int = 16, num_levels: int = 4, depth: float = 1.0):
        super().__init__()
        self.stem = conv_bn_silu(3, width, 3, 2)
        channels = [width * 2, width * 4, width * 8, width * 16][:num_levels]
        stages, previous = [], width
        for index, current in enumerate(channels):
            layers = [
                conv_bn_silu(previous, current, 3, 2),
                CrossStageBlock(current, current, max(1, round(CSP_DEPTHS[index] * depth))),
            ]
            if index == 3:
                layers.append(SpatialPyramidPooling(current))
            stages.append(nn.Sequential(*layers))
            previous = current
        self.stages = nn.ModuleList(stages)
        self.channels = channels
        self.strides = list(RESIDUAL_STRIDES[:num_levels])

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class ResNetBody(nn.Module):
    """torchvision's ResNet without its classifier: C2-C5 (or fewer, ``num_levels``), with
    torchvision's parameter names so its state dicts load."""

    def __init__(self, model: nn.Module, num_levels: int = 4):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.relu, model.maxpool
        self.layers = [f"layer{index}" for index in range(1, num_levels + 1)]
        for name in self.layers:
            setattr(self, name, getattr(model, name))
        # A layer's width is its last block's last BatchNorm (bn3 in Bottleneck, bn2 in BasicBlock).
        last_blocks = [getattr(self, name)[-1] for name in self.layers]
        self.channels = [getattr(block, "bn3", block.bn2).num_features for block in last_blocks]
        self.strides = list(RESIDUAL_STRIDES[:num_levels])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for name in self.layers:
            x = getattr(self, name)(x)
            outputs.append(x)
        return outputs


class PlainBody(nn.Module):
    """A single-map body (``features``, ``Tensor[B, 3, H, W] -> Tensor[B, C, H/stride, W/stride]``):
    the small net, AlexNet, VGG and the MobileNets (their ``features``, torchvision's names)."""

    def __init__(self, features: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.features = features
        self.channels, self.strides = [out_channels], [float(stride)]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.features(x)]


def torchvision_model(name: str, pretrained: bool) -> nn.Module:
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
            "(model.backbone_weights) instead of --pretrained."
        ) from error


def _conv_block(
    in_channels: int, out_channels: int, pool: bool, padding: int, strided: bool = False
) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU, then a 2x2 max-pool (``pool``), or instead the conv itself
    with stride 2 (``strided``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=2 if strided else 1, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool and not strided:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def small_features(
    padding: int = 1, num_blocks: int = 5, strided_blocks: int = 0
) -> tuple[nn.Sequential, int, int]:
    """``num_blocks`` (2-5) 3x3 conv + BatchNorm + ReLU blocks (widths 32-64-128-256-256); all but
    the last halve the map (a 2x2 max-pool, or see ``strided_blocks``). Returns ``(features,
    out_channels, stride)``: with five blocks the stride is 16 and a 128x128 image gives an 8x8x256
    map; with four (32-64-128-256) it is 8.

    ``strided_blocks``: the first that many blocks (at most all but the last, so a default of 2
    still fits a two-block net) halve the map with a stride-2 convolution instead of the max-pool.
    Same stride and grid, but the first block's large map is a quarter of the size, which is where
    a 64-pixel window spends most of its training step on a CPU (BatchNorm, ReLU and pooling over
    32 x 62 x 62 values). With valid convolutions a strided
    block sees less of the window's far edge: four blocks with two strided cover the first 59 of
    64 pixels along each axis (62 with none), the last 5 rows and columns never reach the output.

    ``padding=0`` ("valid" convolutions) makes the output at every position depend only on the
    pixels of its receptive field, never on zero padding at the image border. That is what makes a
    sliding-window pass over a large image exactly equal to running the net on each crop (OverFeat,
    section 3.5), so OverFeat's small net uses it: a 64x64 window then gives a 4x4 grid with four
    blocks.
    """
    if not 2 <= num_blocks <= len(SMALL_WIDTHS):
        raise ValueError(f"the small net has 2 to {len(SMALL_WIDTHS)} blocks, got {num_blocks}")
    if strided_blocks < 0:
        raise ValueError(f"strided_blocks must be 0 or more, got {strided_blocks}")
    widths = SMALL_WIDTHS[:num_blocks]
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for index, width in enumerate(widths):
        last = index == len(widths) - 1
        strided = not last and index < strided_blocks
        stages[f"block{index + 1}"] = _conv_block(in_channels, width, not last, padding, strided)
        in_channels = width
    return nn.Sequential(stages), widths[-1], 2 ** (num_blocks - 1)


def _small_body(pretrained: bool, width: int, num_levels: int) -> nn.Module:
    if pretrained:
        raise ValueError(
            "the 'small' backbone has no pretrained weights; train it from scratch or pass --backbone-weights FILE"
        )
    features, channels, stride = small_features()
    return PlainBody(features, channels, stride)


def _compact_body(pretrained: bool, width: int, num_levels: int) -> nn.Module:
    if pretrained:
        raise ValueError("the compact backbone has no pretrained weights; set pretrained_backbone: false")
    return CompactBody(width, num_levels)


def _csp_body(pretrained: bool, width: int, num_levels: int) -> nn.Module:
    if pretrained:
        raise ValueError("the csp backbone has no pretrained weights; set pretrained_backbone: false")
    return CSPBody(width, num_levels)


def _resnet_body(name: str) -> Callable[[bool, int, int], nn.Module]:
    def build(pretrained: bool, width: int, num_levels: int) -> nn.Module:
        return ResNetBody(torchvision_model(name, pretrained), num_levels)

    return build


def _features_body(name: str, out_channels: int) -> Callable[[bool, int, int], nn.Module]:
    """Models whose convolutional part is ``model.features`` (AlexNet, VGG, MobileNets)."""

    def build(pretrained: bool, width: int, num_levels: int) -> nn.Module:
        return PlainBody(torchvision_model(name, pretrained).features, out_channels, stride=32)

    return build


# name -> build(pretrained, width, num_levels) -> body with ``channels`` and ``strides`` per level.
# ``num_levels`` is how many of C2..C5 a multi-level body builds; single-map bodies ignore it.
BODIES: dict[str, Callable[[bool, int, int], nn.Module]] = {
    "compact": _compact_body,
    "csp": _csp_body,
    "small": _small_body,
    "alexnet": _features_body("alexnet", 256),
    "vgg16": _features_body("vgg16", 512),
    "resnet18": _resnet_body("resnet18"),
    "resnet34": _resnet_body("resnet34"),
    "resnet50": _resnet_body("resnet50"),
    "resnet101": _resnet_body("resnet101"),
    "mobilenet_v2": _features_body("mobilenet_v2", 1280),
    "mobilenet_v3_large": _features_body("mobilenet_v3_large", 960),
}
MULTI_LEVEL = ("compact", "csp", "resnet18", "resnet34", "resnet50", "resnet101")
BATCHNORM_MODES = ("train", "sync", "frozen")


@dataclasses.dataclass
class BackboneConfig:
    """The backbone fields every detector config shares.

    ``backbone``: a key of :data:`BODIES` (``compact``, ``csp``, ``resnet18/34/50/101``, ``small``,
    ``alexnet``, ``vgg16``, ``mobilenet_v2``, ``mobilenet_v3_large``); ``backbone_width``: the
    compact net's stem width (its stages have 2, 4 and 8 times that; the csp net's 2, 4, 8 and 16);
    ``pretrained_backbone``:
    torchvision's ImageNet weights; ``backbone_weights``: a local state-dict file instead;
    ``channels_last``: run the convolutions channels-last (oneDNN's faster layout on CPUs).
    ``batchnorm``: how BatchNorm layers normalise (:data:`BATCHNORM_MODES`): ``train``, over each
    process's batch; ``sync``, over the batches of all processes of a ``torchrun`` run (GPUs only;
    the same as ``train`` in one process), for a few images per GPU; ``frozen``, the body's
    statistics and scale fixed at their loaded values (:func:`freeze_batchnorm`), the usual choice
    with a pretrained backbone (a batch of 2 images estimates them worse than ImageNet did).
    """

    backbone: str = choice("compact", tuple(BODIES))
    backbone_width: int = 32
    pretrained_backbone: bool = False
    backbone_weights: str | None = None
    channels_last: bool = False
    batchnorm: str = choice("train", BATCHNORM_MODES)


def channels_last_parameters(module: nn.Module) -> nn.Module:
    """Lay out every 4-D parameter of ``module`` channels-last (in place), for a model that runs its
    convolutions channels-last: their gradients then come out in the parameters' own layout. A
    1 x 1 kernel counts as already channels-last to PyTorch (its strides on size-1 sides do not
    matter to it), but not to DDP's gradient buckets, which then warn that the strides do not match;
    the gradients of larger kernels would be copied into the parameters' layout at every step."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() == 4:
                _, channels, height, width = parameter.shape
                strides = (channels * height * width, 1, width * channels, channels)
                laid_out = torch.empty_strided(
                    parameter.shape, strides, dtype=parameter.dtype, device=parameter.device
                )
                parameter.data = laid_out.copy_(parameter.data)
    return module


def without_backbone_weights(config):
    """A copy of a method's config (any dataclass with ``pretrained_backbone`` / ``backbone_weights``
    fields: every detector's, the localizer's, OverFeat's, DeepPose's) that builds the backbone
    with random weights, for a model whose weights come from a checkpoint next: building it then
    never downloads ImageNet weights nor reads a weights file that may be gone."""
    names = {field.name for field in dataclasses.fields(config)}
    changes = {"pretrained_backbone": False, "backbone_weights": None}
    return dataclasses.replace(config, **{name: value for name, value in changes.items() if name in names})


def check_backbone_name(name: str) -> None:
    if name not in BODIES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BODIES)}")


def set_batchnorm_mode(body: nn.Module, mode: str) -> nn.Module:
    """``body`` (its weights loaded) set up for ``model.batchnorm=mode``: ``frozen`` freezes its
    BatchNorm (:func:`freeze_batchnorm`); every mode is kept as ``body.batchnorm_mode``, which
    :func:`sync_batchnorm` reads once the training engine knows how many processes there are."""
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"model.batchnorm={mode!r}: choose one of {', '.join(BATCHNORM_MODES)}")
    if mode == "frozen":
        freeze_batchnorm(body)
    body.batchnorm_mode = mode
    return body


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` inside ``module`` replaced, in place, by a ``FrozenBatchNorm2d`` with
    its running statistics, scale and shift: eval-mode BatchNorm, a fixed per-channel affine map,
    in training too and with nothing to train. The state dict keeps its names (only BatchNorm's
    step counter goes, and ``FrozenBatchNorm2d`` ignores it when loading), so a checkpoint of
    either kind loads. Returns ``module`` (its replacement when it is itself a BatchNorm)."""
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps).to(module.running_mean.device)
        with torch.no_grad():
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def sync_batchnorm(model: nn.Module, world_size: int, device: torch.device | str) -> bool:
    """Under data-parallel training (``world_size`` > 1), a model whose backbone was built with
    ``batchnorm=sync`` has every BatchNorm layer (backbone, neck and heads) converted in place to
    ``SyncBatchNorm``, which normalises over the batches of all processes: with 2 images a GPU
    each process's statistics are too noisy to train on. In one process nothing changes (there is
    nothing to synchronise). Returns whether it converted. Call it before wrapping the model in
    ``DistributedDataParallel``; parameters and buffers stay the same tensors, so an optimiser
    built earlier still holds them, and the state dict keeps its names."""
    wanted = any(getattr(module, "batchnorm_mode", None) == "sync" for module in model.modules())
    if world_size <= 1 or not wanted:
        return False
    if torch.device(device).type != "cuda":
        raise ValueError(
            "model.batchnorm=sync needs GPUs (torch's SyncBatchNorm runs on CUDA only); on CPUs train with "
            "--set model.batchnorm=train (or frozen, with a pretrained backbone)"
        )
    nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm children in place
    return True


def load_weights_file(module: nn.Module, weights_path: str | Path) -> None:
    """Load the parameters of ``module`` from a state dict file.

    The file may hold more keys than ``module`` needs (a full torchvision model's state dict: its
    classifier is ignored; a detlab checkpoint: its ``model`` entry), but every key of ``module``
    must be there with the right shape.
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


# ------------------------------------------------------------------------------------------------
# The one feature extractor every detector uses.


class FeatureExtractor(nn.Module):
    """A body (+ FPN) with the interface the RPN and RoI heads use: ``forward(batch)`` returns an
    ``OrderedDict[name, Tensor[B, out_channels, H_l, W_l]]``; ``strides`` and ``names`` per level.

    Without an FPN the detector sees the body's last level (C4 for the residual bodies, which are
    built only that far); with one (Lin et al. 2017, section 3) the pyramid starts at
    ``fpn_min_level`` (2 or 3) and ends at P5 (the paper's extra P6 would hold no anchors worth
    having for the objects here).
    """

    def __init__(
        self,
        body: nn.Module,
        fpn_channels: int | None = None,
        fpn_min_level: int = 3,
        channels_last: bool = False,
    ):
        super().__init__()
        if fpn_min_level not in (2, 3):
            raise ValueError(f"fpn_min_level must be 2 or 3, got {fpn_min_level}")
        self.body = body
        self.fpn = None
        self.first_level = 0
        if fpn_channels:
            if len(body.channels) != 4:
                raise ValueError("an FPN needs a backbone with four levels (compact or a ResNet)")
            self.first_level = fpn_min_level - 2  # index into the body's [C2, C3, C4, C5]
            self.fpn = FeaturePyramidNetwork(body.channels[self.first_level :], fpn_channels)
            self.strides = list(body.strides[self.first_level :])
            self.out_channels = fpn_channels
        else:
            self.strides = [body.strides[-1]]
            self.out_channels = body.channels[-1]
        self.names = [str(index) for index in range(len(self.strides))]
        # Channels-last input makes every convolution run channels-last; the weights stay contiguous,
        # which DistributedDataParallel's gradient buckets expect.
        self.channels_last = channels_last

    def forward(self, batch: Tensor) -> OrderedDict[str, Tensor]:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        levels = self.body(batch)
        if self.fpn is None:
            return OrderedDict([("0", levels[-1])])
        levels = levels[self.first_level :]
        pyramid = self.fpn(OrderedDict((str(i), level) for i, level in enumerate(levels)))
        return OrderedDict((name, level) for name, level in zip(self.names, pyramid.values()))


def build_feature_extractor(
    name: str = "compact",
    width: int = 32,
    fpn: bool = False,
    fpn_channels: int = 96,
    pretrained: bool = False,
    fpn_min_level: int = 3,
    channels_last: bool = False,
    weights_path: str | Path | None = None,
    batchnorm: str = "train",
) -> FeatureExtractor:
    """The :class:`FeatureExtractor` of body ``name`` (a key of :data:`BODIES`), with an FPN when
    ``fpn``. ``pretrained`` loads torchvision's ImageNet weights (a ``ValueError`` with advice when
    they cannot be downloaded); ``weights_path`` loads a local state dict into the body;
    ``batchnorm``: a :data:`BATCHNORM_MODES` mode for the body (:func:`set_batchnorm_mode`)."""
    check_backbone_name(name)
    if fpn and name not in MULTI_LEVEL:
        raise ValueError(f"backbone {name!r} has one feature map; an FPN needs one of {MULTI_LEVEL}")
    body = BODIES[name](pretrained, width, 4 if fpn else 3)
    if weights_path is not None:
        load_weights_file(body, weights_path)
    body = set_batchnorm_mode(body, batchnorm)
    return FeatureExtractor(body, fpn_channels if fpn else None, fpn_min_level, channels_last)


def feature_extractor_from_config(config: BackboneConfig, **options) -> FeatureExtractor:
    """:func:`build_feature_extractor` with the fields of a :class:`BackboneConfig` (``options``:
    the FPN arguments)."""
    return build_feature_extractor(
        config.backbone,
        config.backbone_width,
        pretrained=config.pretrained_backbone,
        channels_last=config.channels_last,
        weights_path=config.backbone_weights,
        batchnorm=config.batchnorm,
        **options,
    )


# ------------------------------------------------------------------------------------------------
# Classifier nets: conv features + fully-connected layers, for one fixed-size window.


@dataclass
class ClassifierNet:
    """The parts of a classification network with fully-connected layers.

    ``features``: conv part, ``Tensor[B, 3, S, S] -> Tensor[B, out_channels, h, w]`` for the window
    size S, with total ``stride``; ``hidden``: ``nn.Sequential`` (an optional grid max-pool, then
    ``nn.Flatten``, then Linear/ReLU/Dropout layers), ``Tensor[B, C, h, w] -> Tensor[B, hidden_dim]``
    (the last FC layer before the class scores); ``grid``: ``(h, w)``, the feature grid of one
    window, which the first Linear layer flattens.
    """

    features: nn.Module
    hidden: nn.Sequential
    hidden_dim: int
    grid: tuple[int, int]
    out_channels: int
    stride: int


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
    strided_blocks: int = 0,
) -> ClassifierNet:
    """Conv features and the fully-connected layers of an AlexNet/VGG-style classifier.

    ``alexnet`` and ``vgg16`` reuse torchvision's FC layers (4096 wide, all but the final 1000-way
    layer) and need ``window_size=224`` for their 6x6 / 7x7 grids (torchvision's adaptive pooling is
    dropped, it is the identity at that size). ``small`` gets two new FC layers of ``hidden_dim``
    over its flattened ``h x w x C`` grid (``num_blocks`` conv blocks, see :func:`small_features`)
    or, with ``pool="max"``, over the maximum of each channel across the grid (an ``h x w``
    max-pool: translation-invariant class evidence, which a from-scratch net learns several times
    faster; it stays convertible to a sliding max-pool). ``padding=1`` pads the small net's
    convolutions: objects at the window border keep all their pixels' evidence (better for a
    localizer), but the net is then exactly equal to a sliding window only at its own window size.
    ``strided_blocks``: see :func:`small_features`.
    ``weights_path``: a state dict of the full network (features and FC layers).
    """
    check_backbone_name(name)
    if pool not in POOL_CHOICES:
        raise ValueError(f"pool must be one of {POOL_CHOICES}, got {pool!r}")
    if name == "small":
        if pretrained:
            raise ValueError("the 'small' network has no pretrained weights")
        features, out_channels, stride = small_features(padding, num_blocks, strided_blocks)
        grid = _grid_size(features, window_size)
        pooled: list[nn.Module] = [nn.MaxPool2d(grid)] if pool == "max" else []
        cells = 1 if pool == "max" else grid[0] * grid[1]
        hidden = nn.Sequential(
            *pooled,
            nn.Flatten(),
            nn.Linear(out_channels * cells, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        if weights_path is not None:
            load_weights_file(nn.ModuleDict({"features": features, "hidden": hidden}), weights_path)
        return ClassifierNet(features, hidden, hidden_dim, grid, out_channels, stride)
    if pool != "none":
        raise ValueError(f"pool={pool!r} is for the 'small' net; {name!r} keeps its own FC layers")
    if name not in ("alexnet", "vgg16"):
        raise ValueError(
            f"backbone {name!r} has no fully-connected layers; use 'small', 'alexnet' or 'vgg16'"
        )
    model = torchvision_model(name, pretrained)
    if weights_path is not None:
        load_weights_file(model, weights_path)
    grid = _grid_size(model.features, window_size)
    expected = 6 if name == "alexnet" else 7
    if grid != (expected, expected):
        raise ValueError(
            f"{name}'s fully-connected layers expect a {expected}x{expected} feature grid; window size "
            f"{window_size} gives {grid[0]}x{grid[1]} (use --window-size 224)"
        )
    # torchvision: classifier = [Dropout?, Linear, ReLU, Dropout, Linear, ReLU, (Dropout), Linear(->1000)]
    hidden = nn.Sequential(nn.Flatten(), *list(model.classifier.children())[:-1])
    out_channels = 256 if name == "alexnet" else 512
    return ClassifierNet(model.features, hidden, model.classifier[-1].in_features, grid, out_channels, 32)


def backbone_body(config: BackboneConfig) -> nn.Module:
    """The body of ``config.backbone`` up to C5 (a single-map body: its one map), its weights file
    loaded, its BatchNorm as ``config.batchnorm`` says."""
    check_backbone_name(config.backbone)
    return with_weights_file(
        BODIES[config.backbone](config.pretrained_backbone, config.backbone_width, 4), config
    )


def with_weights_file(body: nn.Module, config: BackboneConfig) -> nn.Module:
    """``body`` with ``config.backbone_weights`` loaded, then frozen or marked per ``config.batchnorm``."""
    if config.backbone_weights:
        load_weights_file(body, config.backbone_weights)
    return set_batchnorm_mode(body, config.batchnorm)
