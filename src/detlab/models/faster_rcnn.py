"""Faster R-CNN (Ren et al. 2015): a backbone, a Region Proposal Network on its features, and the
Fast R-CNN head on the RPN's proposals, trained jointly with four losses (section 3.2,
"approximate joint training"), or with the paper's 4-step alternating training as an option.

The optional FPN variant (Lin et al. 2017) runs the same RPN head on every pyramid level with one
anchor scale group per level and pools each RoI from the level matching its size.

Shape letters: B images; C object classes (labels 1..C, 0 background); P proposals of an image.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from detlab.models.fast_rcnn import ImageBatcher, RCNNHeadConfig, build_head_and_batcher
from detlab.models.roi_heads import RoIHead
from detlab.models.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead


@dataclasses.dataclass
class FasterRCNNConfig(RCNNHeadConfig):
    """Faster R-CNN settings. The defaults suit a 2-core CPU trained from scratch in minutes.

    GPU defaults (the ``faster_rcnn_gpu`` preset): ``backbone: resnet50``, ``fpn: true``,
    ``min_size: 800``, ``max_size: 1333``, RPN top-n 2000/1000 train and 1000/1000 test,
    ``rois_per_image: 512``, ``representation_size: 1024``.

    ``backbone``: ``compact`` (a small residual net with BatchNorm, defined here, sized by
    ``backbone_width``) or ``resnet18/34/50/101`` (torchvision). ``anchor_sizes`` is flat and split
    evenly over the feature levels, smallest first (3 levels with ``fpn``, 4 with ``fpn_min_level: 2``, 1 without);
    ``aspect_ratios`` are height / width.

    ``fpn_min_level``: 3 builds the pyramid P3-P5 (strides 8-32); 2 adds P2 (stride 4), which small
    objects in small images need, for about 70% more compute. ``roi_canonical_size``: the FPN RoI
    level rule (Lin et al. 2017, equation 1) sends a RoI of side ``roi_canonical_size`` to P4, half
    that to P3, and so on; the paper's 224 suits 800-pixel images, where a smaller value spreads
    the objects of small images over the levels instead of pooling them all from the finest.
    """

    fpn: bool = True
    fpn_channels: int = 96
    fpn_min_level: int = 3
    anchor_sizes: tuple[float, ...] = (16.0, 24.0, 40.0, 64.0, 96.0, 144.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_batch_size_per_image: int = 256
    roi_pooling: str = "align"  # align | pool (single level only; FPN always aligns)
    training_stage: str = "joint"  # joint | rpn | detector (steps of the 4-step alternating scheme)
    recipe: str = "joint"  # joint | 4step: how `detlab train` trains it (4step: train_alternating)


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
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
        self.conv1 = _conv_bn(in_channels, out_channels, stride)
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


class CompactBackbone(nn.Module):
    """A small residual CNN for CPUs: stride-4 stem with ``width`` channels, then stages at strides
    8, 16 and 32 with ``width * (2, 4, 8)`` channels. Returns the four outputs (C2, C3, C4, C5)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, width // 2, 2), _conv_bn(width // 2, width, 2), ResidualBlock(width, width)
        )
        channels = [width * 2, width * 4, width * 8]
        stages, previous = [], width
        for out_channels in channels:
            stages.append(
                nn.Sequential(
                    ResidualBlock(previous, out_channels, 2), ResidualBlock(out_channels, out_channels)
                )
            )
            previous = out_channels
        self.stages = nn.ModuleList(stages)
        self.channels = [width, *channels]
        self.strides = [4.0, 8.0, 16.0, 32.0]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = [x]
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class FeatureExtractor(nn.Module):
    """Backbone (+ FPN) with the interface the RPN and RoI head use: ``forward(batch)`` returns an
    ``OrderedDict[name, Tensor[B, out_channels, H_l, W_l]]``; ``strides`` and ``names`` per level.

    ``body`` returns C2-C5 (strides 4-32). Without an FPN the detector sees C4 alone; with one, the
    pyramid starts at ``fpn_min_level`` (2 or 3) and ends at P5."""

    def __init__(
        self,
        body: nn.Module,
        channels: list[int],
        strides: list[float],
        fpn_channels: int | None,
        fpn_min_level: int = 3,
        channels_last: bool = False,
    ):
        super().__init__()
        if fpn_min_level not in (2, 3):
            raise ValueError(f"fpn_min_level must be 2 or 3, got {fpn_min_level}")
        self.body = body
        self.fpn = None
        self.first_level = fpn_min_level - 2  # index into the body's [C2, C3, C4, C5]
        if fpn_channels:
            # P2/P3-P5 from C2/C3-C5 (Lin et al. 2017, section 3); objects here are small enough that
            # the paper's extra P6 level would hold no anchors worth having.
            self.fpn = FeaturePyramidNetwork(channels[self.first_level :], fpn_channels)
            self.strides = list(strides[self.first_level :])
            self.out_channels = fpn_channels
        else:
            self.strides = [strides[-2]]  # one map at stride 16, as with VGG16 conv5 in the papers
            self.out_channels = channels[-2]
        self.names = [str(index) for index in range(len(self.strides))]
        # Channels-last input makes every convolution run channels-last (oneDNN's faster layout on
        # CPUs); the weights stay contiguous, which DistributedDataParallel's gradient buckets expect.
        self.channels_last = channels_last

    def forward(self, batch: Tensor) -> OrderedDict[str, Tensor]:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        levels = self.body(batch)
        if self.fpn is None:
            return OrderedDict([("0", levels[-2])])
        levels = levels[self.first_level :]
        pyramid = self.fpn(OrderedDict((str(i), level) for i, level in enumerate(levels)))
        return OrderedDict((name, level) for name, level in zip(self.names, pyramid.values()))


