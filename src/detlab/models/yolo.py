"""``yolo``: the anchor-free one-stage detector (task-aligned, the default one-stage detector; YOLO v1
is :mod:`detlab.models.yolov1`).

A backbone's C3-C5 (strides 8, 16, 32; the ``csp`` body by default, any multi-level
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

Shape letters: B images, A anchor points (cells of every level), M ground-truth boxes an image
(padded), C classes, R ``reg_max`` bins.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.data.mosaic import FILL as GREY  # the padding colour of letterboxed images, before normalisation
from detlab.models.backbones import (
    MULTI_LEVEL,
    BackboneConfig,
    CrossStageBlock,
    CSPBody,
    backbone_body,
    check_backbone_name,
    conv_bn_silu,
    with_weights_file,
)
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    FitGeometry,
    HeatmapView,
    Inside,
    MemoryCost,
    Method,
    PointsView,
    Trace,
    View,
)
from detlab.models.data_fit import concrete
from detlab.models.transform import ImageBatcher

TOP_POINTS = 30  # the best anchor points the look-inside view shows


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

    Training defaults (the method's ``run_defaults``): AdamW, an exponential moving average of the weights
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

    def __init__(
        self, channels: list[int], num_classes: int, bins: int, strides: list[float], input_size: int
    ):
        super().__init__()
        box_width = max(16, channels[0] // 4, 4 * bins)
        cls_width = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(
                conv_bn_silu(c, box_width),
                conv_bn_silu(box_width, box_width),
                nn.Conv2d(box_width, 4 * bins, 1),
            )
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                conv_bn_silu(c, cls_width),
                conv_bn_silu(cls_width, cls_width),
                nn.Conv2d(cls_width, num_classes, 1),
            )
            for c in channels
        )
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
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
        return (
            scores.new_zeros(batch, num_points, dtype=torch.bool),
            scores.new_zeros(batch, num_points, dtype=torch.long),
            scores.new_zeros(batch, num_points, 4),
            torch.zeros_like(scores),
        )
    inside = (points[None, None] > gt_boxes[:, :, None, :2]).all(-1) & (
        points[None, None] < gt_boxes[:, :, None, 2:]
    ).all(-1)
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


class YOLO(DetectorModule):
    """Backbone -> FPN + PAN neck -> decoupled head over strides 8, 16, 32; obeys the detector
    contract (``{"loss_box", "loss_classifier"[, "loss_dfl"]}`` in training, detections in eval)."""

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
        self.progress = 0.0  # the share of the training budget spent (set_progress, from engine.fit)
        if config.backbone == "csp":  # from scratch: pixels to [-1, 1] around the padding grey
            self.batcher.mean.fill_(GREY)
            self.batcher.std.fill_(0.5)

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def training_resize(self) -> int:
        return self.config.input_size  # the longer side, once, before the augmentations

    def input_side(self) -> int:
        return self.config.input_size

    def image_batcher(self) -> ImageBatcher:
        return self.batcher

    def merge_settings(self) -> tuple[float, int]:
        return self.config.nms_threshold, self.config.detections_per_image

    def fit_geometry(self) -> FitGeometry:
        return FitGeometry(tuple(self.strides))

    def training_factor(self) -> float | None:
        """How much this training batch is scaled beyond ``input_size``: ``coarse_size /
        input_size`` until ``coarse_until`` of the budget, else ``None`` (the batcher's own)."""
        config = self.config
        if not self.training or config.coarse_size <= 0 or self.progress >= config.coarse_until:
            return None
        return config.coarse_size / config.input_size

    def features(self, batch: Tensor, trace: Trace = NO_TRACE) -> tuple[Tensor, Tensor, list[Tensor]]:
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        body = self.body(batch)[-3:]
        trace("body")
        levels = self.neck(body)
        trace("neck", levels=levels)
        box_values, logits = self.head(levels)
        trace("head", logits=logits)
        return box_values, logits, levels

    def distances(self, box_values: Tensor) -> Tensor:
        """``[B, A, 4 * R]`` -> ``ltrb`` distances in stride units, ``[B, A, 4]``."""
        if not self.config.dfl:
            return F.softplus(box_values)
        shape = box_values.shape[:-1]
        probabilities = box_values.float().view(*shape, 4, self.bins).softmax(-1)
        return (probabilities * self.bin_values).sum(-1)  # element-wise: float32 under bf16 autocast too

    def raw_outputs(
        self, batch: Tensor, trace: Trace = NO_TRACE
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """A normalised, padded batch ``Tensor[B, 3, H, W]`` -> ``(box values [B, A, 4 R], class
        logits [B, A, C], boxes [B, A, 4] xyxy in the batch's pixels, points [A, 2], strides [A])``."""
        box_values, logits, levels = self.features(batch, trace)
        points, strides = anchor_points(levels, self.strides)
        pred_boxes = distances_to_boxes(points, self.distances(box_values).float() * strides[:, None])
        return box_values, logits, pred_boxes, points, strides

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _, scales, targets = self.batcher(images, targets, factor=self.training_factor())
        trace("batcher", scales=scales)
        box_values, logits, pred_boxes, points, strides = self.raw_outputs(batch, trace)
        if self.training:
            return self.losses(box_values.float(), logits.float(), pred_boxes, points, strides, targets)
        detections = [
            self.postprocess(boxes, scores) for boxes, scores in zip(pred_boxes, logits.float().sigmoid())
        ]
        detections = self.batcher.restore(detections, scales, original_sizes)
        trace("postprocess")
        return detections

    def losses(self, box_values, logits, pred_boxes, points, strides, targets) -> dict[str, Tensor]:
        gt_labels, gt_boxes, gt_mask = pad_targets(targets, logits.device)
        foreground, _, target_boxes, target_scores = task_aligned_assign(
            logits.detach().sigmoid(),
            pred_boxes.detach(),
            points,
            gt_labels,
            gt_boxes,
            gt_mask,
            self.config.topk,
            self.config.alpha,
            self.config.beta,
        )
        normaliser = target_scores.sum().clamp(min=1.0)
        loss_classifier = (
            F.binary_cross_entropy_with_logits(logits, target_scores, reduction="sum") / normaliser
        )
        weight = target_scores.sum(-1)[foreground]  # [F]
        if foreground.any():
            ciou = complete_box_iou_loss(pred_boxes[foreground], target_boxes[foreground], reduction="none")
            loss_box = (ciou * weight).sum() / normaliser
        else:
            loss_box = pred_boxes.sum() * 0.0
        losses = {
            "loss_box": loss_box * self.config.box_gain,
            "loss_classifier": loss_classifier * self.config.cls_gain,
        }
        if self.config.dfl:
            if foreground.any():
                anchor = points[None].expand(len(logits), -1, -1)[foreground]
                stride = strides[None].expand(len(logits), -1)[foreground][:, None]
                target = (
                    torch.cat(
                        [anchor - target_boxes[foreground][:, :2], target_boxes[foreground][:, 2:] - anchor],
                        1,
                    )
                    / stride
                )
                dfl = distribution_focal_loss(
                    box_values[foreground].view(-1, 4, self.bins), target, self.bins
                )
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

    def memory_cost(self) -> MemoryCost:
        """Measured for a 320-pixel input (``benchmarks/bench_serve_memory.py``), with a margin; the
        network's part (the look-inside maps included) grows with the input's area."""
        area = (self.batcher.max_size / 320) ** 2
        return MemoryCost(bytes_per_input_pixel=48, fixed_bytes=160 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        """``images [B, 3, H, W]`` (normalised, padded) -> ``boxes [B, A, 4]`` (xyxy in the resized
        frame), ``scores [B, A, C]`` (sigmoid); the runtime thresholds them and runs NMS. The
        batch size is free."""
        config, side = self.config, self.config.input_size
        return ExportPlan(
            OneStageGraph(self),
            ("images",),
            ("boxes", "scores"),
            (torch.rand(2, 3, side, side) - 0.5,),  # two: traced with one, the batch may become a constant
            layout="one_stage",
            preprocess=self.batcher.export_settings(),
            postprocess={
                "score_threshold": config.score_threshold,
                "nms_threshold": config.nms_threshold,
                "detections_per_image": config.detections_per_image,
                "pre_nms_top_k": config.pre_nms_top_k,
            },
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "boxes": {0: "batch", 1: "points"},
                "scores": {0: "batch", 1: "points"},
            },
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Letterbox -> backbone -> neck -> head at strides 8, 16, 32 -> NMS; the views: each
        stride's map of best class scores, and the best anchor points."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        scale = trace["batcher"]["scales"][0]
        levels = trace["neck"]["levels"]
        scores, classes = trace["head"]["logits"][0].float().sigmoid().max(dim=1)  # [A] each
        views, start = [], 0
        for level, stride in zip(levels, self.strides):
            rows, columns = level.shape[-2:]
            grid = scores[start : start + rows * columns].view(rows, columns)
            start += rows * columns
            region = (0.0, 0.0, columns * stride / scale, rows * stride / scale)
            views.append(
                HeatmapView(f"stride {stride:g}: {rows} x {columns} cells, best class score", grid, region)
            )
        top = scores.topk(min(TOP_POINTS, len(scores)))
        points = anchor_points(levels, self.strides)[0][top.indices] / scale
        names = [class_name(index + 1) for index in classes[top.indices].tolist()]
        views.append(
            PointsView(f"the {len(top.indices)} best anchor points (cell centres)", points, names, top.values)
        )
        titles = {
            "batcher": f"letterbox: resize (x{scale:.2f}), normalise, pad",
            "body": "backbone",
            "neck": "neck: FPN + PAN",
            "head": f"head: box and class scores at {len(scores)} cells",
            "postprocess": "decode boxes, threshold, NMS",
        }
        return output, Inside(trace.stages(lambda name, values: titles[name]), views)

    @torch.no_grad()
    def assignment(self, image: Tensor, target: dict, class_name) -> list[View]:
        """Task-aligned assignment with the model's current predictions: the cell centres (of
        every stride) that learn each object, labelled with its number; a cell's score is its
        target class score (the alignment, normalised per object)."""
        batch, _, scales, (scaled,) = self.batcher([image], [target], factor=1.0)
        _, logits, pred_boxes, points, _ = self.raw_outputs(batch)
        gt_labels, gt_boxes, gt_mask = pad_targets([scaled], logits.device)
        foreground, assigned, _, target_scores = task_aligned_assign(
            logits.float().sigmoid(), pred_boxes, points, gt_labels, gt_boxes, gt_mask,
            self.config.topk, self.config.alpha, self.config.beta,
        )  # fmt: skip
        chosen = torch.where(foreground[0])[0]
        objects = assigned[0, chosen].tolist()
        labels = target["labels"].tolist()
        names = [f"{class_name(int(label))} {index + 1}" for index, label in enumerate(labels)]
        return [
            BoxesView("the objects, numbered", target["boxes"].float().reshape(-1, 4).cpu(), names),
            PointsView(
                f"{len(chosen)} cell centres assigned: up to {self.config.topk} an object, the best aligned "
                f"(class score^{self.config.alpha:g} x IoU^{self.config.beta:g}) inside it",
                (points[chosen] / scales[0]).cpu(),
                [names[index] for index in objects],
                target_scores[0, chosen].amax(-1).cpu(),
            ),
        ]


class OneStageGraph(nn.Module):
    """What ONNX export traces of ``yolo`` (:meth:`YOLO.export_plan`)."""

    def __init__(self, model: YOLO):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        _, logits, boxes, _, _ = self.model.raw_outputs(images)
        return boxes, logits.float().sigmoid()


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
        return with_weights_file(
            CSPBody(scaled(config.backbone_width, config.width_multiple), 4, config.depth_multiple), config
        )
    return backbone_body(config)


# "auto" settings built without data: the input size yolo was measured at on BCCD
AUTO_FALLBACKS = {"input_size": 416}


def build_yolo(config: YOLOConfig, num_classes: int) -> YOLO:
    """The detector ``config`` describes for ``num_classes`` classes."""
    config = concrete(config, AUTO_FALLBACKS)
    if config.coarse_size and not 32 <= config.coarse_size < config.input_size:
        raise ValueError(
            f"model.coarse_size={config.coarse_size}: the coarse training size must be at least 32 and "
            f"below model.input_size ({config.input_size}); 0 turns coarse-to-fine training off"
        )
    if not 0.0 <= config.coarse_until <= 1.0:
        raise ValueError(f"model.coarse_until={config.coarse_until}: a share of the budget, in [0, 1]")
    return YOLO(yolo_body(config), num_classes, config)


METHOD = Method(
    name="yolo",
    config=YOLOConfig,
    build=build_yolo,
    label="yolo (anchor-free)",
    # AdamW, an average of the weights, mosaic on half the images (docs/yolo.md measures each).
    run_defaults={
        "train": {
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.05,
            "batch_size": 8,
            "warmup_steps": 100,
            "clip_grad_norm": 10.0,
            "ema_decay": 0.9999,
            "ema_ramp_steps": 2000,
            "amp_cpu_bf16": True,
        },
        "data": {"mosaic": 0.5, "photometric": True},
    },
)
