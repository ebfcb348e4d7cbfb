"""One-stage detectors: ``yolo`` (anchor-free, task-aligned, the default one-stage detector) and
``yolov1`` (Redmon et al. 2016, as the paper describes it).

``yolo``: a backbone's C3-C5 (strides 8, 16, 32; the ``csp`` body by default, any multi-level
detlab backbone otherwise), a feature pyramid with a top-down and a bottom-up path (FPN + PAN)
of cross-stage-partial blocks, and on every level a head with separate branches: class logits, and
the four distances from the cell centre to the box's sides (``ltrb``, in units of the level's
stride; with ``dfl`` as a distribution over ``reg_max`` bins whose expectation is the distance).
Training assigns each ground-truth box the ``topk`` cell centres inside it with the highest
alignment ``score ** alpha * IoU ** beta`` (task-aligned assignment, Feng et al. 2021; a cell
claimed by two boxes goes to the one its predicted box overlaps more); the losses are binary
cross-entropy against targets scaled by the normalised alignment, CIoU on the box and, with
``dfl``, the distribution focal loss. Test time: sigmoid scores, ``score_threshold``, the best
``pre_nms_top_k``, class-wise NMS, ``detections_per_image``.

``yolov1``: the image warped to ``input_size`` square; an ``S x S`` grid; per cell ``B`` boxes
``(x, y, sqrt(w), sqrt(h), confidence)`` (x, y relative to the cell, w, h to the image) and ``C``
class probabilities; the sum-squared loss of the paper's equation 3 (``lambda_coord``,
``lambda_noobj``), the responsible predictor being the one whose box overlaps the object more and
its confidence target that IoU; class-specific confidence at test time, then NMS. A cell holds one
object: when several objects' centres fall in one cell, the largest is its target and the others
are lost (what crowded small objects suffer from).

Shape letters: B images, A anchor points (cells of every level), M ground-truth boxes an image
(padded), C classes, R ``reg_max`` bins, S grid side, P predictors a cell.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss

from detlab import boxes as box_ops
from detlab.config import choice, is_auto
from detlab.models.backbones import (
    BODIES,
    MULTI_LEVEL,
    BackboneConfig,
    CrossStageBlock,
    CSPBody,
    check_backbone_name,
    conv_bn_silu,
    load_weights_file,
    set_batchnorm_mode,
)
from detlab.models.transform import IMAGENET_MEAN, IMAGENET_STD, ImageBatcher, warp_batch

GRAY = 0.447  # the padding colour (114 / 255) of letterboxed images, before normalisation


# ------------------------------------------------------------------------------------------------
# yolo: the anchor-free detector


@dataclasses.dataclass
class YOLOConfig(BackboneConfig):
    """The anchor-free one-stage detector. ``input_size``: the longer image side the detector
    resizes to (the other padded to a multiple of 32); ``width_multiple``/``depth_multiple`` scale
    the csp backbone's and the neck's channels and blocks (1/1 at ``backbone_width`` 16 is about
    YOLOv8n; 2/1 ~ s, 3/2 ~ m, for GPUs); ``neck_channels``: the pyramid's widths at strides 8, 16
    and 32 at width multiple 1. Assignment: ``topk`` candidates a box, ``alpha``, ``beta``. Losses:
    ``box_gain`` (CIoU), ``cls_gain`` (BCE), ``dfl_gain``; ``dfl`` with ``reg_max`` bins. Test:
    ``score_threshold``, ``pre_nms_top_k``, ``nms_threshold`` (class-wise), ``detections_per_image``.

    Training defaults (``RUN_DEFAULTS``): AdamW, an exponential moving average of the weights
    (``train.ema_decay``, what evaluation and checkpoints use), mosaic on half the training images
    (``data.mosaic``) until the last 15% of the budget, photometric jitter, bfloat16 autocast on
    CPUs that have it, channels-last convolutions.
    """

    backbone: str = choice("csp", MULTI_LEVEL)
    backbone_width: int = 16
    # "auto": chosen from the training images and boxes before the run (detlab.models.data_fit):
    # the smaller objects keep enough stride-8 cells, images are not blown up, at most 640
    input_size: int | str = "auto"
    width_multiple: float = 1.0
    depth_multiple: float = 1.0
    neck_channels: tuple[int, int, int] = (64, 128, 256)
    dfl: bool = True
    reg_max: int = 16
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    box_gain: float = 7.5
    cls_gain: float = 0.5
    dfl_gain: float = 1.5
    score_threshold: float = 0.001
    pre_nms_top_k: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 300
    # Coarse to fine: until coarse_until of the training budget, training batches are scaled so
    # their longer side is coarse_size (0: off), more images a second while the network learns
    # the large, easy cues; the rest of the budget and every evaluation at input_size
    coarse_size: int = 0
    coarse_until: float = 0.6

    channels_last: bool = True

    AUTO_FALLBACKS: ClassVar[dict] = {"input_size": 416}  # input_size "auto" built without data

    # Mosaic on half the images: on the synthetic set in 300 s, 0.742 mAP@0.5 against 0.433 with
    # every image a mosaic and 0.680 with none (docs/yolo.md).
    RUN_DEFAULTS: ClassVar[dict] = {
        "train": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "batch_size": 8, "warmup_steps": 100,
                  "clip_grad_norm": 10.0, "ema_decay": 0.9999, "ema_ramp_steps": 2000, "amp_cpu_bf16": True},
        "data": {"mosaic": 0.5, "photometric": True},
    }  # fmt: skip


def scaled(channels: int, multiple: float) -> int:
    """``channels * multiple`` rounded to a multiple of 8 (at least 8)."""
    return max(8, int(math.ceil(channels * multiple / 8) * 8))


class PathAggregationNeck(nn.Module):
    """FPN top-down then PAN bottom-up over C3-C5: ``[C3, C4, C5] -> [N3, N4, N5]`` with
    ``channels`` outputs, every merge a concatenation followed by a cross-stage block."""

    def __init__(self, in_channels: list[int], channels: list[int], depth: int):
        super().__init__()
        c3, c4, c5 = in_channels
        n3, n4, n5 = channels
        self.top_down4 = CrossStageBlock(c5 + c4, n4, depth, shortcut=False)
        self.top_down3 = CrossStageBlock(n4 + c3, n3, depth, shortcut=False)
        self.down3 = conv_bn_silu(n3, n3, 3, 2)
        self.bottom_up4 = CrossStageBlock(n3 + n4, n4, depth, shortcut=False)
        self.down4 = conv_bn_silu(n4, n4, 3, 2)
        self.bottom_up5 = CrossStageBlock(n4 + c5, n5, depth, shortcut=False)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = levels
        up = lambda x, like: F.interpolate(x, size=like.shape[-2:], mode="nearest")  # noqa: E731
        t4 = self.top_down4(torch.cat([up(c5, c4), c4], 1))
        n3 = self.top_down3(torch.cat([up(t4, c3), c3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), c5], 1))
        return [n3, n4, n5]


class DecoupledHead(nn.Module):
    """Per level, two branches of two 3x3 conv-BN-SiLU layers and a 1x1 output: ``4 * R`` box
    values (``R`` = 1 without DFL) and ``C`` class logits."""

    def __init__(self, channels: list[int], num_classes: int, bins: int, strides: list[float], input_size: int):
        super().__init__()
        box_width = max(16, channels[0] // 4, 4 * bins)
        cls_width = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(conv_bn_silu(c, box_width), conv_bn_silu(box_width, box_width), nn.Conv2d(box_width, 4 * bins, 1))
            for c in channels
        )  # fmt: skip
        self.cls = nn.ModuleList(
            nn.Sequential(conv_bn_silu(c, cls_width), conv_bn_silu(cls_width, cls_width), nn.Conv2d(cls_width, num_classes, 1))
            for c in channels
        )  # fmt: skip
        for branch, stride in zip(self.cls, strides):
            # Prior: about 5 objects an image among the level's cells (so early scores are small).
            nn.init.constant_(branch[-1].bias, math.log(5 / num_classes / (input_size / stride) ** 2))
        for branch in self.box:
            nn.init.constant_(branch[-1].bias, 1.0)

    def forward(self, levels: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> ``(box values Tensor[B, A, 4 * R], class logits Tensor[B, A, C])``, levels in order."""
        boxes = torch.cat([branch(x).flatten(2) for branch, x in zip(self.box, levels)], 2).transpose(1, 2)
        logits = torch.cat([branch(x).flatten(2) for branch, x in zip(self.cls, levels)], 2).transpose(1, 2)
        return boxes, logits


