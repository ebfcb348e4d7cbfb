"""Region Proposal Network (Ren et al. 2015, "Faster R-CNN", section 3.1).

A small network slides over the shared feature map(s): a 3x3 conv, then per location an objectness
score and four box deltas for each of ``A`` anchors (sizes x aspect ratios, the same at every
location). Training labels anchors by IoU with the ground truth and samples 256 of them an image;
inference decodes all anchors and keeps the best after NMS as proposals for the detection head.

Shape letters used below:
  B images in the batch; L feature levels (1 without FPN); H, W a level's feature height and width;
  A anchors per location; N = sum over levels of H * W * A anchors of an image;
  G ground-truth boxes of an image; P proposals of an image.
Every box is ``(x1, y1, x2, y2)`` in absolute pixels of the (resized) network input.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab import boxes as box_ops


@dataclasses.dataclass
class RPNConfig:
    """The RPN's fields. ``anchor_sizes`` is flat and split evenly over the feature levels, smallest
    first (3 levels with an FPN from P3, 4 from P2, 1 without); ``aspect_ratios`` are height /
    width. ``rpn_*_top_n_*``: proposals kept before and after NMS, in training and at test time
    (the paper: 2000 and 300, section 3.3; CPU defaults keep fewer); ``rpn_batch_size_per_image``:
    anchors sampled per image for the loss, half positive (section 3.1.3)."""

    anchor_sizes: tuple[float, ...] = (16.0, 24.0, 40.0, 64.0, 96.0, 144.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_threshold: float = 0.7
    rpn_batch_size_per_image: int = 256


class AnchorGenerator(nn.Module):
    """Anchors for each feature level: ``sizes[level]`` x ``aspect_ratios`` at every location.

    An anchor of size ``s`` and aspect ratio ``r = h / w`` has area ``s * s``: ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)``. Anchors are centred on the centre of their feature cell,
    ``((x + 0.5) * stride, (y + 0.5) * stride)``.

    A level's anchors depend only on its feature size and stride, so they are built once per
    ``(level, feature size, stride, device)`` and then reused (the batcher pads to a few sizes):
    rebuilding them on the CPU and copying them to the GPU every forward stalls the GPU.
    """

    CACHE_SIZE = 64  # feature sizes kept; beyond that the oldest is dropped

    def __init__(
        self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    ):
        super().__init__()
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        if len({len(level) for level in self.sizes}) != 1:
            raise ValueError(f"every feature level needs the same number of anchor sizes, got {sizes}")
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def cell_anchors(self, level: int) -> Tensor:
        """``Tensor[A, 4]`` anchors centred on ``(0, 0)``, ordered size-major then ratio."""
        sizes = torch.tensor(self.sizes[level])
        ratios = torch.tensor(self.aspect_ratios)
        widths = (sizes[:, None] / ratios.sqrt()[None, :]).reshape(-1)
        heights = (sizes[:, None] * ratios.sqrt()[None, :]).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2

    def grid_anchors(
        self, level: int, feature_size: tuple[int, int], stride: float, device: torch.device | str = "cpu"
    ) -> Tensor:
        """``Tensor[H * W * A, 4]`` anchors of one level, ordered (y, x, anchor), on ``device``."""
        height, width = feature_size
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
        return (shifts + self.cell_anchors(level).to(device)[None]).reshape(-1, 4)

    def forward(
        self, feature_sizes: list[tuple[int, int]], strides: list[float], device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """One ``Tensor[H * W * A, 4]`` per level on ``device`` (the same for every image of a
        padded batch; shared with later calls, so not to be changed in place)."""
        if len(feature_sizes) != len(self.sizes):
            raise ValueError(f"{len(feature_sizes)} feature levels but anchor sizes for {len(self.sizes)}")
        return [
            self.cached_grid_anchors(level, size, stride, torch.device(device))
            for level, (size, stride) in enumerate(zip(feature_sizes, strides))
        ]

    def cached_grid_anchors(
        self, level: int, feature_size: tuple[int, int], stride: float, device: torch.device
    ) -> Tensor:
        """:meth:`grid_anchors`, built on the first call with this key and then reused."""
        # While tracing for ONNX export the sizes are traced values: the anchors must be computed
        # from them in the graph (a cached tensor would be a constant of one image size). Tensors
        # made in inference mode cannot take part in a later autograd step: not cached.
        if torch.jit.is_tracing() or torch.is_inference_mode_enabled():
            return self.grid_anchors(level, feature_size, stride, device)
        key = (level, tuple(int(side) for side in feature_size), float(stride), device)
        anchors = self._cache.get(key)
        if anchors is None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            anchors = self._cache[key] = self.grid_anchors(level, feature_size, stride, device)
        return anchors


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for ``A`` objectness logits and ``4 A`` deltas (section 3.1).

    The paper scores each anchor with a 2-way softmax; one sigmoid logit is the same model with
    half the outputs. The head is shared across FPN levels (Lin et al. 2017, section 4.1).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Levels ``Tensor[B, C, H, W]`` -> objectness ``Tensor[B, H*W*A]`` and deltas
        ``Tensor[B, H*W*A, 4]`` per level, ordered (y, x, anchor) like the anchors."""
        objectness, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            logits, offsets = self.objectness(hidden), self.deltas(hidden)
            batch, num_anchors, height, width = logits.shape
            objectness.append(logits.permute(0, 2, 3, 1).reshape(batch, -1))
            offsets = offsets.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2)
            deltas.append(offsets.reshape(batch, -1, 4))
        return objectness, deltas


