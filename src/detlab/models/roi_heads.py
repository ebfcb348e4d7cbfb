"""The Fast R-CNN detection head (Girshick 2015), shared by Fast R-CNN and Faster R-CNN.

Each region of interest (a proposal) is pooled from the shared feature map to a fixed grid (RoI max
pooling, section 2.1, or RoIAlign), passed through two fully-connected layers, and scored by a
(C+1)-way classifier and C class-specific box regressors (section 2.2). Training samples RoIs
hierarchically (section 2.3: R/N RoIs from each of N images, 25% foreground) and minimises the
multi-task loss of section 2.3: cross-entropy + smooth L1 on the foreground RoIs' boxes.

Shape letters used below:
  B images; R RoIs of an image (or of the batch, when concatenated); C object classes (background
  is class 0, so the classifier has C + 1 outputs); G ground-truth boxes of an image; S x S the
  pooled grid; D feature channels.
Boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the (resized) network input.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import ops

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.models.rpn import sample_labels


@dataclasses.dataclass
class RoIHeadConfig:
    """The RoI head's fields (Fast and Faster R-CNN configs share them).

    ``roi_pooling``: ``pool`` (the paper's RoI max pooling) or ``align`` (RoIAlign; always with an
    FPN); ``roi_output_size``: the pooled grid side; ``roi_canonical_size``: FPN only, the side of
    a RoI that pools from P4 (see :func:`build_roi_pooler`); ``roi_sampling_ratio``: RoIAlign's
    bilinear samples per bin side; ``rois_per_image`` RoIs sampled per training image with
    ``foreground_fraction`` of them foreground; test time: ``score_threshold``, per-class NMS at
    ``nms_threshold``, at most ``detections_per_image``; ``box_refinement``: the head is applied
    again to its own output boxes and both sets are merged (He et al. 2016, appendix: "box
    refinement"; see :meth:`RoIHead.forward`).
    """

    roi_pooling: str = choice("align", ("align", "pool"))
    roi_output_size: int = 7
    roi_canonical_size: int = 224
    roi_sampling_ratio: int = 2
    representation_size: int = 256
    rois_per_image: int = 64
    foreground_fraction: float = 0.25
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    box_refinement: bool = False  # test time only


class SingleLevelRoIPool(nn.Module):
    """Pool RoIs from one feature map of stride ``stride`` to ``Tensor[R, D, S, S]``.

    ``method="pool"`` is the paper's RoI max pooling; ``"align"`` is RoIAlign (He et al. 2017),
    which samples bilinearly instead of quantising the RoI to the feature grid.
    """

    def __init__(self, output_size: int, stride: float, method: str = "align", sampling_ratio: int = 2):
        super().__init__()
        if method not in ("pool", "align"):
            raise ValueError(f"RoI pooling method must be 'pool' or 'align', got {method!r}")
        self.output_size, self.scale = output_size, 1.0 / stride
        self.method, self.sampling_ratio = method, sampling_ratio

    def forward(
        self, features: OrderedDict[str, Tensor], rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        feature = next(iter(features.values()))
        if self.method == "pool":
            return ops.roi_pool(feature, rois, self.output_size, self.scale)
        return ops.roi_align(feature, rois, self.output_size, self.scale, self.sampling_ratio, aligned=True)


def build_roi_pooler(
    output_size: int,
    strides: list[float],
    feature_names: list[str],
    method: str = "align",
    canonical_size: int = 224,
    sampling_ratio: int = 2,
) -> nn.Module:
    """One level: :class:`SingleLevelRoIPool`; several (FPN): torchvision's ``MultiScaleRoIAlign``,
    which picks each RoI's level from its size (Lin et al. 2017, equation 1: a RoI of side
    ``canonical_size`` goes to level 4, each halving one level down, clamped to the levels there are).
    ``sampling_ratio``: RoIAlign's bilinear samples per bin side (1 costs a quarter of 2)."""
    if len(strides) == 1:
        return SingleLevelRoIPool(output_size, strides[0], method, sampling_ratio)
    return ops.MultiScaleRoIAlign(
        feature_names, output_size, sampling_ratio=sampling_ratio, canonical_scale=canonical_size
    )