class _TorchvisionResNetBody(nn.Module):
    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        from torchvision.models import get_model

        weights = "DEFAULT" if pretrained else None
        self.net = get_model(name, weights=weights)
        widths = {"resnet18": 64, "resnet34": 64}.get(name, 256)
        self.channels = [widths, widths * 2, widths * 4, widths * 8]
        self.strides = [4.0, 8.0, 16.0, 32.0]

    def forward(self, x: Tensor) -> list[Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        c2 = net.layer1(x)
        c3 = net.layer2(c2)
        c4 = net.layer3(c3)
        c5 = net.layer4(c4)
        return [c2, c3, c4, c5]


def build_feature_extractor(
    name: str,
    width: int = 32,
    fpn: bool = False,
    fpn_channels: int = 96,
    pretrained: bool = False,
    fpn_min_level: int = 3,
    channels_last: bool = False,
) -> FeatureExtractor:
    """``compact`` or a torchvision ResNet (``resnet18/34/50/101``, optionally ImageNet weights)."""
    if name == "compact":
        if pretrained:
            raise ValueError("the compact backbone has no pretrained weights; set pretrained_backbone: false")
        body = CompactBackbone(width)
    elif name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        body = _TorchvisionResNetBody(name, pretrained)
    else:
        raise ValueError(
            f"unknown detection backbone {name!r}; use compact, resnet18, resnet34, resnet50 or resnet101"
        )
    return FeatureExtractor(
        body, body.channels, body.strides, fpn_channels if fpn else None, fpn_min_level, channels_last
    )


TRAINING_STAGES = ("joint", "rpn", "detector")

# The 4-step alternating training of section 3.2: (stage, shared conv layers frozen).
ALTERNATING_STEPS = (("rpn", False), ("detector", False), ("rpn", True), ("detector", True))


class FasterRCNN(nn.Module):
    """Backbone -> RPN -> RoI head, handed in as parts; obeys the detector contract.

    ``training_stage`` selects what a training forward computes: ``joint`` all four losses;
    ``rpn`` only the RPN's two; ``detector`` only the head's two, on the RPN's (fixed) proposals.
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        rpn: RegionProposalNetwork,
        roi_head: RoIHead,
        batcher: ImageBatcher,
        training_stage: str = "joint",
    ):
        super().__init__()
        self.backbone, self.rpn, self.roi_head, self.batcher = backbone, rpn, roi_head, batcher
        self.training_stage = training_stage
        self.freeze_backbone = False

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box"}``
        (a subset for the alternating stages); eval: per image ``{"boxes" Tensor[K, 4],
        "scores" Tensor[K], "labels" int64 Tensor[K]}`` in the coordinates of ``images``."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        if self.training_stage not in TRAINING_STAGES:
            raise ValueError(f"training_stage must be one of {TRAINING_STAGES}, got {self.training_stage!r}")
        if self.training and self.freeze_backbone:
            self.backbone.eval()  # frozen shared layers keep their BatchNorm statistics too
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, image_sizes, scales, targets = self.batcher(images, targets if self.training else None)
        features = self.backbone(batch)
        if not self.training:
            proposals, _ = self.rpn(features, image_sizes, self.backbone.strides)
            detections, _ = self.roi_head(features, proposals, image_sizes)
            return self.batcher.restore(detections, scales, original_sizes)
        rpn_targets = None if self.training_stage == "detector" else targets
        proposals, losses = self.rpn(features, image_sizes, self.backbone.strides, rpn_targets)
        if self.training_stage != "rpn":
            _, head_losses = self.roi_head(features, proposals, image_sizes, targets)
            losses.update(head_losses)
        return losses


def build_faster_rcnn(config: FasterRCNNConfig, num_classes: int) -> FasterRCNN:
    """``MODELS["faster_rcnn"]``: the detector described by ``config`` for ``num_classes`` classes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    backbone = build_feature_extractor(
        config.backbone,
        config.backbone_width,
        config.fpn,
        config.fpn_channels,
        config.pretrained_backbone,
        config.fpn_min_level,
        config.channels_last,
    )
    num_levels = len(backbone.strides)
    if len(config.anchor_sizes) % num_levels:
        raise ValueError(
            f"anchor_sizes has {len(config.anchor_sizes)} sizes, not a multiple of the {num_levels} feature levels"
        )
    per_level = len(config.anchor_sizes) // num_levels
    sizes = tuple(tuple(config.anchor_sizes[i * per_level : (i + 1) * per_level]) for i in range(num_levels))
    anchors = AnchorGenerator(sizes, config.aspect_ratios)
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(backbone.out_channels, anchors.num_anchors_per_location),
        pre_nms_top_n=(config.rpn_pre_nms_top_n_train, config.rpn_pre_nms_top_n_test),
        post_nms_top_n=(config.rpn_post_nms_top_n_train, config.rpn_post_nms_top_n_test),
        nms_threshold=config.rpn_nms_threshold,
        batch_size_per_image=config.rpn_batch_size_per_image,
    )
    head, batcher = build_head_and_batcher(config, backbone, num_classes)
    return FasterRCNN(backbone, rpn, head, batcher, config.training_stage)


