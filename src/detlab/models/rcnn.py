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
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detlab import boxes as box_ops
from detlab.config import choice
from detlab.engine.stages import Stage, Step, set_trainable
from detlab.models.backbones import BackboneConfig, feature_extractor_from_config
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
    context_padding: float = 16.0  # pixels of context at the original's 227-pixel window, scaled to window_size
    pool_size: int = 4
    representation_size: int = 256
    dropout: float = 0.0
    proposal_method: str = "ss-fast"
    max_proposals: int = 2000
    proposal_max_side: int = 427
    proposal_cache_dir: str = "runs/proposal_cache"
    feature_cache_dir: str = "runs/rcnn_features"
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

    # From scratch on a CPU, AdamW as the other from-scratch runs here (the original fine-tuned an
    # ImageNet network with SGD at 0.001).
    RUN_DEFAULTS: ClassVar[dict] = {
        "train": {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "warmup_steps": 50, "eval_every": 0},
    }  # fmt: skip


ORIGINAL_WINDOW = 227  # the warp size of the original implementation, in which context_padding is given


def context_windows(boxes: Tensor, window_size: int, padding: float) -> Tensor:
    """The image regions whose warp to ``window_size`` shows each box with ``padding`` pixels of
    context on every side (R-CNN appendix A): each side of a box is scaled by
    ``window_size / (window_size - 2 * padding)`` about its centre. ``Tensor[K, 4] -> Tensor[K, 4]``."""
    if not 0 <= 2 * padding < window_size:
        raise ValueError(f"context padding {padding} leaves no room for the box in a {window_size}-pixel window")
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


class RCNN(nn.Module):
    """Warped proposals -> CNN (conv layers, pool5, fc6, fc7) -> per-class SVMs and box regressors;
    obeys the detector contract. ``training_stage``: ``pretrain`` (object windows, C-way) or
    ``finetune`` (proposal windows, (C+1)-way)."""

    RECIPES = ("rcnn",)

    def __init__(self, backbone: nn.Module, num_classes: int, config: RCNNConfig, proposal_method=None, proposal_cache=None):
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
        self.proposal_method, self.proposal_cache = proposal_method, proposal_cache
        self.training_stage = "finetune"
        # The original's 16 pixels of context at its 227-pixel warp, in this window's pixels.
        self.padding = config.context_padding * config.window_size / ORIGINAL_WINDOW
        context_windows(torch.zeros(0, 4), config.window_size, self.padding)  # refuses a padding that does not fit

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
            [self.pool5(warp_windows(normalised, regions[start : start + chunk], self.config.window_size))
             for start in range(0, len(regions), chunk)]
            or [image.new_zeros(0, self.fc6.in_features)]
        )  # fmt: skip

    # -- the detector contract ---------------------------------------------------------------

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, proposals: list[Tensor] | None = None):
        """Training: ``{"loss_pretrain"}`` or ``{"loss_classifier"}``; eval: per image
        ``{"boxes", "scores", "labels"}`` (scores are SVM margins, or softmax probabilities)."""
        if proposals is None:
            per_image = targets if targets is not None else [None] * len(images)
            proposals = [self.proposals_of(image, target) for image, target in zip(images, per_image)]
        if not self.training:
            cache = self.test_feature_cache()  # one fingerprint of the network a call, not one an image
            return [self.detect(image, boxes, cache) for image, boxes in zip(images, proposals)]
        if targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        if self.training_stage == "pretrain":
            return {"loss_pretrain": self.pretrain_loss(images, targets)}
        return {"loss_classifier": self.finetune_loss(images, targets, proposals)}

    def proposals_of(self, image: Tensor, target: dict | None) -> Tensor:
        from detlab.models.fast_rcnn import image_proposals

        if self.training and self.training_stage == "pretrain":
            return image.new_zeros(0, 4)  # object windows only
        return image_proposals(image, target, self.proposal_method, self.proposal_cache, self.training)

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
        return F.cross_entropy(self.pretrain_classifier(self.fc7_features(pool5)), torch.cat(labels).to(pool5.device))

    def finetune_loss(self, images: list[Tensor], targets: list[dict], proposals: list[Tensor]) -> Tensor:
        """(C+1)-way classification of sampled proposal windows (section 2.3): IoU >= 0.5 with a
        ground-truth box is that box's class, the rest background; ground-truth boxes are
        candidates too."""
        pool5, labels = [], []
        per_image = max(1, self.config.windows_per_batch // len(images))
        for image, target, boxes in zip(images, targets, proposals):
            candidates, candidate_labels = label_windows(
                boxes.float().to(image.device), target["boxes"].float(), target["labels"], self.config.foreground_iou
            )
            positive, negative = sample_labels(candidate_labels, per_image, self.config.foreground_fraction)
            chosen = torch.cat([positive, negative])
            pool5.append(self.window_pool5(image, candidates[chosen]))
            labels.append(candidate_labels[chosen])
        return F.cross_entropy(self.classifier(self.fc7_features(torch.cat(pool5))), torch.cat(labels))

    @torch.no_grad()
    def detect(self, image: Tensor, proposals: Tensor, cache: FeatureCache | None = None) -> dict[str, Tensor]:
        """Score every proposal, regress its box per class, the best of each class after NMS
        (pool5 read from or written to ``cache``, the test-feature cache, when given)."""
        proposals = box_ops.clip(proposals.float().to(image.device), tuple(image.shape[-2:]))
        if len(proposals) == 0:
            empty = image.new_zeros(0)
            return {"boxes": image.new_zeros(0, 4), "scores": empty, "labels": empty.long()}
        pool5 = self.test_pool5(image, proposals, cache)
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
        return {"boxes": torch.cat(found_boxes)[order], "scores": torch.cat(found_scores)[order],
                "labels": torch.cat(found_labels)[order]}  # fmt: skip

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
            Stage("step1_pretrain", lambda model: set_rcnn_stage(model, "pretrain"), budget=fraction, evaluate=False),
            Stage("step2_finetune", lambda model: set_rcnn_stage(model, "finetune"), budget=1 - fraction),
            Step("step3_features", extract_features),
            Step("step4_svms", fit_svms),
            Step("step5_box_regression", fit_box_regressors),
        ]