def pool_with_image_index(
    pooler: nn.Module, features: OrderedDict[str, Tensor], rois: Tensor, strides: list[float]
) -> Tensor:
    """RoIs of a whole batch, ``Tensor[R, 5]`` ``(image index, x1, y1, x2, y2)``, pooled to
    ``Tensor[R, D, S, S]`` as ``pooler`` (:func:`build_roi_pooler`) pools a list of RoIs an image,
    with no loop over the images (what ONNX export needs for a free batch size). ``strides``: of
    the feature levels, in order. The FPN level rule and scales are torchvision's
    ``MultiScaleRoIAlign``'s (its level of a RoI: equation 1 of Lin et al. 2017)."""
    if isinstance(pooler, SingleLevelRoIPool):  # torchvision's RoI ops take R x 5 RoIs as they are
        return pooler(features, rois, [])
    levels = [features[name] for name in pooler.featmap_names]
    first, last = (int(round(math.log2(stride))) for stride in (strides[0], strides[len(levels) - 1]))
    level_of = ops.poolers.LevelMapper(first, last, pooler.canonical_scale, pooler.canonical_level)(
        [rois[:, 1:]]
    )
    pooled, order = [], []
    for index, (feature, stride) in enumerate(zip(levels, strides)):
        chosen = torch.where(level_of == index)[0]
        pooled.append(
            ops.roi_align(feature, rois[chosen], pooler.output_size, 1.0 / stride, pooler.sampling_ratio)
        )
        order.append(chosen)
    # back to the RoIs' order: the rows come level by level
    return torch.cat(pooled)[torch.cat(order).argsort()]


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    rois_per_image: int = 64,
    foreground_fraction: float = 0.25,
    foreground_iou: float = 0.5,
    background_iou: tuple[float, float] = (0.1, 0.5),
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample training RoIs of one image (Fast R-CNN section 2.3).

    The ground-truth boxes join the proposals (so early in training, when proposals are poor,
    there is always foreground). Foreground: IoU >= ``foreground_iou`` with a ground-truth box,
    labelled with its class, at most ``foreground_fraction`` of the sample. Background: max IoU in
    ``[background_iou[0], background_iou[1])``, label 0; the lower bound acts as hard-example
    mining. When that band holds too few RoIs (always on an image with no objects, where every
    IoU is 0) the sample is topped up with background from below the band, so background-only
    images still train the classifier.

    Returns: rois ``Tensor[R, 4]``, labels ``int64 Tensor[R]``, matched gt boxes ``Tensor[R, 4]``
    (zeros for background), with ``R <= rois_per_image``.
    """
    if gt_boxes.numel():
        candidates = torch.cat([proposals, gt_boxes.to(proposals)])
        overlaps = box_ops.iou(gt_boxes.to(proposals), candidates)  # [G, R]
        best_iou, matched = overlaps.max(dim=0)
    else:
        candidates = proposals
        best_iou = proposals.new_zeros(proposals.shape[0])
        matched = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
    labels = torch.full_like(matched, -1)
    labels[(best_iou >= background_iou[0]) & (best_iou < background_iou[1])] = 0
    if gt_labels.numel():
        foreground = best_iou >= foreground_iou
        labels[foreground] = gt_labels.to(matched.device)[matched[foreground]]
    positive, negative = sample_labels(labels, rois_per_image, foreground_fraction)
    missing = rois_per_image - positive.numel() - negative.numel()
    if missing > 0:
        low = torch.where(best_iou < background_iou[0])[0]
        negative = torch.cat([negative, low[torch.randperm(low.numel(), device=low.device)[:missing]]])
    keep = torch.cat([positive, negative])
    roi_labels = labels[keep].clamp(min=0)
    roi_labels[positive.numel() :] = 0
    if gt_boxes.numel():
        matched_boxes = gt_boxes.to(proposals)[matched[keep]]
    else:
        matched_boxes = proposals.new_zeros((keep.numel(), 4))
    return candidates[keep], roi_labels, matched_boxes


class RoIHead(nn.Module):
    """Pool -> two FC layers -> (C+1)-way classifier and ``4 C`` class-specific box deltas.

    Args:
        pooler: maps (features, rois per image, image sizes) to ``Tensor[R, D, S, S]``.
        in_features: ``D * S * S``.
        num_classes: C, object classes without background.
    """

    def __init__(
        self,
        pooler: nn.Module,
        in_features: int,
        num_classes: int,
        representation_size: int = 512,
        rois_per_image: int = 64,
        foreground_fraction: float = 0.25,
        foreground_iou: float = 0.5,
        background_iou: tuple[float, float] = (0.1, 0.5),
        box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        box_refinement: bool = False,
    ):
        super().__init__()
        self.pooler = pooler
        self.box_refinement = box_refinement
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_features, representation_size)
        self.fc2 = nn.Linear(representation_size, representation_size)
        self.classifier = nn.Linear(representation_size, num_classes + 1)
        self.box_regressor = nn.Linear(representation_size, 4 * num_classes)
        # Initialisation of section 2.3 (std 0.01 for the classifier, 0.001 for box regression).
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.normal_(self.box_regressor.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        nn.init.zeros_(self.box_regressor.bias)
        self.box_coder = box_ops.BoxCoder(box_weights)
        self.rois_per_image = rois_per_image
        self.foreground_fraction = foreground_fraction
        self.foreground_iou = foreground_iou
        self.background_iou = background_iou
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image

    def raw_outputs(
        self, features: OrderedDict[str, Tensor], rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """-> class logits ``Tensor[R, C + 1]`` and deltas ``Tensor[R, 4 C]`` for all images' RoIs."""
        return self.classify(self.pooler(features, rois, image_sizes))

    def classify(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled RoIs ``Tensor[R, D, S, S]`` -> class logits ``Tensor[R, C + 1]`` and deltas ``Tensor[R, 4 C]``."""
        hidden = F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))
        return self.classifier(hidden), self.box_regressor(hidden)

    def forward(
        self,
        features: OrderedDict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training (``targets`` given): ``([], {"loss_classifier", "loss_box"})``.
        Inference: per image ``{"boxes" Tensor[K, 4], "scores" Tensor[K], "labels" int64 Tensor[K]}``.
        With ``box_refinement``, each RoI's box of its most likely object class becomes a new RoI,
        pooled and scored again; the first pass's and the second pass's outputs go through
        :meth:`postprocess` (per-class NMS) together."""
        if targets is None:
            logits, deltas = self.raw_outputs(features, proposals, image_sizes)
            if self.box_refinement:
                refined = self.refined_rois(logits, deltas, proposals, image_sizes)
                again_logits, again_deltas = self.raw_outputs(features, refined, image_sizes)
                counts = [len(rois) for rois in proposals]

                def union(first: Tensor, second: Tensor) -> Tensor:
                    return torch.cat(
                        [part for pair in zip(first.split(counts), second.split(counts)) for part in pair]
                    )

                logits, deltas = union(logits, again_logits), union(deltas, again_deltas)
                proposals = [torch.cat(pair) for pair in zip(proposals, refined)]
            return self.postprocess(logits, deltas, proposals, image_sizes), {}
        rois, labels, matched_boxes = [], [], []
        for image_proposals, target in zip(proposals, targets):
            image_rois, image_labels, image_matched = sample_rois(
                image_proposals.detach(),
                target["boxes"],
                target["labels"],
                self.rois_per_image,
                self.foreground_fraction,
                self.foreground_iou,
                self.background_iou,
            )
            rois.append(image_rois)
            labels.append(image_labels)
            matched_boxes.append(image_matched)
        logits, deltas = self.raw_outputs(features, rois, image_sizes)
        return [], self.losses(logits, deltas, torch.cat(rois), torch.cat(labels), torch.cat(matched_boxes))

    def losses(
        self, logits: Tensor, deltas: Tensor, rois: Tensor, labels: Tensor, matched_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Multi-task loss (section 2.3, equation 1 with lambda = 1): cross-entropy over all sampled
        RoIs plus smooth L1 (beta = 1, equation 3) on the true class's deltas of foreground RoIs,
        normalised by the number of sampled RoIs."""
        loss_classifier = F.cross_entropy(logits, labels)
        foreground = torch.where(labels > 0)[0]
        class_deltas = deltas.view(deltas.shape[0], self.num_classes, 4)[foreground, labels[foreground] - 1]
        regression_targets = self.box_coder.encode(rois[foreground], matched_boxes[foreground])
        loss_box = F.smooth_l1_loss(class_deltas, regression_targets, beta=1.0, reduction="sum") / max(
            labels.numel(), 1
        )
        return {"loss_classifier": loss_classifier, "loss_box": loss_box}

    def refined_rois(
        self, logits: Tensor, deltas: Tensor, rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Per image ``Tensor[R, 4]``: each RoI's decoded box for its most likely object class, clipped."""
        counts = [len(image_rois) for image_rois in rois]
        best = logits[:, 1:].argmax(dim=1)
        decoded = self.box_coder.decode(deltas, torch.cat(rois)).view(len(best), self.num_classes, 4)
        boxes = decoded[torch.arange(len(best), device=best.device), best]
        return [box_ops.clip(part, size) for part, size in zip(boxes.split(counts), image_sizes)]

    def postprocess(
        self, logits: Tensor, deltas: Tensor, rois: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Softmax, decode each class's box, clip, drop scores below ``score_threshold``, per-class NMS,
        keep the ``detections_per_image`` best (section 4 of the paper, "test-time")."""
        probabilities = F.softmax(logits, dim=-1)
        counts = [r.shape[0] for r in rois]
        decoded = self.box_coder.decode(deltas, torch.cat(rois)) if deltas.numel() else deltas
        results = []
        for image_probabilities, image_boxes, image_size in zip(
            probabilities.split(counts), decoded.split(counts), image_sizes
        ):
            num_rois = image_boxes.shape[0]
            boxes = box_ops.clip(image_boxes.reshape(-1, 4), image_size)  # [R * C, 4]
            scores = image_probabilities[:, 1:].reshape(-1)
            labels = torch.arange(1, self.num_classes + 1, device=scores.device).repeat(num_rois)
            keep = torch.where(scores > self.score_threshold)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


def build_roi_head(config: RoIHeadConfig, backbone: nn.Module, num_classes: int) -> RoIHead:
    """The :class:`RoIHead` ``config`` describes, pooling from ``backbone``'s levels (its
    ``strides``, ``names`` and ``out_channels``)."""
    pooler = build_roi_pooler(
        config.roi_output_size,
        backbone.strides,
        backbone.names,
        config.roi_pooling,
        config.roi_canonical_size,
        config.roi_sampling_ratio,
    )
    return RoIHead(
        pooler,
        backbone.out_channels * config.roi_output_size**2,
        num_classes,
        representation_size=config.representation_size,
        rois_per_image=config.rois_per_image,
        foreground_fraction=config.foreground_fraction,
        score_threshold=config.score_threshold,
        nms_threshold=config.nms_threshold,
        detections_per_image=config.detections_per_image,
        box_refinement=config.box_refinement,
    )
