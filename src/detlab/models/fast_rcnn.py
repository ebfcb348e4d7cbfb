"""Fast R-CNN (Girshick 2015): one forward pass of the backbone per image, then every proposal is
pooled from the shared feature map and classified by :class:`~detlab.models.roi_heads.RoIHead`.

Proposals come from outside the network: a ``"proposals"`` key in the training targets (moved with
the image by the data transforms), else a proposal method ``image -> Tensor[K, 4]`` (Selective
Search by default, cached on disk by :mod:`detlab.proposals`). At test time the proposal method
runs on every image, so the measured time per image includes it - the cost Faster R-CNN removes.

Shape letters: B images; K proposals of an image; C classes (labels 1..C, 0 background).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.models.roi_heads import RoIHead, build_roi_pooler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageBatcher(nn.Module):
    """Resize, normalise and pad a list of images into one batch, and map detections back.

    Each image is scaled so its short side is ``min_size`` unless its long side would exceed
    ``max_size`` (Fast R-CNN section 5.2, single scale), then padded at the bottom/right to a
    multiple of ``size_divisible`` (the backbone's largest stride). Target boxes (and
    ``"proposals"``) are scaled with the image; detections are scaled back to the input frame.
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        size_divisible: int = 32,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__()
        self.min_size, self.max_size, self.size_divisible = min_size, max_size, size_divisible
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def scale_for(self, height: int, width: int) -> float:
        return min(self.min_size / min(height, width), self.max_size / max(height, width))

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]], list[float], list[dict] | None]:
        """-> (batch ``Tensor[B, 3, H, W]``, resized sizes ``(h, w)``, scales, scaled targets)."""
        resized, sizes, scales = [], [], []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected images as Tensor[3, H, W], got shape {tuple(image.shape)}")
            height, width = image.shape[-2:]
            scale = self.scale_for(height, width)
            new_size = (round(height * scale), round(width * scale))
            if new_size != (height, width):
                image = F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False)[0]
            resized.append((image - self.mean) / self.std)
            sizes.append(new_size)
            scales.append(scale)
        divisor = self.size_divisible
        batch_height = -(-max(s[0] for s in sizes) // divisor) * divisor
        batch_width = -(-max(s[1] for s in sizes) // divisor) * divisor
        batch = resized[0].new_zeros((len(resized), 3, batch_height, batch_width))
        for index, image in enumerate(resized):
            batch[index, :, : image.shape[1], : image.shape[2]] = image
        if targets is not None:
            targets = [self._scale_target(target, scale) for target, scale in zip(targets, scales)]
        return batch, sizes, scales, targets

    @staticmethod
    def _scale_target(target: dict, scale: float) -> dict:
        scaled = dict(target)
        for key in ("boxes", "proposals"):
            if key in scaled:
                scaled[key] = scaled[key].float().reshape(-1, 4) * scale
        return scaled

    @staticmethod
    def restore(
        detections: list[dict[str, Tensor]], scales: list[float], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Map detection boxes from the resized frame back to the frame of the images as given."""
        restored = []
        for detection, scale, size in zip(detections, scales, original_sizes):
            restored.append({**detection, "boxes": box_ops.clip(detection["boxes"] / scale, size)})
        return restored


@dataclasses.dataclass
class RCNNHeadConfig:
    """The fields Fast and Faster R-CNN share: backbone, input size and the RoI head
    (what :func:`build_head_and_batcher` reads). Each detector's config extends it."""

    backbone: str = "compact"
    backbone_width: int = 32
    pretrained_backbone: bool = False
    channels_last: bool = False  # run the backbone channels-last (faster oneDNN convolutions on CPUs)
    min_size: int = 320
    max_size: int = 427
    roi_pooling: str = "align"  # align | pool
    roi_output_size: int = 7
    roi_canonical_size: int = 224  # FPN only: RoIs of this side pool from P4 (see FasterRCNNConfig)
    roi_sampling_ratio: int = 2  # RoIAlign: bilinear samples per bin side
    representation_size: int = 256
    rois_per_image: int = 64
    foreground_fraction: float = 0.25
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100


@dataclasses.dataclass
class FastRCNNConfig(RCNNHeadConfig):
    """Fast R-CNN on external proposals. CPU defaults; GPU users raise ``min_size`` to 600 (the
    paper's scale), ``max_proposals`` to 2000 and use a larger backbone (see ``FasterRCNNConfig``).

    ``backbone`` and the head fields mean the same as in :class:`~detlab.models.faster_rcnn.FasterRCNNConfig`
    (Fast R-CNN uses one feature map, no FPN). ``proposal_method`` names a method of
    :mod:`detlab.proposals` used when an image comes without ``"proposals"``; training images'
    proposals are cached under ``proposal_cache_dir``.
    """

    proposal_method: str = "ss-fast"
    max_proposals: int = 2000
    proposal_cache_dir: str = "runs/proposal_cache"  # "" keeps no cache (proposes every step)
    roi_pooling: str = "pool"  # pool (the paper's RoI max pooling) | align


def default_proposal_method(
    name: str, max_proposals: int, max_side: int | None = None
) -> Callable[[Tensor], Tensor]:
    """``image Tensor[3, H, W] -> boxes Tensor[K, 4]``: a method of :mod:`detlab.proposals` by name
    (``ss-fast``, ``ss-quality``, ``sliding``, ...; ``selective_search`` means ``ss-fast``), imported
    lazily since training data that carries ``"proposals"`` never needs it. ``max_side``: images
    with a longer side are shrunk to it before proposing (boxes come back in the image's frame);
    Fast R-CNN passes its ``max_size`` so the proposals see what the network sees."""
    from detlab.proposals import build_method

    options = {} if max_side is None else {"max_side": max_side}
    return build_method(
        "ss-fast" if name == "selective_search" else name, max_proposals=max_proposals, **options
    )


def image_fingerprint(image: Tensor) -> str:
    """A short digest of an image's content (its 16x16 thumbnail), so cached proposals are reused
    only for the very same pixels: a flipped or rescaled copy of an image gets its own entry."""
    thumbnail = F.adaptive_avg_pool2d(image.detach().float().cpu()[None], 16)
    digest = hashlib.sha1((thumbnail * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:12]
    return f"{tuple(image.shape[-2:])[0]}x{tuple(image.shape[-2:])[1]}-{digest}"


class FastRCNN(nn.Module):
    """Backbone + RoI head on external proposals; obeys the detector contract.

    Args:
        backbone: ``Tensor[B, 3, H, W] -> OrderedDict`` of one feature map, with ``strides``.
        roi_head: the :class:`RoIHead`.
        batcher: the :class:`ImageBatcher`.
        proposal_method: ``image -> Tensor[K, 4]`` used when no proposals are given.
        proposal_cache: where training images' proposals are kept (a
            :class:`detlab.proposals.ProposalCache` over ``proposal_method``), keyed by the target's
            ``image_id`` and the image content, so each training image is proposed once, not every
            epoch. Test images are always proposed afresh: test time includes the proposals.
    """

    def __init__(
        self,
        backbone: nn.Module,
        roi_head: RoIHead,
        batcher: ImageBatcher,
        proposal_method: Callable[[Tensor], Tensor] | None = None,
        proposal_cache=None,
    ):
        super().__init__()
        self.backbone, self.roi_head, self.batcher = backbone, roi_head, batcher
        self.proposal_method = proposal_method
        self.proposal_cache = proposal_cache

    def _proposals_of(self, image: Tensor, target: dict | None) -> Tensor:
        if target is not None and "proposals" in target:
            return target["proposals"].float().reshape(-1, 4)
        if self.proposal_method is None:
            raise ValueError(
                "Fast R-CNN needs proposals: give each target a 'proposals' Tensor[K, 4] or build the "
                "model with a proposal_method"
            )
        if self.training and self.proposal_cache is not None and target is not None and "image_id" in target:
            key = f"{target['image_id']}-{image_fingerprint(image)}"
            return self.proposal_cache.get_or_compute(key, image).to(image.device)
        return self.proposal_method(image).to(image.device)

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, proposals: list[Tensor] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"loss_classifier", "loss_box"}``; eval: per image ``{"boxes", "scores", "labels"}``
        in the coordinates of ``images``. ``proposals`` (per image ``Tensor[K, 4]`` in image
        coordinates) override both the targets' proposals and the proposal method."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        if proposals is None:
            per_image_targets = targets if targets is not None else [None] * len(images)
            proposals = [
                self._proposals_of(image, target) for image, target in zip(images, per_image_targets)
            ]
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        with_proposals = [
            {**(target or {}), "proposals": image_proposals}
            for target, image_proposals in zip(targets or [None] * len(images), proposals)
        ]
        batch, image_sizes, scales, scaled = self.batcher(images, with_proposals)
        features = self.backbone(batch)
        rois = [box_ops.clip(t["proposals"], size) for t, size in zip(scaled, image_sizes)]
        if self.training:
            _, losses = self.roi_head(features, rois, image_sizes, scaled)
            return losses
        detections, _ = self.roi_head(features, rois, image_sizes)
        return self.batcher.restore(detections, scales, original_sizes)


def build_head_and_batcher(
    config: RCNNHeadConfig, backbone: nn.Module, num_classes: int
) -> tuple[RoIHead, ImageBatcher]:
    """The RoI head and image batcher from the fields Fast and Faster R-CNN configs share
    (``roi_*``, ``representation_size``, ``rois_per_image``, ..., ``min_size``, ``max_size``)."""
    pooler = build_roi_pooler(
        config.roi_output_size,
        backbone.strides,
        backbone.names,
        config.roi_pooling,
        config.roi_canonical_size,
        config.roi_sampling_ratio,
    )
    head = RoIHead(
        pooler,
        backbone.out_channels * config.roi_output_size**2,
        num_classes,
        representation_size=config.representation_size,
        rois_per_image=config.rois_per_image,
        foreground_fraction=config.foreground_fraction,
        score_threshold=config.score_threshold,
        nms_threshold=config.nms_threshold,
        detections_per_image=config.detections_per_image,
    )
    batcher = ImageBatcher(config.min_size, config.max_size, size_divisible=int(max(backbone.strides)))
    return head, batcher


def build_fast_rcnn(config: FastRCNNConfig, num_classes: int) -> FastRCNN:
    """``MODELS["fast_rcnn"]``: the detector described by ``config`` for ``num_classes`` classes."""
    from detlab.models.faster_rcnn import build_feature_extractor

    backbone = build_feature_extractor(
        config.backbone,
        config.backbone_width,
        fpn=False,
        pretrained=config.pretrained_backbone,
        channels_last=config.channels_last,
    )
    head, batcher = build_head_and_batcher(config, backbone, num_classes)
    method = default_proposal_method(config.proposal_method, config.max_proposals, config.max_size)
    cache = None
    if config.proposal_cache_dir:
        from detlab.proposals import ProposalCache

        cache = ProposalCache(Path(config.proposal_cache_dir) / method.name, method)
    return FastRCNN(backbone, head, batcher, method, cache)