def set_rcnn_stage(model: RCNN, stage: str) -> None:
    """``pretrain`` trains the network with the C-way layer; ``finetune`` with the (C+1)-way one."""
    model.training_stage = stage
    set_trainable(model, True)
    set_trainable(model.classifier if stage == "pretrain" else model.pretrain_classifier, False)


def label_windows(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, foreground_iou: float) -> tuple[Tensor, Tensor]:
    """Candidates (proposals and the ground-truth boxes) and their labels: the class of the
    best-overlapping ground-truth box at IoU >= ``foreground_iou``, else 0 (background)."""
    candidates = torch.cat([gt_boxes.to(proposals), proposals])
    if len(gt_boxes) == 0:
        return candidates, torch.zeros(len(candidates), dtype=torch.int64, device=candidates.device)
    best, matched = box_ops.iou(candidates, gt_boxes.to(candidates)).max(dim=1)
    labels = torch.where(best >= foreground_iou, gt_labels.to(candidates.device)[matched], 0)
    return candidates, labels.long()


# -- features on disk ---------------------------------------------------------------------------


class FeatureCache:
    """pool5 features of every window of every image, one ``.npz`` file an image, under
    ``root/<fingerprint>/``: the fingerprint hashes the conv layers' weights and the window
    settings, so features of another model are never read (they sit in another folder).

    A file holds ``features`` (float16 ``[N, D]``), ``boxes`` (``[N, 4]`` pixels: the image's
    ground-truth boxes first, then its proposals), ``labels`` (``[N]``: the class of a ground-truth
    box, 0 for a proposal) and ``overlaps`` (``[N, C]``: each window's best IoU with a
    ground-truth box of each class). Files are written under a temporary name and renamed, so a
    killed run leaves no half file and resumes where it stopped.
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.path = Path(root) / fingerprint
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, key: str) -> Path:
        return self.path / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self.file(key).is_file()

    def load(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.file(key), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def save(self, key: str, **arrays: np.ndarray) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.file(key))
        except BaseException as error:  # a full disk, or an interruption: never leave half a file
            Path(temporary).unlink(missing_ok=True)
            if not isinstance(error, OSError):
                raise
            raise ValueError(
                f"{self.file(key)}: cannot write the features ({error.strerror or error}); free disk space or set "
                "model.feature_cache_dir elsewhere, then resume the run (finished images are kept)"
            ) from None

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.path.glob("*.npz"))


def model_fingerprint(model: RCNN) -> str:
    """A digest of what pool5 depends on: the conv layers' weights and statistics, the window
    settings and the proposal method."""
    digest = hashlib.sha1()
    for name, value in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    method = getattr(model.proposal_method, "settings", lambda: {})()
    config = model.config
    digest.update(repr((config.window_size, config.context_padding, config.pool_size, sorted(method.items()))).encode())
    return digest.hexdigest()[:16]


def pixel_digest(image: Tensor) -> str:
    """A digest of an image's size and every pixel value (the key of a test image's features)."""
    digest = hashlib.sha1(repr(tuple(image.shape)).encode())
    digest.update(image.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def image_key(record) -> str:
    """A file name for a record's features: its id and a digest of its image's path."""
    text = str(record.image_id)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:60]
    return f"{safe}-{hashlib.sha1(f'{text}|{Path(record.image_path).resolve()}'.encode()).hexdigest()[:10]}"


def feature_cache(model: RCNN) -> FeatureCache:
    return FeatureCache(model.config.feature_cache_dir, model_fingerprint(model))


def plain_images(dataset):
    """``dataset`` without its random training transforms or mosaics (features are of the images
    as stored)."""
    from detlab.data.mosaic import MosaicDataset

    while isinstance(dataset, MosaicDataset):
        dataset = dataset.dataset
    return dataset.with_transforms(None) if hasattr(dataset, "with_transforms") else dataset


@torch.no_grad()
def extract_features(model: RCNN, dataset) -> dict:
    """Step 3: the pool5 features of every ground-truth box and proposal of every training image,
    to disk (finished images are skipped, so a killed run resumes)."""
    import time

    from tqdm import tqdm

    was_training = model.training
    model.eval()
    cache, dataset, started, computed = feature_cache(model), plain_images(dataset), time.perf_counter(), 0
    device = model.fc6.weight.device
    for index in tqdm(range(len(dataset)), desc="pool5 features", unit="image", leave=False, dynamic_ncols=True):
        key = image_key(dataset.records[index])
        if key in cache:
            continue
        image, target = dataset[index]
        image = image.to(device)
        proposals = model.proposals_of(image, target)
        write_image_features(model, cache, key, image, target, proposals)
        computed += 1
    model.train(was_training)
    return {"images": len(dataset), "extracted": computed, "seconds": round(time.perf_counter() - started, 1),
            "cache_bytes": cache.size_bytes(), "cache": str(cache.path)}  # fmt: skip


def write_image_features(model: RCNN, cache: FeatureCache, key: str, image: Tensor, target: dict, proposals: Tensor) -> None:
    gt_boxes, gt_labels = target["boxes"].float().to(image.device), target["labels"].to(image.device)
    boxes = torch.cat([gt_boxes, box_ops.clip(proposals.float().to(image.device), tuple(image.shape[-2:]))])
    labels = torch.cat([gt_labels, torch.zeros(len(proposals), dtype=torch.int64, device=image.device)])
    overlaps = torch.zeros(len(boxes), model.num_classes, device=image.device)
    if len(gt_boxes) and len(boxes):
        iou = box_ops.iou(boxes, gt_boxes)  # [N, G]
        for index in range(model.num_classes):
            of_class = gt_labels == index + 1
            if of_class.any():
                overlaps[:, index] = iou[:, of_class].max(dim=1).values
    features = model.window_pool5(image, boxes)
    cache.save(key, features=features.half().cpu().numpy(), boxes=boxes.cpu().numpy(), labels=labels.cpu().numpy(),
               overlaps=overlaps.cpu().numpy())  # fmt: skip


def cached_images(model: RCNN, dataset):
    """``(key, arrays)`` of every training image whose features step 3 wrote."""
    cache = feature_cache(model)
    for record in dataset.records:
        key = image_key(record)
        if key not in cache:
            raise ValueError(f"{cache.path}: no features of {record.image_id}; run step 3 (resume the run) first")
        yield key, cache.load(key)


def mean_norm_scale(vectors: list[Tensor], target_norm: float) -> float:
    """The factor that makes the mean L2 norm of ``vectors`` ``target_norm`` (rcnn's feature scaling)."""
    norms = torch.cat([v.float().norm(dim=1) for v in vectors if len(v)])
    return target_norm / max(float(norms.mean()), 1e-12)


def sample_for_scale(items: list[Tensor], seed: int = 0, images: int = 50, per_image: int = 200) -> list[Tensor]:
    """A fixed random sample of windows from a fixed random sample of images (scale estimates)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(items), generator=generator)[:images].tolist()
    return [items[i][torch.randperm(len(items[i]), generator=generator)[:per_image]] for i in chosen]


# -- SVMs with hard-negative mining ----------------------------------------------------------


def train_linear_svm(positives: Tensor, negatives: Tensor, c: float, positive_weight: float, bias_scale: float,
                     tolerance: float = 0.1) -> tuple[Tensor, float]:  # fmt: skip
    """liblinear's L1-loss (hinge) linear SVM with a bias feature of ``bias_scale`` (as rcnn's
    ``-s 3 -B bias_scale -w1 positive_weight -c C``, with liblinear's default stopping tolerance
    0.1 for that solver; with scikit-learn's 1e-4 one retraining on 22,000 negatives took 77 s
    instead of 0.1 s here): returns ``(w Tensor[F], b)``."""
    from sklearn.svm import LinearSVC

    features = torch.cat([positives, negatives]).double().numpy()
    labels = np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])
    svm = LinearSVC(C=c, loss="hinge", dual=True, intercept_scaling=bias_scale,
                    class_weight={1: positive_weight, -1: 1.0}, max_iter=20_000, tol=tolerance, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear's convergence note at tiny C: the solution is usable
        svm.fit(features, labels)
    return torch.from_numpy(svm.coef_[0]).float(), float(svm.intercept_[0])


class HardNegativeMiner:
    """rcnn's mining for one class: the first image adds all its negatives; afterwards a negative
    enters the cache only if the current SVM scores it above ``hard_score`` and it is not cached
    yet; the SVM is retrained after the first image, after ``retrain_after`` new negatives and at
    the end; after each retraining, cached negatives scoring below ``easy_score`` are evicted."""

    def __init__(self, positives: Tensor, train, hard_score: float = -1.0001, easy_score: float = -1.2, retrain_after: int = 2000):
        self.positives, self.train = positives, train
        self.hard_score, self.easy_score, self.retrain_after = hard_score, easy_score, retrain_after
        self.features = torch.zeros(0, positives.shape[1])
        self.keys: list = []
        self.weight, self.bias = None, 0.0
        self.added_since_training, self.retrainings = 0, 0
        self.entered: list = []  # every key that ever entered the cache, in order

    def scores(self, features: Tensor) -> Tensor:
        return features @ self.weight + self.bias

    def add_image(self, features: Tensor, keys: list) -> None:
        """One image's negatives (``Tensor[N, F]`` and a key each)."""
        first = self.weight is None
        if not first and len(features):
            hard = self.scores(features) > self.hard_score
            features, keys = features[hard], [key for key, keep in zip(keys, hard.tolist()) if keep]
        known = set(self.keys)
        new = [index for index, key in enumerate(keys) if key not in known]
        if new:
            self.features = torch.cat([self.features, features[new]])
            self.keys += [keys[index] for index in new]
            self.entered += [keys[index] for index in new]
            self.added_since_training += len(new)
        if first or self.added_since_training > self.retrain_after:
            self.retrain()

    def retrain(self) -> None:
        self.weight, self.bias = self.train(self.positives, self.features)
        self.retrainings += 1
        self.added_since_training = 0
        if len(self.features):
            keep = self.scores(self.features) >= self.easy_score
            self.features = self.features[keep]
            self.keys = [key for key, kept in zip(self.keys, keep.tolist()) if kept]

    def finish(self) -> tuple[Tensor, float]:
        if self.weight is None or self.added_since_training:
            self.retrain()
        return self.weight, self.bias


