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
from detlab.config import choice
from detlab.models.backbones import BackboneConfig, FeatureExtractor, feature_extractor_from_config
from detlab.models.roi_heads import RoIHead, RoIHeadConfig, build_roi_head
from detlab.models.transform import ImageBatcher, InputSizeConfig, batcher_from_config


@dataclasses.dataclass
class FastRCNNConfig(RoIHeadConfig, InputSizeConfig, BackboneConfig):
    """Fast R-CNN on external proposals. CPU defaults; GPU users raise ``min_size`` to 600 (the
    paper's scale), ``max_proposals`` to 2000 and use a larger backbone (see ``FasterRCNNConfig``).

    The backbone, input-size and RoI-head fields mean the same as in
    :class:`~detlab.models.faster_rcnn.FasterRCNNConfig` (Fast R-CNN uses one feature map, no FPN).
    ``proposal_method`` names a method of :mod:`detlab.proposals` used when an image comes
    without ``"proposals"``; training images' proposals are cached under ``proposal_cache_dir``.
    """

    proposal_method: str = "ss-fast"
    max_proposals: int = 2000
    proposal_cache_dir: str = "runs/proposal_cache"  # "" keeps no cache (proposes every step)
    roi_pooling: str = choice("pool", ("align", "pool"))  # pool: the paper's RoI max pooling


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


def proposal_source(name: str, max_proposals: int, max_side: int | None, cache_dir: str | None):
    """``(method, cache)``: the proposal method of :func:`default_proposal_method` and, with a
    ``cache_dir``, its on-disk cache in a sub-folder named after the method (``None`` without)."""
    method = default_proposal_method(name, max_proposals, max_side)
    if not cache_dir:
        return method, None
    from detlab.proposals import ProposalCache

    return method, ProposalCache(Path(cache_dir) / method.name, method)


def image_proposals(image: Tensor, target: dict | None, method, cache, training: bool) -> Tensor:
    """An image's proposals, ``Tensor[K, 4]`` in its pixels: the target's ``"proposals"`` (attached
    by the data layer), else, for a training image, from ``cache`` (keyed by its ``image_id`` and
    content), else ``method`` run now (test time always proposes afresh: its cost is part of the
    detector's test time)."""
    if target is not None and "proposals" in target:
        return target["proposals"].float().reshape(-1, 4)
    if method is None:
        raise ValueError(
            "this detector needs proposals: give each target a 'proposals' Tensor[K, 4] or build the "
            "model with a proposal method"
        )
    if training and cache is not None and target is not None and "image_id" in target:
        key = f"{target['image_id']}-{image_fingerprint(image)}"
        return cache.get_or_compute(key, image).to(image.device)
    return method(image).to(image.device)


def training_proposals(cache):
    """A :class:`detlab.proposals.RecordProposals` over ``cache`` (``None`` without a cache)."""
    if cache is None:
        return None
    from detlab.proposals import RecordProposals

    return RecordProposals(cache)


def image_fingerprint(image: Tensor) -> str:
    """A short digest of an image's content (its 16x16 thumbnail), so cached proposals are reused
    only for the very same pixels: a flipped or rescaled copy of an image gets its own entry."""
    thumbnail = F.adaptive_avg_pool2d(image.detach().float().cpu()[None], 16)
    digest = hashlib.sha1((thumbnail * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:12]
    return f"{tuple(image.shape[-2:])[0]}x{tuple(image.shape[-2:])[1]}-{digest}"


class FastRCNN(nn.Module):
    """Backbone + RoI head on external proposals; obeys the detector contract.

    Args:
        backbone: a :class:`~detlab.models.backbones.FeatureExtractor` (one feature map).
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
        backbone: FeatureExtractor,
        roi_head: RoIHead,
        batcher: ImageBatcher,
        proposal_method: Callable[[Tensor], Tensor] | None = None,
        proposal_cache=None,
    ):
        super().__init__()
        self.backbone, self.roi_head, self.batcher = backbone, roi_head, batcher
        self.proposal_method = proposal_method
        self.proposal_cache = proposal_cache

    def training_proposals(self):
        """What the data layer attaches to each training image as ``"proposals"`` (computed once
        on the stored image, then moved by the augmentations with it), or ``None``."""
        return training_proposals(self.proposal_cache)

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
                image_proposals(image, target, self.proposal_method, self.proposal_cache, self.training)
                for image, target in zip(images, per_image_targets)
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


def build_fast_rcnn(config: FastRCNNConfig, num_classes: int) -> FastRCNN:
    """``MODELS["fast_rcnn"]``: the detector described by ``config`` for ``num_classes`` classes."""
    backbone = feature_extractor_from_config(config)
    method, cache = proposal_source(config.proposal_method, config.max_proposals, config.max_size, config.proposal_cache_dir)
    return FastRCNN(
        backbone, build_roi_head(config, backbone, num_classes), batcher_from_config(config, backbone.strides),
        method, cache,
    )  # fmt: skip