def anchor_points(levels: list[Tensor], strides: list[float]) -> tuple[Tensor, Tensor]:
    """The cell centres of every level in input pixels, ``(points Tensor[A, 2], strides Tensor[A])``."""
    points, point_strides = [], []
    for level, stride in zip(levels, strides):
        height, width = level.shape[-2:]
        ys = (torch.arange(height, device=level.device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=level.device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], 1))
        point_strides.append(torch.full((height * width,), float(stride), device=level.device))
    return torch.cat(points), torch.cat(point_strides)


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """``ltrb`` distances (pixels, ``[..., A, 4]``) from ``points`` (``[A, 2]``) -> xyxy boxes."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], -1)


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_labels: Tensor, gt_boxes: Tensor, gt_mask: Tensor,
    topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Task-aligned assignment, for a batch at once.

    ``scores`` ``[B, A, C]`` (probabilities), ``pred_boxes`` ``[B, A, 4]``, ``points`` ``[A, 2]``,
    ``gt_labels`` ``[B, M]`` (``1..C``), ``gt_boxes`` ``[B, M, 4]``, ``gt_mask`` ``[B, M]`` (real
    boxes; the rest is padding). A box's candidates are the points inside it; of those, the
    ``topk`` with the highest ``score[label] ** alpha * IoU ** beta`` are its positives; a point
    positive for several boxes keeps the one its predicted box overlaps most.

    Returns ``(foreground [B, A] bool, assigned box index [B, A], target boxes [B, A, 4],
    target scores [B, A, C])``: the one-hot class times the alignment normalised per box so that
    its best point's target is that box's best IoU among its positives."""
    batch, num_points, num_classes = scores.shape
    num_boxes = gt_boxes.shape[1]
    if num_boxes == 0:
        return (scores.new_zeros(batch, num_points, dtype=torch.bool), scores.new_zeros(batch, num_points, dtype=torch.long),
                scores.new_zeros(batch, num_points, 4), torch.zeros_like(scores))  # fmt: skip
    inside = (points[None, None] > gt_boxes[:, :, None, :2]).all(-1) & (points[None, None] < gt_boxes[:, :, None, 2:]).all(-1)
    inside &= gt_mask[:, :, None]  # [B, M, A]
    overlaps = box_ops.iou(gt_boxes, pred_boxes) * inside  # [B, M, A]
    labels = (gt_labels.clamp(min=1) - 1).long()
    box_scores = scores.gather(2, labels[:, None, :].expand(-1, num_points, -1)).transpose(1, 2)  # [B, M, A]
    alignment = box_scores.pow(alpha) * overlaps.pow(beta) * inside
    k = min(topk, num_points)
    top = alignment.topk(k, dim=2).indices  # [B, M, k]
    chosen = torch.zeros_like(alignment, dtype=torch.bool).scatter_(2, top, True)
    positive = chosen & inside & (alignment > 0)
    # A point claimed by several boxes: the box with the highest IoU keeps it.
    claimed = positive.sum(1)  # [B, A]
    if (claimed > 1).any():
        best = (overlaps * positive).argmax(1)  # [B, A]
        single = F.one_hot(best, num_boxes).transpose(1, 2).bool()  # [B, M, A]
        positive = torch.where((claimed > 1)[:, None, :], single & positive, positive)
    foreground = positive.any(1)  # [B, A]
    assigned = positive.float().argmax(1)  # [B, A]
    target_boxes = gt_boxes.gather(1, assigned[..., None].expand(-1, -1, 4))
    target_labels = labels.gather(1, assigned)
    aligned = alignment * positive
    best_alignment = aligned.amax(2, keepdim=True)  # [B, M, 1]
    best_overlap = (overlaps * positive).amax(2, keepdim=True)
    normalised = (aligned * best_overlap / (best_alignment + 1e-9)).amax(1)  # [B, A]
    target_scores = F.one_hot(target_labels, num_classes).float() * (normalised * foreground)[..., None]
    return foreground, assigned, target_boxes, target_scores