@torch.no_grad()
def fit_svms(model: RCNN, dataset) -> dict:
    """Step 4: one linear SVM per class on fc7 features (computed from the cached pool5 ones),
    positives the class's ground-truth boxes, negatives proposals with IoU < 0.3 with every box
    of the class, mined hard as :class:`HardNegativeMiner` does."""
    import time

    config, started = model.config, time.perf_counter()
    was_training = model.training
    model.eval()
    device = model.fc6.weight.device
    # per image: its key, the labels and overlaps of its windows, their fc7 features (pool5 is not kept)
    images = [(key, {name: arrays[name] for name in ("labels", "overlaps")},
               model.fc7_features(torch.from_numpy(arrays["features"]).float().to(device)).cpu())
              for key, arrays in cached_images(model, dataset)]  # fmt: skip
    scale = mean_norm_scale(sample_for_scale([fc7 for _, _, fc7 in images]), config.svm_feature_norm)
    svm = lambda positives, negatives: train_linear_svm(  # noqa: E731
        positives, negatives, config.svm_c, config.svm_positive_weight, config.svm_bias_scale, config.svm_tolerance
    )
    outcome = {"fc7_scale": scale}
    for index in range(model.num_classes):
        positives = torch.cat([fc7[arrays["labels"] == index + 1] for _, arrays, fc7 in images]) * scale
        if len(positives) == 0:
            warnings.warn(f"class {index + 1} has no ground-truth box in the training split: its SVM scores nothing", stacklevel=2)
            model.svm_weight[index], model.svm_bias[index] = 0.0, -1e6
            continue
        miner = HardNegativeMiner(positives, svm, config.hard_negative_score, config.easy_negative_score, config.retrain_after)
        for key, arrays, fc7 in images:
            negative = torch.from_numpy((arrays["labels"] == 0) & (arrays["overlaps"][:, index] < config.svm_negative_iou))
            rows = torch.where(negative)[0]
            miner.add_image(fc7[rows] * scale, [(key, int(row)) for row in rows])
        weight, bias = miner.finish()
        model.svm_weight[index], model.svm_bias[index] = weight.to(device), bias
        outcome[f"class{index + 1}"] = {"positives": len(positives), "negatives_kept": len(miner.keys),
                                       "retrainings": miner.retrainings}  # fmt: skip
    model.fc7_scale.fill_(scale)
    model.svm_trained.fill_(True)
    model.train(was_training)
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


