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
from collections.abc import Callable

from torch import Tensor

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.models.backbones import BackboneConfig, FeatureExtractor, feature_extractor_from_config
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    HeatmapView,
    Inside,
    LectureRow,
    MemoryCost,
    Method,
    NotExportable,
    Trace,
    proposals_title,
)
from detlab.models.external_proposals import (
    image_proposals,
    proposal_source,
    proposals_name,
    shown_proposal,
    training_proposals,
)
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
    proposal_cache_dir: str = "auto"  # auto: the user cache folder; "" keeps no cache (proposes every step)
    roi_pooling: str = choice("pool", ("align", "pool"))  # pool: the paper's RoI max pooling


class FastRCNN(DetectorModule):
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
        self.proposer = proposal_method
        self.proposal_cache = proposal_cache

    def training_proposals(self):
        """What the data layer attaches to each training image as ``"proposals"`` (computed once
        on the stored image, then moved by the augmentations with it), or ``None``."""
        return training_proposals(self.proposal_cache)

    def proposal_method(self) -> Callable[[Tensor], Tensor] | None:
        return self.proposer

    def image_batcher(self) -> ImageBatcher:
        return self.batcher

    def merge_settings(self) -> tuple[float, int]:
        return self.roi_head.nms_threshold, self.roi_head.detections_per_image

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict] | None = None,
        proposals: list[Tensor] | None = None,
        *,
        trace: Trace = NO_TRACE,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"loss_classifier", "loss_box"}``; eval: per image ``{"boxes", "scores", "labels"}``
        in the coordinates of ``images``. ``proposals`` (per image ``Tensor[K, 4]`` in image
        coordinates) override both the targets' proposals and the proposal method."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        if proposals is None:
            per_image_targets = targets if targets is not None else [None] * len(images)
            proposals = [
                image_proposals(image, target, self.proposer, self.proposal_cache, self.training)
                for image, target in zip(images, per_image_targets)
            ]
            trace("proposals", proposals=proposals)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        with_proposals = [
            {**(target or {}), "proposals": image_proposals}
            for target, image_proposals in zip(targets or [None] * len(images), proposals)
        ]
        batch, image_sizes, scales, scaled = self.batcher(images, with_proposals)
        trace("batcher")
        features = self.backbone(batch)
        trace("backbone", features=features, image_sizes=image_sizes, scales=scales)
        rois = [box_ops.clip(t["proposals"], size) for t, size in zip(scaled, image_sizes)]
        if self.training:
            _, losses = self.roi_head(features, rois, image_sizes, scaled)
            return losses
        detections, _ = self.roi_head(features, rois, image_sizes)
        trace("roi_head", rois=rois)
        detections = self.batcher.restore(detections, scales, original_sizes)
        trace("restore")
        return detections

    def memory_cost(self) -> MemoryCost:
        """Measured for the default configuration (``benchmarks/bench_serve_memory.py``), with a
        margin: Selective Search's copies of the image grow with it, its segmentation (of the image
        shrunk to ``proposal_max_side``) and the network's pass do not, beyond the resized area."""
        area = self.batcher.min_size * self.batcher.max_size / (320 * 427)
        return MemoryCost(bytes_per_input_pixel=144, fixed_bytes=192 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        raise NotExportable(
            "Fast R-CNN's proposals come from Selective Search, which runs outside the network; export "
            "faster_rcnn, whose RPN makes the proposals inside the graph"
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Selective Search -> resize -> one backbone pass -> RoI head on every proposal."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        proposals = trace["proposals"]["proposals"][0]
        titles = {
            "proposals": f"{proposals_name(self.proposer)}: {len(proposals)} proposals",
            "batcher": "resize and normalise",
            "backbone": "backbone: one pass for the whole image",
            "roi_head": f"RoI head: pool, classify and refine {len(proposals)} proposals, NMS",
            "restore": "boxes back to the image's pixels",
        }
        views = [BoxesView(proposals_title("Selective Search", proposals), proposals)]
        if len(proposals):
            views.append(self.pooled_view(trace["backbone"], proposals, shown_proposal(proposals, output)))
        return output, Inside(trace.stages(lambda name, values: titles[name]), views)

    def pooled_view(self, backbone: dict, proposals: Tensor, index: int) -> HeatmapView:
        """Proposal ``index`` as the RoI head sees it: the shared feature map pooled over the
        proposal into a fixed grid of bins (whatever its shape), each bin's mean over the channels."""
        scale = backbone["scales"][0]
        box = proposals[index : index + 1].float()
        pooled = self.roi_head.pooler(
            backbone["features"],
            [box.to(next(iter(backbone["features"].values())).device) * scale],
            backbone["image_sizes"],
        )
        values = pooled[0].float().mean(0)  # [S, S]
        values = (values - values.min()) / (values.max() - values.min()).clamp(min=1e-6)
        side = values.shape[-1]
        stride = self.backbone.strides[0]
        region = tuple(float(value) for value in box[0].tolist())
        title = f"proposal {index + 1} RoI-pooled to {side} x {side} bins of the stride-{stride:g} feature map (mean over channels)"
        return HeatmapView(title, values, region, grid=True)


def build_fast_rcnn(config: FastRCNNConfig, num_classes: int) -> FastRCNN:
    """The detector described by ``config`` for ``num_classes`` classes."""
    backbone = feature_extractor_from_config(config)
    method, cache = proposal_source(
        config.proposal_method, config.max_proposals, config.max_size, config.proposal_cache_dir
    )
    return FastRCNN(
        backbone,
        build_roi_head(config, backbone, num_classes),
        batcher_from_config(config, backbone.strides),
        method,
        cache,
    )


METHOD = Method(
    name="fast_rcnn",
    config=FastRCNNConfig,
    build=build_fast_rcnn,
    label="Fast R-CNN",
    lecture=LectureRow(seconds_per_image=2.0, mean_ap=66.9),
)
