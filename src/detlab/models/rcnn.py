"""R-CNN (Girshick et al. 2014): warped proposals, a fine-tuned CNN, features on disk, per-class
SVMs with hard-negative mining and per-class box regression.

Every region proposal (Selective Search, from :mod:`detlab.proposals`) is dilated so that, once
warped to the network's ``window_size`` square, it has ``context_padding`` pixels of image context
around it (appendix A: 16 pixels at the original's 227-pixel warp; the same share of a smaller
window here), and the CNN runs on each warped window: one full
pass a proposal, the test-time cost Fast R-CNN removes. The recipe (``train.recipe: rcnn``):

1. ``step1_pretrain``: the CNN (conv layers, ``pool5``, fc6, fc7) learns to classify the
   training set's object windows, the stand-in for ImageNet pre-training when training from
   scratch (with ``pretrained_backbone`` the conv layers start from ImageNet instead);
2. ``step2_finetune``: a new (C+1)-way layer, fine-tuned on warped proposals, batches of
   ``windows_per_batch`` windows with ``foreground_fraction`` of them foreground (IoU >= 0.5 with
   a ground-truth box, labelled with its class) and the rest background (section 2.3);
3. ``step3_features``: the ``pool5`` features of every proposal (and ground-truth box) of every
   training image, written to disk as float16, one file an image
   (:class:`FeatureCache`, keyed by the conv layers' fingerprint so a stale cache is never read);
4. ``step4_svms``: one linear SVM per class on the fc7 features (computed from ``pool5`` on the
   fly), trained with hard-negative mining as the original code does it (:class:`HardNegativeMiner`);
5. ``step5_box_regression``: per class, ridge regression from ``pool5`` to the ``BoxCoder``
   targets of the proposals that overlap a ground-truth box of the class by more than 0.6
   (appendix C).

Test time: score every proposal with each class's SVM (or, for comparison, the fine-tuned
network's softmax: ``classifier: softmax``), regress its box, keep the best
``detections_per_class`` of each class, NMS at 0.3. The SVMs and regressors are buffers of the
model, so checkpoints hold them as tensors.

Shape letters: B images, K proposals (or windows), C classes, D pool5 features, F fc7 features.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.models.backbones import BackboneConfig, feature_extractor_from_config
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    Inside,
    LectureRow,
    MemoryCost,
    Method,
    NotExportable,
    Stage,
    Step,
    Trace,
    WindowView,
    proposals_title,
    set_trainable,
)
from detlab.models.external_proposals import image_proposals, proposal_source, proposals_name, shown_proposal
from detlab.models.rcnn_training import (
    FeatureCache,
    extract_features,
    feature_cache,
    fit_box_regressors,
    fit_svms,
    pixel_digest,
)
from detlab.models.rpn import sample_labels
from detlab.models.transform import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass
class RCNNConfig(BackboneConfig):
    """R-CNN. The defaults are the original implementation's (rbgirshick/rcnn) where they carry
    over to a from-scratch CPU run; ``window_size`` is 64 here (227 there) and the network is a
    detlab backbone (``compact`` by default, the one Fast R-CNN uses) with ``pool_size x
    pool_size`` pool5 and two FC layers of ``representation_size``.

    Proposals: ``proposal_method``, up to ``max_proposals`` an image, shrunk to ``proposal_max_side``
    first, cached under ``proposal_cache_dir``. Training: ``pretrain_fraction`` of the budget on
    object windows, the rest fine-tuning on batches of ``windows_per_batch`` proposals with
    ``foreground_fraction`` foreground (IoU >= ``foreground_iou``). SVMs: ``svm_c``, positive class
    weight ``svm_positive_weight``, bias feature ``svm_bias_scale``, liblinear stopping tolerance
    ``svm_tolerance``, features scaled to mean norm
    ``svm_feature_norm``; negatives have IoU < ``svm_negative_iou`` with every box of the class;
    hard-negative mining keeps negatives scoring above ``hard_negative_score``, retrains after
    ``retrain_after`` new ones and evicts those below ``easy_negative_score``. Box regression on
    proposals with IoU > ``box_regression_iou``, ridge ``ridge_lambda``. Test: ``classifier``
    (``svm`` or the network's ``softmax``), ``box_regression``, the best ``detections_per_class``
    of a class, NMS at ``nms_threshold``. Features of the training images are kept under
    ``feature_cache_dir``; with ``cache_test_features`` those of every image the trained model
    detects on are kept there too (keyed by its pixels and proposals), so scoring it again (another
    classifier, no box regression) skips the CNN.
    """

    window_size: int = 64
    context_padding: float = (
        16.0  # pixels of context at the original's 227-pixel window, scaled to window_size
    )
    pool_size: int = 4
    representation_size: int = 256
    dropout: float = 0.0
    proposal_method: str = "ss-fast"
    max_proposals: int = 2000
    proposal_max_side: int = 427
    proposal_cache_dir: str = "auto"  # auto: the user cache folder (detlab.machine.user_cache_dir)
    feature_cache_dir: str = "auto"
    pretrain_fraction: float = 0.3
    windows_per_batch: int = 128
    foreground_fraction: float = 0.25
    foreground_iou: float = 0.5
    svm_c: float = 0.001
    svm_positive_weight: float = 2.0
    svm_bias_scale: float = 10.0
    svm_feature_norm: float = 20.0
    svm_negative_iou: float = 0.3
    svm_tolerance: float = 0.1
    hard_negative_score: float = -1.0001
    easy_negative_score: float = -1.2
    retrain_after: int = 2000
    box_regression_iou: float = 0.6
    ridge_lambda: float = 1000.0
    classifier: str = choice("svm", ("svm", "softmax"))
    box_regression: bool = True
    detections_per_class: int = 100
    nms_threshold: float = 0.3
    cache_test_features: bool = True


ORIGINAL_WINDOW = 227  # the warp size of the original implementation, in which context_padding is given


def context_windows(boxes: Tensor, window_size: int, padding: float) -> Tensor:
    """The image regions whose warp to ``window_size`` shows each box with ``padding`` pixels of
    context on every side (R-CNN appendix A): each side of a box is scaled by
    ``window_size / (window_size - 2 * padding)`` about its centre. ``Tensor[K, 4] -> Tensor[K, 4]``."""
    if not 0 <= 2 * padding < window_size:
        raise ValueError(
            f"context padding {padding} leaves no room for the box in a {window_size}-pixel window"
        )
    scale = window_size / (window_size - 2 * padding)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) * scale / 2
    return torch.cat([centres - half, centres + half], dim=1)


def warp_windows(image: Tensor, regions: Tensor, window_size: int) -> Tensor:
    """Crop ``regions`` (xyxy pixels, may leave the image) of a normalised ``Tensor[3, H, W]`` and
    warp each to ``Tensor[K, 3, S, S]`` (bilinear); outside the image the window holds zeros, the
    mean after normalisation, as the original pads with the image mean."""
    if len(regions) == 0:
        return image.new_zeros(0, 3, window_size, window_size)
    rois = torch.cat([regions.new_zeros(len(regions), 1), regions], dim=1).to(image)
    return roi_align(image[None], rois, window_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


class RCNN(DetectorModule):
    """Warped proposals -> CNN (conv layers, pool5, fc6, fc7) -> per-class SVMs and box regressors;
    obeys the detector contract. ``training_stage``: ``pretrain`` (object windows, C-way) or
    ``finetune`` (proposal windows, (C+1)-way)."""

    recipes = ("rcnn",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        config: RCNNConfig,
        proposal_method=None,
        proposal_cache=None,
    ):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.backbone = backbone
        self.pool = nn.AdaptiveMaxPool2d(config.pool_size)
        feature_dim = backbone.out_channels * config.pool_size**2
        self.fc6 = nn.Linear(feature_dim, config.representation_size)
        self.fc7 = nn.Linear(config.representation_size, config.representation_size)
        self.dropout = nn.Dropout(config.dropout)
        self.pretrain_classifier = nn.Linear(config.representation_size, num_classes)
        self.classifier = nn.Linear(config.representation_size, num_classes + 1)
        # Filled by the recipe's non-gradient steps; zeros until then (flags say whether they are).
        self.register_buffer("fc7_scale", torch.ones(()))
        self.register_buffer("svm_weight", torch.zeros(num_classes, config.representation_size))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("svm_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pool5_scale", torch.ones(()))
        self.register_buffer("box_weight", torch.zeros(num_classes, feature_dim, 4))
        self.register_buffer("box_bias", torch.zeros(num_classes, 4))
        self.register_buffer("box_trained", torch.zeros((), dtype=torch.bool))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.box_coder = box_ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposer, self.proposal_cache = proposal_method, proposal_cache
        self.training_stage = "finetune"
        # The original's 16 pixels of context at its 227-pixel warp, in this window's pixels.
        self.padding = config.context_padding * config.window_size / ORIGINAL_WINDOW
        context_windows(
            torch.zeros(0, 4), config.window_size, self.padding
        )  # refuses a padding that does not fit

    # -- the network on windows ---------------------------------------------------------------

    def pool5(self, windows: Tensor) -> Tensor:
        """``Tensor[K, 3, S, S]`` warped windows -> ``Tensor[K, D]`` pool5 features."""
        if self.config.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last)
        return self.pool(self.backbone(windows)["0"]).flatten(1)

    def fc7_features(self, pool5: Tensor) -> Tensor:
        """``Tensor[K, D] -> Tensor[K, F]``: fc6 and fc7 with ReLU (what the SVMs read)."""
        return F.relu(self.fc7(self.dropout(F.relu(self.fc6(pool5)))))

    def window_pool5(self, image: Tensor, boxes: Tensor, chunk: int = 256) -> Tensor:
        """pool5 features of ``boxes`` (``Tensor[K, 4]`` pixels of ``image``), warped with context."""
        normalised = (image - self.mean) / self.std
        regions = context_windows(boxes.to(image), self.config.window_size, self.padding)
        return torch.cat(
            [
                self.pool5(warp_windows(normalised, regions[start : start + chunk], self.config.window_size))
                for start in range(0, len(regions), chunk)
            ]
            or [image.new_zeros(0, self.fc6.in_features)]
        )

    # -- the detector contract ---------------------------------------------------------------

    def proposal_method(self):
        return self.proposer

    def stop_disk_caches(self) -> None:
        # R-CNN keeps every test image's features on disk to score it again later; a server or a
        # timing pass would write one file an image.
        self.config.cache_test_features = False

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict] | None = None,
        proposals: list[Tensor] | None = None,
        *,
        trace: Trace = NO_TRACE,
    ):
        """Training: ``{"loss_pretrain"}`` or ``{"loss_classifier"}``; eval: per image
        ``{"boxes", "scores", "labels"}`` (scores are SVM margins, or softmax probabilities)."""
        if proposals is None:
            per_image = targets if targets is not None else [None] * len(images)
            proposals = [self.proposals_of(image, target) for image, target in zip(images, per_image)]
            trace("proposals", proposals=proposals)
        if not self.training:
            cache = self.test_feature_cache()  # one fingerprint of the network a call, not one an image
            return [self.detect(image, boxes, cache, trace) for image, boxes in zip(images, proposals)]
        if targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        if self.training_stage == "pretrain":
            return {"loss_pretrain": self.pretrain_loss(images, targets)}
        return {"loss_classifier": self.finetune_loss(images, targets, proposals)}

    def proposals_of(self, image: Tensor, target: dict | None) -> Tensor:
        if self.training and self.training_stage == "pretrain":
            return image.new_zeros(0, 4)  # object windows only
        return image_proposals(image, target, self.proposer, self.proposal_cache, self.training)

    def pretrain_loss(self, images: list[Tensor], targets: list[dict]) -> Tensor:
        """Classification of the images' object windows (with context), C-way."""
        pool5, labels = [], []
        budget = max(1, self.config.windows_per_batch // len(images))
        for image, target in zip(images, targets):
            chosen = torch.randperm(len(target["boxes"]))[:budget].to(target["boxes"].device)
            pool5.append(self.window_pool5(image, target["boxes"][chosen].float()))
            labels.append(target["labels"][chosen] - 1)
        pool5 = torch.cat(pool5)
        if len(pool5) == 0:
            return self.pretrain_classifier.weight.sum() * 0.0
        return F.cross_entropy(
            self.pretrain_classifier(self.fc7_features(pool5)), torch.cat(labels).to(pool5.device)
        )

    def finetune_loss(self, images: list[Tensor], targets: list[dict], proposals: list[Tensor]) -> Tensor:
        """(C+1)-way classification of sampled proposal windows (section 2.3): IoU >= 0.5 with a
        ground-truth box is that box's class, the rest background; ground-truth boxes are
        candidates too."""
        pool5, labels = [], []
        per_image = max(1, self.config.windows_per_batch // len(images))
        for image, target, boxes in zip(images, targets, proposals):
            candidates, candidate_labels = label_windows(
                boxes.float().to(image.device),
                target["boxes"].float(),
                target["labels"],
                self.config.foreground_iou,
            )
            positive, negative = sample_labels(candidate_labels, per_image, self.config.foreground_fraction)
            chosen = torch.cat([positive, negative])
            pool5.append(self.window_pool5(image, candidates[chosen]))
            labels.append(candidate_labels[chosen])
        return F.cross_entropy(self.classifier(self.fc7_features(torch.cat(pool5))), torch.cat(labels))

    @torch.no_grad()
    def detect(
        self, image: Tensor, proposals: Tensor, cache: FeatureCache | None = None, trace: Trace = NO_TRACE
    ) -> dict[str, Tensor]:
        """Score every proposal, regress its box per class, the best of each class after NMS
        (pool5 read from or written to ``cache``, the test-feature cache, when given)."""
        proposals = box_ops.clip(proposals.float().to(image.device), tuple(image.shape[-2:]))
        if len(proposals) == 0:
            empty = image.new_zeros(0)
            return {"boxes": image.new_zeros(0, 4), "scores": empty, "labels": empty.long()}
        pool5 = self.test_pool5(image, proposals, cache)
        trace("cnn", windows=len(proposals))
        scores = self.class_scores(pool5)  # [K, C]
        boxes = self.class_boxes(pool5, proposals, tuple(image.shape[-2:]))  # [K, C, 4]
        found_boxes, found_scores, found_labels = [], [], []
        for index in range(self.num_classes):
            class_scores = scores[:, index]
            top = class_scores.topk(min(self.config.detections_per_class, len(class_scores))).indices
            keep = top[box_ops.nms(boxes[top, index], class_scores[top], self.config.nms_threshold)]
            found_boxes.append(boxes[keep, index])
            found_scores.append(class_scores[keep])
            found_labels.append(torch.full((len(keep),), index + 1, dtype=torch.int64, device=image.device))
        order = torch.cat(found_scores).argsort(descending=True)
        trace("classify")
        return {
            "boxes": torch.cat(found_boxes)[order],
            "scores": torch.cat(found_scores)[order],
            "labels": torch.cat(found_labels)[order],
        }

    def test_feature_cache(self) -> FeatureCache | None:
        """Where test images' pool5 features are kept: the feature cache, once the SVMs are trained
        (the network is final then) and with ``cache_test_features``; else ``None``."""
        if self.config.cache_test_features and self.config.feature_cache_dir and bool(self.svm_trained):
            return feature_cache(self)
        return None

    def test_pool5(self, image: Tensor, proposals: Tensor, cache: FeatureCache | None) -> Tensor:
        """pool5 features of a test image's proposals. With a ``cache``, read from it when it holds
        this image's pixels with these very proposals, else computed and written there (as float16,
        the precision the cache keeps, so a first and a second pass score alike)."""
        if cache is None:
            return self.window_pool5(image, proposals)
        key = f"test-{pixel_digest(image)}"
        boxes = proposals.cpu().numpy()
        if key in cache:
            stored = cache.load(key)
            if stored["boxes"].shape == boxes.shape and np.array_equal(stored["boxes"], boxes):
                return torch.from_numpy(stored["features"]).to(image.device, torch.float32)
        features = self.window_pool5(image, proposals).half()
        cache.save(key, features=features.cpu().numpy(), boxes=boxes)
        return features.float()

    def class_scores(self, pool5: Tensor) -> Tensor:
        """``Tensor[K, C]``: the SVMs' margins, or the softmax (before the SVMs are trained, or
        with ``classifier: softmax``)."""
        hidden = self.fc7_features(pool5)
        if self.config.classifier == "svm" and bool(self.svm_trained):
            return (hidden * self.fc7_scale) @ self.svm_weight.T + self.svm_bias
        return self.classifier(hidden).softmax(dim=1)[:, 1:]

    def class_boxes(self, pool5: Tensor, proposals: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``Tensor[K, C, 4]``: each proposal regressed by each class's regressor (or as it is)."""
        if not (self.config.box_regression and bool(self.box_trained)):
            return proposals[:, None, :].expand(-1, self.num_classes, -1)
        deltas = torch.einsum("kd,cdj->kcj", pool5 * self.pool5_scale, self.box_weight) + self.box_bias
        decoded = self.box_coder.decode(deltas.reshape(len(pool5), -1), proposals)
        return box_ops.clip(decoded.reshape(-1, 4), image_size).view(len(pool5), self.num_classes, 4)

    def recipe(self, name: str) -> list[Stage | Step]:
        fraction = self.config.pretrain_fraction
        return [
            Stage(
                "step1_pretrain",
                lambda model: set_rcnn_stage(model, "pretrain"),
                budget=fraction,
                evaluate=False,
            ),
            Stage("step2_finetune", lambda model: set_rcnn_stage(model, "finetune"), budget=1 - fraction),
            Step("step3_features", extract_features),
            Step("step4_svms", fit_svms),
            Step("step5_box_regression", fit_box_regressors),
        ]

    def memory_cost(self) -> MemoryCost:
        """Measured for the default configuration (``benchmarks/bench_serve_memory.py``), with a
        margin: Selective Search's copies of the image grow with it; its segmentation (of the image
        shrunk to ``proposal_max_side``) and the warped windows do not."""
        return MemoryCost(bytes_per_input_pixel=128, fixed_bytes=192 * MIB)

    def export_plan(self) -> ExportPlan:
        raise NotExportable(
            "R-CNN's regions come from Selective Search, which runs outside the network (and each region is "
            "warped and classified by per-class SVMs); it cannot be one ONNX graph"
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Selective Search -> every proposal warped and through the CNN on its own -> SVMs, box
        regression, NMS."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        proposals = trace["proposals"]["proposals"][0]
        size = self.config.window_size
        scorer = "SVM" if self.config.classifier == "svm" and bool(self.svm_trained) else "softmax"
        regression = ", box regression" if self.config.box_regression and bool(self.box_trained) else ""
        titles = {
            "proposals": f"{proposals_name(self.proposer)}: {len(proposals)} proposals",
            "cnn": f"warp each proposal (with context) to {size} x {size}, CNN on each: {len(proposals)} passes",
            "classify": f"fc6, fc7, {scorer} scores{regression}, NMS",
        }
        views = [BoxesView(proposals_title("Selective Search", proposals), proposals)]
        if len(proposals):
            views.append(self.warped_view(image, proposals, shown_proposal(proposals, output)))
        return output, Inside(trace.stages(lambda name, values: titles[name]), views)

    def warped_view(self, image: Tensor, proposals: Tensor, index: int) -> WindowView:
        """Proposal ``index`` as the CNN sees it: its region with context, warped to the window
        (whatever its shape), the proposal's own box drawn inside."""
        size = self.config.window_size
        region = context_windows(proposals[index : index + 1].to(image), size, self.padding)
        window = warp_windows(image, region, size)[0]
        inner = torch.tensor([[self.padding, self.padding, size - self.padding, size - self.padding]])
        width, height = (proposals[index, 2:] - proposals[index, :2]).tolist()
        title = f"proposal {index + 1} ({width:.0f} x {height:.0f} px) warped with context to {size} x {size}"
        return WindowView(title, window, boxes=inner)


def set_rcnn_stage(model: RCNN, stage: str) -> None:
    """``pretrain`` trains the network with the C-way layer; ``finetune`` with the (C+1)-way one."""
    model.training_stage = stage
    set_trainable(model, True)
    set_trainable(model.classifier if stage == "pretrain" else model.pretrain_classifier, False)


def label_windows(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, foreground_iou: float
) -> tuple[Tensor, Tensor]:
    """Candidates (proposals and the ground-truth boxes) and their labels: the class of the
    best-overlapping ground-truth box at IoU >= ``foreground_iou``, else 0 (background)."""
    candidates = torch.cat([gt_boxes.to(proposals), proposals])
    if len(gt_boxes) == 0:
        return candidates, torch.zeros(len(candidates), dtype=torch.int64, device=candidates.device)
    best, matched = box_ops.iou(candidates, gt_boxes.to(candidates)).max(dim=1)
    labels = torch.where(best >= foreground_iou, gt_labels.to(candidates.device)[matched], 0)
    return candidates, labels.long()


def build_rcnn(config: RCNNConfig, num_classes: int) -> RCNN:
    """R-CNN ``config`` describes for ``num_classes`` classes."""
    backbone = feature_extractor_from_config(config)
    method, cache = proposal_source(
        config.proposal_method, config.max_proposals, config.proposal_max_side, config.proposal_cache_dir
    )
    return RCNN(backbone, num_classes, config, method, cache)


METHOD = Method(
    name="rcnn",
    config=RCNNConfig,
    build=build_rcnn,
    label="R-CNN",
    # From scratch on a CPU, AdamW as the other from-scratch runs here (the original fine-tuned an
    # ImageNet network with SGD at 0.001).
    run_defaults={
        "train": {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 50, "eval_every": 0}
    },
    lecture=LectureRow(seconds_per_image=50.0, mean_ap=66.0),
    needs_every_class=True,  # one SVM a class, which needs positives of every class
)