class YOLO(nn.Module):
    """Backbone -> FPN + PAN neck -> decoupled head over strides 8, 16, 32; obeys the detector
    contract (``{"loss_box", "loss_cls"[, "loss_dfl"]}`` in training, detections in eval)."""

    def __init__(self, body: nn.Module, num_classes: int, config: YOLOConfig):
        super().__init__()
        self.config, self.num_classes, self.body = config, num_classes, body
        self.strides = [8.0, 16.0, 32.0]
        depth = max(1, round(config.depth_multiple))
        channels = [scaled(c, config.width_multiple) for c in config.neck_channels]
        self.neck = PathAggregationNeck(list(body.channels[-3:]), channels, depth)
        self.bins = config.reg_max if config.dfl else 1
        self.head = DecoupledHead(channels, num_classes, self.bins, self.strides, config.input_size)
        self.register_buffer("bin_values", torch.arange(self.bins, dtype=torch.float32), persistent=False)
        # The longer side goes to input_size; the batch is padded to a multiple of 32.
        self.batcher = ImageBatcher(min_size=10**6, max_size=config.input_size, size_divisible=32)
        self.longer_side = config.input_size  # the training data are resized to it in advance
        self.progress = 0.0  # the share of the training budget spent (set_progress, from engine.fit)
        if config.backbone == "csp":  # from scratch: pixels to [-1, 1] around the padding grey
            self.batcher.mean.fill_(GRAY)
            self.batcher.std.fill_(0.5)

    def set_progress(self, fraction: float) -> None:
        """The share of the training budget spent (the engine tells it before each step)."""
        self.progress = fraction

    def training_factor(self) -> float | None:
        """How much this training batch is scaled beyond ``input_size``: ``coarse_size /
        input_size`` until ``coarse_until`` of the budget, else ``None`` (the batcher's own)."""
        config = self.config
        if not self.training or config.coarse_size <= 0 or self.progress >= config.coarse_until:
            return None
        return config.coarse_size / self.longer_side

    def features(self, batch: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        levels = self.neck(self.body(batch)[-3:])
        box_values, logits = self.head(levels)
        return box_values, logits, levels

    def distances(self, box_values: Tensor) -> Tensor:
        """``[B, A, 4 * R]`` -> ``ltrb`` distances in stride units, ``[B, A, 4]``."""
        if not self.config.dfl:
            return F.softplus(box_values)
        shape = box_values.shape[:-1]
        probabilities = box_values.float().view(*shape, 4, self.bins).softmax(-1)
        return (probabilities * self.bin_values).sum(-1)  # element-wise: float32 under bf16 autocast too

    def predict(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """A normalised, padded batch ``Tensor[B, 3, H, W]`` -> ``(box values [B, A, 4 R], class
        logits [B, A, C], boxes [B, A, 4] xyxy in the batch's pixels, points [A, 2], strides [A])``."""
        box_values, logits, levels = self.features(batch)
        points, strides = anchor_points(levels, self.strides)
        pred_boxes = distances_to_boxes(points, self.distances(box_values).float() * strides[:, None])
        return box_values, logits, pred_boxes, points, strides

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _, scales, targets = self.batcher(images, targets, factor=self.training_factor())
        box_values, logits, pred_boxes, points, strides = self.predict(batch)
        if self.training:
            return self.losses(box_values.float(), logits.float(), pred_boxes, points, strides, targets)
        detections = [self.postprocess(boxes, scores) for boxes, scores in zip(pred_boxes, logits.float().sigmoid())]
        return self.batcher.restore(detections, scales, original_sizes)

    def losses(self, box_values, logits, pred_boxes, points, strides, targets) -> dict[str, Tensor]:
        gt_labels, gt_boxes, gt_mask = pad_targets(targets, logits.device)
        foreground, _, target_boxes, target_scores = task_aligned_assign(
            logits.detach().sigmoid(), pred_boxes.detach(), points, gt_labels, gt_boxes, gt_mask,
            self.config.topk, self.config.alpha, self.config.beta,
        )  # fmt: skip
        normaliser = target_scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logits, target_scores, reduction="sum") / normaliser
        weight = target_scores.sum(-1)[foreground]  # [F]
        if foreground.any():
            ciou = complete_box_iou_loss(pred_boxes[foreground], target_boxes[foreground], reduction="none")
            loss_box = (ciou * weight).sum() / normaliser
        else:
            loss_box = pred_boxes.sum() * 0.0
        losses = {"loss_box": loss_box * self.config.box_gain, "loss_cls": loss_cls * self.config.cls_gain}
        if self.config.dfl:
            if foreground.any():
                anchor = points[None].expand(len(logits), -1, -1)[foreground]
                stride = strides[None].expand(len(logits), -1)[foreground][:, None]
                target = torch.cat([anchor - target_boxes[foreground][:, :2], target_boxes[foreground][:, 2:] - anchor], 1) / stride
                dfl = distribution_focal_loss(box_values[foreground].view(-1, 4, self.bins), target, self.bins)
                losses["loss_dfl"] = (dfl * weight).sum() / normaliser * self.config.dfl_gain
            else:
                losses["loss_dfl"] = box_values.sum() * 0.0
        return losses

    def postprocess(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """One image: ``boxes [A, 4]``, ``scores [A, C]`` -> the kept detections."""
        flat = scores.flatten()
        keep = flat > self.config.score_threshold
        candidates = torch.where(keep)[0]
        if len(candidates) > self.config.pre_nms_top_k:
            candidates = candidates[flat[candidates].topk(self.config.pre_nms_top_k).indices]
        point_index, class_index = candidates // self.num_classes, candidates % self.num_classes
        found_boxes, found_scores = boxes[point_index], flat[candidates]
        kept = box_ops.batched_nms(found_boxes, found_scores, class_index, self.config.nms_threshold)
        kept = kept[: self.config.detections_per_image]
        return {"boxes": found_boxes[kept], "scores": found_scores[kept], "labels": class_index[kept] + 1}


def pad_targets(targets: list[dict], device) -> tuple[Tensor, Tensor, Tensor]:
    """Targets as padded tensors: ``labels [B, M]``, ``boxes [B, M, 4]``, ``mask [B, M]``."""
    most = max([len(target["boxes"]) for target in targets] + [0])
    labels = torch.zeros(len(targets), most, dtype=torch.long, device=device)
    boxes = torch.zeros(len(targets), most, 4, device=device)
    mask = torch.zeros(len(targets), most, dtype=torch.bool, device=device)
    for index, target in enumerate(targets):
        count = len(target["boxes"])
        labels[index, :count] = target["labels"].to(device)
        boxes[index, :count] = target["boxes"].float().to(device).reshape(-1, 4)
        mask[index, :count] = True
    return labels, boxes, mask


def distribution_focal_loss(values: Tensor, target: Tensor, bins: int) -> Tensor:
    """DFL (Li et al. 2020): cross-entropy of each side's bin distribution (``values [F, 4, R]``
    logits) towards the two bins around the target distance (``target [F, 4]``, stride units),
    weighted by closeness; averaged over the four sides -> ``Tensor[F]``."""
    target = target.clamp(0, bins - 1 - 0.01)
    left = target.long()
    right_weight = target - left
    log_probabilities = values.log_softmax(-1)
    left_term = log_probabilities.gather(-1, left[..., None]).squeeze(-1)
    right_term = log_probabilities.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return -(left_term * (1 - right_weight) + right_term * right_weight).mean(-1)


def yolo_body(config: YOLOConfig) -> nn.Module:
    """The backbone's body: the csp net scaled by the multipliers, or a multi-level detlab backbone."""
    check_backbone_name(config.backbone)
    if config.backbone not in MULTI_LEVEL:
        raise ValueError(f"yolo needs a backbone with strides 8-32; choose one of {MULTI_LEVEL}")
    if config.backbone == "csp" and config.pretrained_backbone:
        raise ValueError("the csp backbone has no pretrained weights; use a resnet for ImageNet weights")
    if config.backbone == "csp":
        return with_weights_file(CSPBody(scaled(config.backbone_width, config.width_multiple), 4, config.depth_multiple), config)
    return backbone_body(config)


def backbone_body(config: BackboneConfig) -> nn.Module:
    """The body of ``config.backbone`` up to C5 (a single-map body: its one map), its weights file
    loaded, its BatchNorm as ``config.batchnorm`` says."""
    check_backbone_name(config.backbone)
    return with_weights_file(BODIES[config.backbone](config.pretrained_backbone, config.backbone_width, 4), config)


def with_weights_file(body: nn.Module, config: BackboneConfig) -> nn.Module:
    """``body`` with ``config.backbone_weights`` loaded, then frozen or marked per ``config.batchnorm``."""
    if config.backbone_weights:
        load_weights_file(body, config.backbone_weights)
    return set_batchnorm_mode(body, config.batchnorm)


def build_yolo(config: YOLOConfig, num_classes: int) -> YOLO:
    if is_auto(config.input_size):  # built without data: the fixed fallback
        config = dataclasses.replace(config, input_size=YOLOConfig.AUTO_FALLBACKS["input_size"])
    if config.coarse_size and not 32 <= config.coarse_size < config.input_size:
        raise ValueError(f"model.coarse_size={config.coarse_size}: the coarse training size must be at least 32 and "
                         f"below model.input_size ({config.input_size}); 0 turns coarse-to-fine training off")  # fmt: skip
    if not 0.0 <= config.coarse_until <= 1.0:
        raise ValueError(f"model.coarse_until={config.coarse_until}: a share of the budget, in [0, 1]")
    return YOLO(yolo_body(config), num_classes, config)


# ------------------------------------------------------------------------------------------------
# yolov1: the paper's detector


@dataclasses.dataclass
class YOLOv1Config(BackboneConfig):
    """YOLO v1 as the paper has it: ``input_size`` 448, ``grid`` 7, ``boxes_per_cell`` 2, the
    loss weights ``lambda_coord`` 5 and ``lambda_noobj`` 0.5. The network: a detlab backbone
    (its C5, stride 32), a 1x1 convolution to ``grid_channels``, the grid pooled to ``grid x
    grid``, then the paper's two fully-connected layers (``hidden`` units, leaky ReLU, dropout
    0.5) to the ``S x S x (5B + C)`` output. Test: class-specific confidence above
    ``score_threshold``, NMS at ``nms_threshold`` a class, the best ``detections_per_image``."""

    input_size: int = 448
    grid: int = 7
    boxes_per_cell: int = 2
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    grid_channels: int = 64
    hidden: int = 512
    dropout: float = 0.5
    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    detections_per_image: int = 100

    RUN_DEFAULTS: ClassVar[dict] = {
        "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 8, "warmup_steps": 100},
        "data": {"photometric": True},
    }  # fmt: skip


class YOLOv1(nn.Module):
    """Backbone -> 1x1 conv -> S x S pool -> FC -> FC: ``[B, S, S, 5P + C]``; the detector contract."""

    def __init__(self, body: nn.Module, num_classes: int, config: YOLOv1Config):
        super().__init__()
        self.config, self.num_classes, self.body = config, num_classes, body
        self.outputs = 5 * config.boxes_per_cell + num_classes
        self.reduce = nn.Sequential(nn.Conv2d(body.channels[-1], config.grid_channels, 1, bias=False),
                                    nn.BatchNorm2d(config.grid_channels), nn.LeakyReLU(0.1, inplace=True))  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(config.grid_channels * config.grid**2, config.hidden), nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(config.dropout), nn.Linear(config.hidden, config.grid**2 * self.outputs),
        )  # fmt: skip
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def grid_output(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> ``(Tensor[B, S, S, 5P + C], sizes Tensor[B, 4] (W, H, W, H) of the images as given)``."""
        windows, sizes = warp_batch(images, self.config.input_size)
        windows = (windows - self.mean) / self.std
        if self.config.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last)
        return self.network(windows), sizes

    def network(self, windows: Tensor) -> Tensor:
        """Normalised windows ``Tensor[B, 3, S_in, S_in]`` -> the grid ``Tensor[B, S, S, 5P + C]``."""
        grid = self.config.grid
        output = self.fc(self.pool(self.reduce(self.body(windows)[-1])))
        return output.view(len(windows), grid, grid, self.outputs).float()

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        output, sizes = self.grid_output(images)
        if self.training:
            return yolov1_loss(output, encode_yolov1_targets(targets, sizes, self.config.grid, self.num_classes),
                               self.config.boxes_per_cell, self.config.lambda_coord, self.config.lambda_noobj)  # fmt: skip
        return [self.decode(prediction, size) for prediction, size in zip(output, sizes)]

    def decode(self, prediction: Tensor, size: Tensor) -> dict[str, Tensor]:
        """One image's ``[S, S, 5P + C]`` -> detections in its pixels (class-specific confidence =
        class probability x box confidence, both clipped to [0, 1]; NMS a class)."""
        grid, predictors = self.config.grid, self.config.boxes_per_cell
        boxes = cell_boxes(prediction[..., : 5 * predictors].view(grid, grid, predictors, 5), grid)  # [S, S, P, 4]
        confidence = prediction[..., 4 : 5 * predictors : 5].clamp(0, 1)  # [S, S, P]
        probabilities = prediction[..., 5 * predictors :].clamp(0, 1)  # [S, S, C]
        scores = (probabilities[:, :, None, :] * confidence[..., None]).reshape(-1, self.num_classes)  # [S*S*P, C]
        boxes = (boxes.reshape(-1, 4) * size).clamp(min=0)
        boxes = torch.minimum(boxes, size)
        candidates = torch.where(scores.flatten() > self.config.score_threshold)[0]
        index, label = candidates // self.num_classes, candidates % self.num_classes
        found_boxes, found_scores = boxes[index], scores.flatten()[candidates]
        kept = box_ops.batched_nms(found_boxes, found_scores, label, self.config.nms_threshold)[: self.config.detections_per_image]
        return {"boxes": found_boxes[kept], "scores": found_scores[kept], "labels": label[kept] + 1}


def cell_boxes(values: Tensor, grid: int) -> Tensor:
    """``[..., S, S, P, 5]`` predictions (x, y in the cell, sqrt w, sqrt h relative to the image)
    -> xyxy boxes normalised to the image, ``[..., S, S, P, 4]``."""
    rows = torch.arange(grid, device=values.device, dtype=values.dtype).view(grid, 1, 1)
    columns = torch.arange(grid, device=values.device, dtype=values.dtype).view(1, grid, 1)
    centre_x = (columns + values[..., 0]) / grid
    centre_y = (rows + values[..., 1]) / grid
    width, height = values[..., 2].clamp(min=0) ** 2, values[..., 3].clamp(min=0) ** 2
    return torch.stack([centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2], -1)


def encode_yolov1_targets(targets: list[dict], sizes: Tensor, grid: int, num_classes: int) -> Tensor:
    """Targets -> ``[B, S, S, 5 + C]``: per cell ``(object?, x, y, sqrt w, sqrt h)`` and the one-hot
    class of the object whose centre falls in it (the largest one when several do)."""
    encoded = sizes.new_zeros(len(targets), grid, grid, 5 + num_classes)
    for index, (target, size) in enumerate(zip(targets, sizes)):
        boxes = target["boxes"].float().to(sizes.device).reshape(-1, 4) / size  # normalised xyxy
        if len(boxes) == 0:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        cells = (centres * grid).floor().clamp(0, grid - 1).long()
        # Write the smallest first, so the largest object of a crowded cell is the one kept.
        for box in (extent[:, 0] * extent[:, 1]).argsort().tolist():
            column, row = cells[box].tolist()
            offset = centres[box] * grid - cells[box]
            encoded[index, row, column, :5] = torch.cat([offset.new_ones(1), offset, extent[box].sqrt()])
            encoded[index, row, column, 5:] = 0.0
            encoded[index, row, column, 5 + int(target["labels"][box]) - 1] = 1.0
    return encoded


def yolov1_loss(output: Tensor, encoded: Tensor, predictors: int, lambda_coord: float, lambda_noobj: float) -> dict[str, Tensor]:
    """The sum-squared error of the paper's equation 3, summed over the grid and averaged over the
    images, as four named terms: ``loss_box`` (x, y, sqrt w, sqrt h of responsible predictors,
    times ``lambda_coord``), ``loss_object`` (their confidence against the IoU of their box with
    the object), ``loss_noobject`` (every other predictor's confidence against 0, times
    ``lambda_noobj``) and ``loss_classifier`` (class probabilities of the cells holding an object)."""
    batch, grid = output.shape[:2]
    values = output[..., : 5 * predictors].view(batch, grid, grid, predictors, 5)
    has_object = encoded[..., 0] > 0  # [B, S, S]
    target_box = encoded[..., 1:5]  # x, y, sqrt w, sqrt h
    with torch.no_grad():
        predicted = cell_boxes(values, grid)  # [B, S, S, P, 4]
        truth = cell_boxes(torch.cat([target_box, target_box.new_zeros(batch, grid, grid, 1)], -1)[..., None, :], grid)
        iou = box_ops.iou(predicted[..., None, :], truth.expand_as(predicted)[..., None, :])[..., 0, 0]  # [B, S, S, P]
    coordinates = values[..., :4]
    box_error = ((coordinates - target_box[..., None, :]) ** 2).sum(-1)  # [B, S, S, P]
    with torch.no_grad():
        # The predictor overlapping the object most; where none overlaps it (early on), the one
        # whose coordinates are closest, so every predictor gets to specialise.
        choice = torch.where(iou.amax(-1) > 0, iou.argmax(-1), box_error.argmin(-1))
        responsible = F.one_hot(choice, predictors).bool() & has_object[..., None]  # [B, S, S, P]
    confidence = values[..., 4]
    loss_box = lambda_coord * (box_error * responsible).sum()
    loss_object = (((confidence - iou) ** 2) * responsible).sum()
    loss_noobject = lambda_noobj * ((confidence**2) * ~responsible).sum()
    class_error = ((output[..., 5 * predictors :] - encoded[..., 5:]) ** 2).sum(-1)
    loss_classifier = (class_error * has_object).sum()
    return {name: value / batch for name, value in (("loss_box", loss_box), ("loss_object", loss_object),
            ("loss_noobject", loss_noobject), ("loss_classifier", loss_classifier))}  # fmt: skip


def build_yolov1(config: YOLOv1Config, num_classes: int) -> YOLOv1:
    return YOLOv1(backbone_body(config), num_classes, config)
