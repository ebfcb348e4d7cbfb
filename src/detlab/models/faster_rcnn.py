"""Faster R-CNN (Ren et al. 2015): a backbone, a Region Proposal Network on its features, and the
Fast R-CNN head on the RPN's proposals, trained jointly with four losses (section 3.2,
"approximate joint training"), or with the paper's 4-step alternating training as an option.

The optional FPN variant (Lin et al. 2017) runs the same RPN head on every pyramid level with one
anchor scale group per level and pools each RoI from the level matching its size. The parts live in
their own modules (:mod:`~detlab.models.backbones`, :mod:`~detlab.models.rpn`,
:mod:`~detlab.models.roi_heads`, :mod:`~detlab.models.transform`); this one assembles them.

Shape letters: B images; C object classes (labels 1..C, 0 background); P proposals of an image.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.models.backbones import BackboneConfig, FeatureExtractor, feature_extractor_from_config
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    FitGeometry,
    Inside,
    LectureRow,
    MemoryCost,
    Method,
    NotExportable,
    Stage,
    Trace,
    View,
    proposals_title,
    set_trainable,
)
from detlab.models.data_fit import concrete
from detlab.models.roi_heads import RoIHead, RoIHeadConfig, build_roi_head, pool_with_image_index
from detlab.models.rpn import (
    RegionProposalNetwork,
    RPNConfig,
    build_rpn,
    label_anchors,
    select_batch_proposals,
)
from detlab.models.transform import ImageBatcher, InputSizeConfig, batcher_from_config


@dataclasses.dataclass
class FasterRCNNConfig(RPNConfig, RoIHeadConfig, InputSizeConfig, BackboneConfig):
    """Faster R-CNN settings. The defaults suit a 2-core CPU trained from scratch in minutes.

    GPU defaults (the ``faster_rcnn_gpu`` preset): ``backbone: resnet50``, ``fpn: true``,
    ``min_size: 800``, ``max_size: 1333``, RPN top-n 2000/1000 train and 1000/1000 test,
    ``rois_per_image: 512``, ``representation_size: 1024``.

    ``backbone``: ``compact`` (a small residual net with BatchNorm, sized by ``backbone_width``) or
    ``resnet18/34/50/101`` (torchvision); any other backbone of :mod:`detlab.models.backbones`
    without ``fpn``. ``fpn_min_level``: 3 builds the pyramid P3-P5 (strides 8-32); 2 adds P2
    (stride 4), which small objects in small images need, for about 70% more compute.
    ``roi_canonical_size``: the FPN RoI level rule (Lin et al. 2017, equation 1) sends a RoI of
    side ``roi_canonical_size`` to P4, half that to P3, and so on; the paper's 224 suits 800-pixel
    images, where a smaller value spreads the objects of small images over the levels instead of
    pooling them all from the finest. Training: ``train.recipe`` ``joint`` (the four losses
    together, section 3.2) or ``4step`` (the paper's alternating training).
    """

    # "auto": chosen from the training boxes before the run (detlab.models.data_fit), then stored
    min_size: int | str = "auto"
    max_size: int | str = "auto"
    anchor_sizes: tuple[float, ...] | str = "auto"
    aspect_ratios: tuple[float, ...] | str = "auto"
    fpn: bool = True
    fpn_channels: int = 96
    fpn_min_level: int = 3
    roi_pooling: str = choice("align", ("align", "pool"))  # pool: single level only; FPN always aligns

    scale_jitter: float = 0.2  # training short sides: the multiples of 32 within +-20% (ImageBatcher)


TRAINING_STAGES = ("joint", "rpn", "detector")

# The 4-step alternating training of section 3.2: (stage, shared conv layers frozen), and where
# each step keeps its checkpoints (the last one in the run folder itself).
ALTERNATING_STEPS = (("rpn", False), ("detector", False), ("rpn", True), ("detector", True))
FOUR_STEP_FOLDERS = ("step1_rpn", "step2_detector", "step3_rpn_shared", "step4_detector_shared")


class FasterRCNN(DetectorModule):
    """Backbone -> RPN -> RoI head, handed in as parts; obeys the detector contract.

    ``training_stage`` selects what a training forward computes: ``joint`` all four losses;
    ``rpn`` only the RPN's two; ``detector`` only the head's two, on the RPN's (fixed) proposals.
    """

    recipes = ("joint", "4step")

    def __init__(
        self,
        backbone: FeatureExtractor,
        rpn: RegionProposalNetwork,
        roi_head: RoIHead,
        batcher: ImageBatcher,
    ):
        super().__init__()
        self.backbone, self.rpn, self.roi_head, self.batcher = backbone, rpn, roi_head, batcher
        self.training_stage = "joint"

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box"}``
        (a subset for the alternating stages); eval: per image ``{"boxes" Tensor[K, 4],
        "scores" Tensor[K], "labels" int64 Tensor[K]}`` in the coordinates of ``images``."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, image_sizes, scales, targets = self.batcher(images, targets if self.training else None)
        trace("batcher", scales=scales)
        features = self.backbone(batch)
        trace("backbone")
        if not self.training:
            proposals, _ = self.rpn(features, image_sizes, self.backbone.strides)
            trace("rpn", proposals=proposals)
            detections, _ = self.roi_head(features, proposals, image_sizes)
            trace("roi_head")
            detections = self.batcher.restore(detections, scales, original_sizes)
            trace("restore")
            return detections
        rpn_targets = None if self.training_stage == "detector" else targets
        proposals, losses = self.rpn(features, image_sizes, self.backbone.strides, rpn_targets)
        if self.training_stage != "rpn":
            _, head_losses = self.roi_head(features, proposals, image_sizes, targets)
            losses.update(head_losses)
        return losses

    def recipe(self, name: str) -> list[Stage]:
        """``joint``: one stage, all four losses (section 3.2, "approximate joint training").
        ``4step``: the paper's alternating training (section 3.2), a quarter of the budget each:

        1. RPN and backbone; 2. detection head and backbone on the step-1 RPN's proposals;
        3. RPN only, shared layers frozen; 4. detection head only, shared layers frozen.

        One difference from the paper: step 2 keeps training the same backbone rather than a
        second copy initialised from ImageNet, since detlab's backbones also train from scratch;
        steps 3 and 4 (the ones that make the layers shared) are as published."""
        if name == "joint":
            return [Stage("joint", lambda model: set_training_stage(model, "joint", False))]
        return [
            Stage(
                folder,
                lambda model, stage=stage, frozen=frozen: set_training_stage(model, stage, frozen),
                budget=0.25,
                evaluate=stage == "detector",
            )
            for folder, (stage, frozen) in zip(FOUR_STEP_FOLDERS, ALTERNATING_STEPS)
        ]

    def image_batcher(self) -> ImageBatcher:
        return self.batcher

    def merge_settings(self) -> tuple[float, int]:
        return self.roi_head.nms_threshold, self.roi_head.detections_per_image

    def fit_geometry(self) -> FitGeometry:
        return FitGeometry(tuple(self.backbone.strides), self.rpn.positive_iou)

    def memory_cost(self) -> MemoryCost:
        """Measured for the default input of 320 x 427 pixels (``benchmarks/bench_serve_memory.py``),
        with a margin; the network's part grows with the area images are resized to."""
        area = self.batcher.min_size * self.batcher.max_size / (320 * 427)
        return MemoryCost(bytes_per_input_pixel=40, fixed_bytes=64 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        """``images [B, 3, H, W]`` (normalised, padded), ``image_size int64[B, 2]`` (each resized
        image inside the padding) -> ``proposals [P, 4]`` and ``proposal_image int64[P]`` (the
        image of each; every image's proposals together), ``probabilities [P, C + 1]``, ``boxes
        [P, C, 4]`` (each class's box, decoded and clipped, in the resized frame); the runtime does
        the rest (:func:`detlab.export.runtime.two_stage_detections`). The batch size is free."""
        head = self.roi_head
        if head.box_refinement:
            raise NotExportable(
                "faster_rcnn with model.box_refinement=true cannot be exported to ONNX (the second "
                "pass of the box head is not in the graph); export with --set model.box_refinement=false"
            )
        side = self.batcher.min_size
        # two images: traced with one, a graph may take the batch axis for a constant
        return ExportPlan(
            TwoStageGraph(self),
            ("images", "image_size"),
            ("proposals", "proposal_image", "probabilities", "boxes"),
            (
                torch.rand(2, 3, side, side) - 0.5,
                torch.tensor([[side, side], [side - 32, side]], dtype=torch.int64),
            ),
            layout="two_stage",
            preprocess=self.batcher.export_settings(),
            postprocess={
                "score_threshold": head.score_threshold,
                "nms_threshold": head.nms_threshold,
                "detections_per_image": head.detections_per_image,
            },
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "image_size": {0: "batch"},
                "proposals": {0: "proposals"},
                "proposal_image": {0: "proposals"},
                "probabilities": {0: "proposals"},
                "boxes": {0: "proposals"},
            },
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Resize -> backbone (+ FPN) -> RPN proposals -> RoI head; the view: the RPN's proposals."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        scale = trace["batcher"]["scales"][0]
        proposals = box_ops.clip(trace["rpn"]["proposals"][0] / scale, tuple(image.shape[-2:]))  # best first
        titles = {
            "batcher": f"resize (x{scale:.2f}) and normalise",
            "backbone": "backbone" + (" + FPN" if self.backbone.fpn is not None else ""),
            "rpn": f"RPN: anchors scored, {len(proposals)} proposals after NMS",
            "roi_head": "RoI head: pool, classify and refine each proposal, NMS",
            "restore": "boxes back to the image's pixels",
        }
        views = [BoxesView(proposals_title("RPN", proposals), proposals), self.anchors_view(image, scale)]
        return output, Inside(trace.stages(lambda name, values: titles[name]), views)

    def anchors_view(self, image: Tensor, scale: float) -> BoxesView:
        """The anchors of one location, every level's, centred on the image's centre (each cell of
        a level's feature map has the same ones around its own centre), in pixels of ``image``."""
        generator = self.rpn.anchor_generator
        height, width = image.shape[-2:]
        centre = torch.tensor([width, height, width, height], dtype=torch.float32) / 2
        anchors = torch.cat([generator.cell_anchors(level) for level in range(len(generator.sizes))])
        sizes = sorted({size for level in generator.sizes for size in level})
        title = (
            f"the {len(anchors)} anchors of one location ({len(sizes)} sizes x {len(generator.aspect_ratios)} "
            "aspect ratios), drawn at the image's centre"
        )
        return BoxesView(title, anchors / scale + centre)

    @torch.no_grad()
    def assignment(self, image: Tensor, target: dict, class_name) -> list[View]:
        """The RPN's positive anchors for ``target``'s objects (section 3.1.2: IoU >= 0.7 with an
        object, or an object's best anchor), each labelled with its object."""
        batch, image_sizes, scales, (scaled,) = self.batcher([image], [target], factor=1.0)
        levels = list(self.backbone(batch).values())
        anchors = torch.cat(
            self.rpn.anchor_generator(
                [tuple(level.shape[-2:]) for level in levels], self.backbone.strides, batch.device
            )
        )
        labels, matched = label_anchors(
            anchors, scaled["boxes"].to(anchors), self.rpn.positive_iou, self.rpn.negative_iou
        )
        positive = torch.where(labels == 1)[0]
        names = [
            f"{class_name(int(label))} {index + 1}" for index, label in enumerate(target["labels"].tolist())
        ]
        return [
            BoxesView("the objects, numbered", target["boxes"].float().reshape(-1, 4).cpu(), names),
            BoxesView(
                f"{len(positive)} positive anchors (IoU >= {self.rpn.positive_iou:g} with an object, or its best)",
                (anchors[positive] / scales[0]).cpu(),
                [names[index] for index in matched[positive].tolist()],
            ),
        ]


class TwoStageGraph(nn.Module):
    """What ONNX export traces of Faster R-CNN (:meth:`FasterRCNN.export_plan`): the RPN and the
    RoI head over every image of the batch at once (:func:`~detlab.models.rpn.select_batch_proposals`,
    :func:`~detlab.models.roi_heads.pool_with_image_index`), so the batch size stays free."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model, rpn, head = self.model, self.model.rpn, self.model.roi_head
        strides = model.backbone.strides
        features = model.backbone(images)
        levels = list(features.values())
        objectness, deltas = rpn.head(levels)
        anchors = rpn.anchor_generator([tuple(level.shape[-2:]) for level in levels], strides, images.device)
        proposals, proposal_image = select_batch_proposals(
            anchors,
            objectness,
            deltas,
            image_size,
            rpn.box_coder,
            rpn.pre_nms_top_n[1],
            rpn.post_nms_top_n[1],
            rpn.nms_threshold,
            rpn.min_size,
        )
        rois = torch.cat([proposal_image[:, None].to(proposals.dtype), proposals], 1)
        logits, box_deltas = head.classify(pool_with_image_index(head.pooler, features, rois, strides))
        boxes = head.box_coder.decode(box_deltas, proposals).reshape(proposals.shape[0], -1, 4)
        boxes = box_ops.clip_each(boxes, image_size[proposal_image][:, None, :])
        return proposals, proposal_image, logits.softmax(-1), boxes


def build_faster_rcnn(config: FasterRCNNConfig, num_classes: int) -> FasterRCNN:
    """The detector described by ``config`` for ``num_classes`` classes (``"auto"`` settings not
    yet fitted to data are the fixed defaults)."""
    config = concrete(config)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    backbone = feature_extractor_from_config(
        config, fpn=config.fpn, fpn_channels=config.fpn_channels, fpn_min_level=config.fpn_min_level
    )
    return FasterRCNN(
        backbone,
        build_rpn(config, backbone),
        build_roi_head(config, backbone, num_classes),
        batcher_from_config(config, backbone.strides),
    )


METHOD = Method(
    name="faster_rcnn",
    config=FasterRCNNConfig,
    build=build_faster_rcnn,
    label="Faster R-CNN",
    # Small data sets trained from scratch: colour jitter on (flips: horizontal, the shared
    # default), the learning rate the CPU presets use, and evaluation and checkpoints on an
    # exponential moving average of the weights (the same as yolo's): with a val split of a few
    # dozen images, the raw weights' validation AP swings by +-0.05 from one epoch to the next.
    run_defaults={
        "data": {"photometric": True},
        "train": {"lr": 0.02, "ema_decay": 0.9999, "ema_ramp_steps": 2000},
    },
    lecture=LectureRow(seconds_per_image=0.2, mean_ap=66.9),
)


def set_training_stage(model: FasterRCNN, stage: str, freeze_backbone: bool) -> None:
    """Make only the parts ``stage`` trains require gradients (``joint``: all; ``rpn``: the RPN;
    ``detector``: the RoI head), plus the backbone unless ``freeze_backbone`` (its BatchNorm
    statistics then stay fixed too). Build the optimiser after calling this."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"training stage must be one of {TRAINING_STAGES}, got {stage!r}")
    model.training_stage = stage
    set_trainable(model.backbone, not freeze_backbone)
    set_trainable(model.rpn, stage in ("joint", "rpn"))
    set_trainable(model.roi_head, stage in ("joint", "detector"))