# -- box regression --------------------------------------------------------------------------


def fit_ridge(features: Tensor, targets: Tensor, ridge_lambda: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with an unregularised bias: ``targets ~ features @ W + b``.
    ``Tensor[N, D], Tensor[N, J] -> (W Tensor[D, J], b Tensor[J])``."""
    x, y = features.double(), targets.double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge_lambda * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    return weight.float(), (y_mean - x_mean @ weight).float()


@torch.no_grad()
def fit_box_regressors(model: RCNN, dataset) -> dict:
    """Step 5: per class, ridge regression from scaled pool5 features to the ``BoxCoder`` targets
    of the windows whose best ground-truth box is of the class at IoU > 0.6 (appendix C)."""
    import time

    config, started = model.config, time.perf_counter()
    device = model.fc6.weight.device
    images = [arrays for _, arrays in cached_images(model, dataset)]
    pool5 = [torch.from_numpy(arrays["features"]) for arrays in images]  # float16, as cached
    scale = mean_norm_scale(sample_for_scale(pool5), config.svm_feature_norm)
    outcome = {"pool5_scale": scale}
    for index in range(model.num_classes):
        features, targets = [], []
        for arrays, windows in zip(images, pool5):
            gt_rows = np.where(arrays["labels"] == index + 1)[0]
            if len(gt_rows) == 0:
                continue
            boxes = torch.from_numpy(arrays["boxes"]).float()
            iou = box_ops.iou(boxes, boxes[gt_rows])
            best, matched = iou.max(dim=1)
            overlaps = torch.from_numpy(arrays["overlaps"])
            # the best ground-truth box of any class must be of this class
            rows = torch.where((best > config.box_regression_iou) & (overlaps.argmax(dim=1) == index))[0]
            features.append(windows[rows].float() * scale)
            targets.append(model.box_coder.encode(boxes[rows], boxes[gt_rows][matched[rows]]))
        if not features or sum(len(f) for f in features) < 2:
            outcome[f"class{index + 1}"] = {"pairs": 0}
            continue  # no regressor: that class's boxes stay as proposed
        weight, bias = fit_ridge(torch.cat(features), torch.cat(targets), config.ridge_lambda)
        model.box_weight[index], model.box_bias[index] = weight.to(device), bias.to(device)
        outcome[f"class{index + 1}"] = {"pairs": int(sum(len(f) for f in features))}
    model.pool5_scale.fill_(scale)
    model.box_trained.fill_(True)
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def build_rcnn(config: RCNNConfig, num_classes: int) -> RCNN:
    """``MODELS["rcnn"]``: R-CNN ``config`` describes for ``num_classes`` classes."""
    from detlab.models.fast_rcnn import proposal_source

    backbone = feature_extractor_from_config(config)
    method, cache = proposal_source(config.proposal_method, config.max_proposals, config.proposal_max_side,
                                    config.proposal_cache_dir)  # fmt: skip
    return RCNN(backbone, num_classes, config, method, cache)