def set_training_stage(model: FasterRCNN, stage: str, freeze_backbone: bool) -> None:
    """Make only the parts ``stage`` trains require gradients (``joint``: all; ``rpn``: the RPN;
    ``detector``: the RoI head), plus the backbone unless ``freeze_backbone``. Build the optimiser
    after calling this, over the parameters that require gradients."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"training stage must be one of {TRAINING_STAGES}, got {stage!r}")
    model.training_stage, model.freeze_backbone = stage, freeze_backbone
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not freeze_backbone)
    for parameter in model.rpn.parameters():
        parameter.requires_grad_(stage in ("joint", "rpn"))
    for parameter in model.roi_head.parameters():
        parameter.requires_grad_(stage in ("joint", "detector"))


def train_alternating(model: FasterRCNN, train_step: Callable[[FasterRCNN, int], object]) -> None:
    """The paper's 4-step alternating training (section 3.2), with ``train_step(model, step_index)``
    training whatever requires gradients (e.g. ``detlab.engine.fit`` with a fresh optimiser):

    1. RPN and backbone; 2. detection head and backbone on the step-1 RPN's proposals;
    3. RPN only, shared layers frozen; 4. detection head only, shared layers frozen.

    One difference from the paper: step 2 keeps training the same backbone rather than a second
    copy initialised from ImageNet, since detlab's backbones also train from scratch; steps 3 and 4
    (the ones that make the layers shared) are as published. The model is left in ``joint`` mode.
    """
    for index, (stage, freeze_backbone) in enumerate(ALTERNATING_STEPS):
        set_training_stage(model, stage, freeze_backbone)
        train_step(model, index)
    set_training_stage(model, "joint", False)
