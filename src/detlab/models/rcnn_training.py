"""R-CNN's training steps without gradients (Girshick et al. 2014, sections 2.3 and appendices B, C):
the pool5 features of every window written to disk, per-class linear SVMs trained with
hard-negative mining, and per-class ridge regression of the boxes. Each step is a
:class:`~detlab.models.contract.Step` of R-CNN's recipe (:mod:`detlab.models.rcnn`): it reads the
model's network through ``model.window_pool5`` / ``model.fc7_features`` and writes the SVMs and
regressors into its buffers.

Shape letters: K windows, C classes, D pool5 features, F fc7 features.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import LinearSVC
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.machine import user_cache_dir
from detlab.progress import progress_bar

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
        root = user_cache_dir() / "rcnn_features" if str(root) == "auto" else Path(root)
        self.path = root / fingerprint  # created when the first features are written

    def file(self, key: str) -> Path:
        return self.path / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self.file(key).is_file()

    def load(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.file(key), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def save(self, key: str, **arrays: np.ndarray) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
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


def model_fingerprint(model: nn.Module) -> str:
    """A digest of what pool5 depends on: the conv layers' weights and statistics, the window
    settings and the proposal method."""
    digest = hashlib.sha1()
    for name, value in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    method = model.proposer.settings() if model.proposer is not None else {}
    config = model.config
    digest.update(
        repr((config.window_size, config.context_padding, config.pool_size, sorted(method.items()))).encode()
    )
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


def feature_cache(model: nn.Module) -> FeatureCache:
    return FeatureCache(model.config.feature_cache_dir, model_fingerprint(model))


@torch.no_grad()
def extract_features(model: nn.Module, dataset) -> dict:
    """Step 3: the pool5 features of every ground-truth box and proposal of every training image,
    to disk (finished images are skipped, so a killed run resumes)."""
    was_training = model.training
    model.eval()
    cache, dataset, started, computed = (
        feature_cache(model),
        dataset.without_augmentation(),
        time.perf_counter(),
        0,
    )
    device = model.fc6.weight.device
    for index in progress_bar(range(len(dataset)), desc="pool5 features", unit="image", leave=False):
        key = image_key(dataset.records[index])
        if key in cache:
            continue
        image, target = dataset[index]
        image = image.to(device)
        proposals = model.proposals_of(image, target)
        write_image_features(model, cache, key, image, target, proposals)
        computed += 1
    model.train(was_training)
    return {
        "images": len(dataset),
        "extracted": computed,
        "seconds": round(time.perf_counter() - started, 1),
        "cache_bytes": cache.size_bytes(),
        "cache": str(cache.path),
    }


def write_image_features(
    model: nn.Module, cache: FeatureCache, key: str, image: Tensor, target: dict, proposals: Tensor
) -> None:
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
    cache.save(
        key,
        features=features.half().cpu().numpy(),
        boxes=boxes.cpu().numpy(),
        labels=labels.cpu().numpy(),
        overlaps=overlaps.cpu().numpy(),
    )


def cached_images(model: nn.Module, dataset):
    """``(key, arrays)`` of every training image whose features step 3 wrote."""
    cache = feature_cache(model)
    for record in dataset.records:
        key = image_key(record)
        if key not in cache:
            raise ValueError(
                f"{cache.path}: no features of {record.image_id}; run step 3 (resume the run) first"
            )
        yield key, cache.load(key)


def mean_norm_scale(vectors: list[Tensor], target_norm: float) -> float:
    """The factor that makes the mean L2 norm of ``vectors`` ``target_norm`` (rcnn's feature scaling)."""
    norms = torch.cat([v.float().norm(dim=1) for v in vectors if len(v)])
    return target_norm / max(float(norms.mean()), 1e-12)


def sample_for_scale(
    items: list[Tensor], seed: int = 0, images: int = 50, per_image: int = 200
) -> list[Tensor]:
    """A fixed random sample of windows from a fixed random sample of images (scale estimates)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(items), generator=generator)[:images].tolist()
    return [items[i][torch.randperm(len(items[i]), generator=generator)[:per_image]] for i in chosen]


# -- SVMs with hard-negative mining ----------------------------------------------------------


def train_linear_svm(
    positives: Tensor,
    negatives: Tensor,
    c: float,
    positive_weight: float,
    bias_scale: float,
    tolerance: float = 0.1,
) -> tuple[Tensor, float]:
    """liblinear's L1-loss (hinge) linear SVM with a bias feature of ``bias_scale`` (as rcnn's
    ``-s 3 -B bias_scale -w1 positive_weight -c C``, with liblinear's default stopping tolerance
    0.1 for that solver; scikit-learn's default 1e-4 makes every retraining hundreds of times
    slower, docs/rcnn.md): returns ``(w Tensor[F], b)``."""
    features = torch.cat([positives, negatives]).double().numpy()
    labels = np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])
    svm = LinearSVC(
        C=c,
        loss="hinge",
        dual=True,
        intercept_scaling=bias_scale,
        class_weight={1: positive_weight, -1: 1.0},
        max_iter=20_000,
        tol=tolerance,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear's convergence note at tiny C: the solution is usable
        svm.fit(features, labels)
    return torch.from_numpy(svm.coef_[0]).float(), float(svm.intercept_[0])


class HardNegativeMiner:
    """rcnn's mining for one class: the first image adds all its negatives; afterwards a negative
    enters the cache only if the current SVM scores it above ``hard_score`` and it is not cached
    yet; the SVM is retrained after the first image, after ``retrain_after`` new negatives and at
    the end; after each retraining, cached negatives scoring below ``easy_score`` are evicted."""

    def __init__(
        self,
        positives: Tensor,
        train,
        hard_score: float = -1.0001,
        easy_score: float = -1.2,
        retrain_after: int = 2000,
    ):
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
def fit_svms(model: nn.Module, dataset) -> dict:
    """Step 4: one linear SVM per class on fc7 features (computed from the cached pool5 ones),
    positives the class's ground-truth boxes, negatives proposals with IoU < 0.3 with every box
    of the class, mined hard as :class:`HardNegativeMiner` does."""
    config, started = model.config, time.perf_counter()
    was_training = model.training
    model.eval()
    device = model.fc6.weight.device
    # per image: its key, the labels and overlaps of its windows, their fc7 features (pool5 is not kept)
    images = [
        (
            key,
            {name: arrays[name] for name in ("labels", "overlaps")},
            model.fc7_features(torch.from_numpy(arrays["features"]).float().to(device)).cpu(),
        )
        for key, arrays in cached_images(model, dataset)
    ]
    scale = mean_norm_scale(sample_for_scale([fc7 for _, _, fc7 in images]), config.svm_feature_norm)
    svm = lambda positives, negatives: train_linear_svm(  # noqa: E731
        positives,
        negatives,
        config.svm_c,
        config.svm_positive_weight,
        config.svm_bias_scale,
        config.svm_tolerance,
    )
    outcome = {"fc7_scale": scale}
    for index in range(model.num_classes):
        positives = torch.cat([fc7[arrays["labels"] == index + 1] for _, arrays, fc7 in images]) * scale
        if len(positives) == 0:
            warnings.warn(
                f"class {index + 1} has no ground-truth box in the training split: its SVM scores nothing",
                stacklevel=2,
            )
            model.svm_weight[index], model.svm_bias[index] = 0.0, -1e6
            continue
        miner = HardNegativeMiner(
            positives, svm, config.hard_negative_score, config.easy_negative_score, config.retrain_after
        )
        for key, arrays, fc7 in images:
            negative = torch.from_numpy(
                (arrays["labels"] == 0) & (arrays["overlaps"][:, index] < config.svm_negative_iou)
            )
            rows = torch.where(negative)[0]
            miner.add_image(fc7[rows] * scale, [(key, int(row)) for row in rows])
        weight, bias = miner.finish()
        model.svm_weight[index], model.svm_bias[index] = weight.to(device), bias
        outcome[f"class{index + 1}"] = {
            "positives": len(positives),
            "negatives_kept": len(miner.keys),
            "retrainings": miner.retrainings,
        }
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
def fit_box_regressors(model: nn.Module, dataset) -> dict:
    """Step 5: per class, ridge regression from scaled pool5 features to the ``BoxCoder`` targets
    of the windows whose best ground-truth box is of the class at IoU > 0.6 (appendix C)."""
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