def label_anchors(
    anchors: Tensor, gt_boxes: Tensor, positive_iou: float = 0.7, negative_iou: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Label anchors for RPN training (section 3.1.2).

    Positive (1): IoU >= ``positive_iou`` with some ground-truth box, or the anchor with the highest
    IoU for a ground-truth box (all anchors tied at that highest IoU), so every object gets at
    least one positive anchor even when none reaches ``positive_iou``. Negative (0): IoU below
    ``negative_iou`` with every ground-truth box. Ignored (-1): the rest.

    Args: anchors ``Tensor[N, 4]``, gt_boxes ``Tensor[G, 4]`` (G may be 0: all anchors negative).
    Returns: labels ``int64 Tensor[N]`` in {1, 0, -1} and matched ground-truth index ``int64 Tensor[N]``
    (meaningful only where the label is 1).
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
        return zeros, zeros.clone()
    overlaps = box_ops.iou(gt_boxes, anchors)  # [G, N]
    best_iou, matched = overlaps.max(dim=0)
    labels = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    labels[best_iou < negative_iou] = 0
    labels[best_iou >= positive_iou] = 1
    best_for_gt = overlaps.max(dim=1).values  # [G]
    gt_index, anchor_index = torch.where((overlaps == best_for_gt[:, None]) & (best_for_gt[:, None] > 0))
    labels[anchor_index] = 1
    matched[anchor_index] = gt_index
    return labels, matched


def sample_labels(labels: Tensor, num_samples: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Random balanced sample of indices: at most ``positive_fraction * num_samples`` positives
    (label >= 1), negatives (label 0) fill the rest; label -1 is never sampled.

    Used for the RPN's 256 anchors (half positive, section 3.1.3) and for Fast R-CNN's RoIs (25%
    foreground, Girshick 2015 section 2.3). Returns ``(positive_index, negative_index)`` int64.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_positive = min(positive.numel(), int(num_samples * positive_fraction))
    num_negative = min(negative.numel(), num_samples - num_positive)
    positive = positive[torch.randperm(positive.numel(), device=labels.device)[:num_positive]]
    negative = negative[torch.randperm(negative.numel(), device=labels.device)[:num_negative]]
    return positive, negative


def select_proposals(
    anchors: list[Tensor],
    objectness: list[Tensor],
    deltas: list[Tensor],
    image_size: tuple[int, int],
    box_coder: box_ops.BoxCoder,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float = 0.7,
    min_size: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Proposals of one image (section 3.1 and 3.3): per level keep the ``pre_nms_top_n`` best
    anchors, decode their deltas, clip to the image, drop boxes smaller than ``min_size``, NMS at
    ``nms_threshold`` (levels never suppress each other), keep the ``post_nms_top_n`` best overall.

    Args: per level anchors ``Tensor[N_l, 4]``, objectness ``Tensor[N_l]``, deltas ``Tensor[N_l, 4]``;
    image_size ``(height, width)`` of the image inside the padded batch.
    Returns: boxes ``Tensor[P, 4]`` and objectness logits ``Tensor[P]``, best first.
    """
    all_boxes, all_scores, all_levels = [], [], []
    for level, (level_anchors, level_scores, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
        top = level_scores.topk(min(pre_nms_top_n, level_scores.numel())).indices
        decoded = box_coder.decode(level_deltas[top], level_anchors[top])
        all_boxes.append(box_ops.clip(decoded, image_size))
        all_scores.append(level_scores[top])
        all_levels.append(torch.full_like(top, level))
    proposals, scores, levels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_levels)
    keep = box_ops.remove_small(proposals, min_size)
    proposals, scores, levels = proposals[keep], scores[keep], levels[keep]
    keep = box_ops.batched_nms(proposals, scores, levels, nms_threshold)[:post_nms_top_n]
    return proposals[keep], scores[keep]


def select_batch_proposals(
    anchors: list[Tensor],
    objectness: list[Tensor],
    deltas: list[Tensor],
    image_sizes: Tensor,
    box_coder: box_ops.BoxCoder,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float = 0.7,
    min_size: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """:func:`select_proposals` of every image of a batch at once, in tensor operations only (no
    loop over the images, so the graph ONNX export traces keeps its batch size free); the same
    proposals up to their order where two have the same score.

    Args: per level anchors ``Tensor[N_l, 4]``, objectness ``Tensor[B, N_l]``, deltas
    ``Tensor[B, N_l, 4]``; image_sizes ``int64 Tensor[B, 2]`` ``(height, width)`` of each image
    inside the padded batch.
    Returns: boxes ``Tensor[P, 4]`` of all images together and the image of each, ``int64
    Tensor[P]``; each image's best first.
    """
    batch = objectness[0].shape[0]
    all_boxes, all_scores, all_levels = [], [], []
    for level, (level_anchors, level_scores, level_deltas) in enumerate(zip(anchors, objectness, deltas)):
        scores, top = level_scores.topk(min(pre_nms_top_n, level_scores.shape[1]), dim=1)  # [B, k]
        chosen = level_deltas.gather(1, top[..., None].expand(-1, -1, 4))
        decoded = box_coder.decode(chosen.reshape(-1, 4), level_anchors[top.reshape(-1)]).view(chosen.shape)
        all_boxes.append(decoded)
        all_scores.append(scores)
        all_levels.append(torch.full_like(top, level))
    boxes = box_ops.clip_each(torch.cat(all_boxes, 1), image_sizes[:, None, :]).reshape(-1, 4)
    scores, levels = torch.cat(all_scores, 1), torch.cat(all_levels, 1)
    images = torch.arange(batch, device=scores.device)[:, None].expand_as(scores).reshape(-1)
    scores, levels = scores.reshape(-1), levels.reshape(-1)
    keep = box_ops.remove_small(boxes, min_size)
    boxes, scores, levels, images = boxes[keep], scores[keep], levels[keep], images[keep]
    # levels never suppress each other, and neither do images: one NMS group per (image, level)
    keep = box_ops.batched_nms(boxes, scores, images * len(anchors) + levels, nms_threshold)
    # each image's post_nms_top_n best: a kept box's rank among its image's kept boxes (keep is
    # ordered by score)
    same_image = images[keep][:, None] == torch.arange(batch, device=keep.device)[None]  # [K, B]
    same_image = same_image.long()
    rank = (same_image.cumsum(0) * same_image).sum(1) - 1
    keep = keep[rank < post_nms_top_n]
    return boxes[keep], images[keep]


class RegionProposalNetwork(nn.Module):
    """Anchors + head + labelling + proposal selection + the two RPN losses.

    ``pre_nms_top_n``/``post_nms_top_n`` are ``(training, testing)`` pairs: the paper keeps 2000
    proposals for training and 300 at test time (section 3.3); CPU presets use fewer.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (2000, 300),
        nms_threshold: float = 0.7,
        positive_iou: float = 0.7,
        negative_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_size: float = 1.0,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = box_ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_threshold = nms_threshold
        self.positive_iou = positive_iou
        self.negative_iou = negative_iou
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.min_size = min_size

    def forward(
        self,
        features: OrderedDict[str, Tensor],
        image_sizes: list[tuple[int, int]],
        strides: list[float],
        targets: list[dict] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Features per level ``Tensor[B, C, H, W]`` -> (proposals ``Tensor[P, 4]`` per image, losses).

        Losses are returned only when ``targets`` are given (training): ``loss_rpn_objectness``
        (binary cross-entropy over the sampled anchors) and ``loss_rpn_box`` (smooth L1 on the
        positive anchors' deltas, normalised by the number of sampled anchors).
        """
        levels = list(features.values())
        objectness, deltas = self.head(levels)
        anchors = self.anchor_generator(
            [tuple(level.shape[-2:]) for level in levels], strides, levels[0].device
        )
        mode = 0 if self.training else 1
        proposals = []
        for image_index, image_size in enumerate(image_sizes):
            boxes, _ = select_proposals(
                anchors,
                [o[image_index].detach() for o in objectness],
                [d[image_index].detach() for d in deltas],
                image_size,
                self.box_coder,
                self.pre_nms_top_n[mode],
                self.post_nms_top_n[mode],
                self.nms_threshold,
                self.min_size,
            )
            proposals.append(boxes)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.losses(torch.cat(anchors), torch.cat(objectness, 1), torch.cat(deltas, 1), targets)
        return proposals, losses

    def losses(
        self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: list[dict]
    ) -> dict[str, Tensor]:
        """anchors ``Tensor[N, 4]``, objectness ``Tensor[B, N]``, deltas ``Tensor[B, N, 4]``."""
        sampled_logits, sampled_labels, positive_deltas, positive_targets = [], [], [], []
        for image_index, target in enumerate(targets):
            gt_boxes = target["boxes"].to(anchors)
            labels, matched = label_anchors(anchors, gt_boxes, self.positive_iou, self.negative_iou)
            positive, negative = sample_labels(labels, self.batch_size_per_image, self.positive_fraction)
            sampled = torch.cat([positive, negative])
            sampled_logits.append(objectness[image_index, sampled])
            sampled_labels.append((labels[sampled] == 1).to(objectness.dtype))
            positive_deltas.append(deltas[image_index, positive])
            positive_targets.append(self.box_coder.encode(anchors[positive], gt_boxes[matched[positive]]))
        logits, labels = torch.cat(sampled_logits), torch.cat(sampled_labels)
        num_sampled = max(logits.numel(), 1)
        loss_objectness = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / num_sampled
        # beta = 1/9 as in the reference implementation: near-L1 for the small deltas of good anchors
        loss_box = (
            F.smooth_l1_loss(
                torch.cat(positive_deltas), torch.cat(positive_targets), beta=1 / 9, reduction="sum"
            )
            / num_sampled
        )
        return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": loss_box}


def split_anchor_sizes(anchor_sizes, num_levels: int) -> tuple[tuple[float, ...], ...]:
    """The flat ``anchor_sizes`` split evenly over ``num_levels`` levels, smallest first."""
    if len(anchor_sizes) % num_levels:
        raise ValueError(
            f"anchor_sizes has {len(anchor_sizes)} sizes, not a multiple of the {num_levels} feature levels"
        )
    per_level = len(anchor_sizes) // num_levels
    return tuple(tuple(anchor_sizes[i * per_level : (i + 1) * per_level]) for i in range(num_levels))


def build_rpn(config: RPNConfig, backbone: nn.Module) -> RegionProposalNetwork:
    """The RPN ``config`` describes on ``backbone``'s levels (its ``strides`` and ``out_channels``);
    ``config`` holds numbers, no ``"auto"`` (:func:`detlab.models.data_fit.concrete`)."""
    anchors = AnchorGenerator(
        split_anchor_sizes(config.anchor_sizes, len(backbone.strides)), config.aspect_ratios
    )
    return RegionProposalNetwork(
        anchors,
        RPNHead(backbone.out_channels, anchors.num_anchors_per_location),
        pre_nms_top_n=(config.rpn_pre_nms_top_n_train, config.rpn_pre_nms_top_n_test),
        post_nms_top_n=(config.rpn_post_nms_top_n_train, config.rpn_post_nms_top_n_test),
        nms_threshold=config.rpn_nms_threshold,
        batch_size_per_image=config.rpn_batch_size_per_image,
    )
