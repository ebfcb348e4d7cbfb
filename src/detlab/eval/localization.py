"""ImageNet-style classification + localization metrics (ILSVRC localization task).

Each image gets ``k`` ranked guesses, each a class and a box. A guess is a correct *localization*
only if its class is one of the image's ground-truth classes AND its box overlaps a ground-truth
box of that class with IoU >= 0.5 (Russakovsky et al., "ImageNet Large Scale Visual Recognition
Challenge", IJCV 2015, section 4.2). Top-k accuracy counts an image as right if any of its first
``k`` guesses is right; the error is one minus the accuracy.

:func:`localization_metrics` scores ranked guesses held in arrays; :class:`LocalizationEvaluator`
collects a localizer's per-image detector outputs (the evaluator contract) and calls it.

Shape letters: N images, K guesses per image, M ground-truth boxes of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from detlab import box_arrays
from detlab.box_arrays import as_numpy

TOP_K = (1, 5)


def localization_metrics(
    pred_labels_topk: ArrayLike,
    pred_boxes_topk: ArrayLike,
    gt_labels: Sequence[ArrayLike],
    gt_boxes: Sequence[ArrayLike],
    iou_threshold: float = 0.5,
) -> dict:
    """Classification and localization accuracy of ranked (class, box) guesses.

    Args:
        pred_labels_topk: int ``[N, K]`` predicted labels ``1..C``, best first (``[N]`` means K = 1).
        pred_boxes_topk: ``[N, K, 4]`` xyxy box of each guess (``[N, 4]`` means K = 1).
        gt_labels: per image int ``[M]`` labels; gt_boxes: per image ``[M, 4]`` xyxy.
        iou_threshold: the overlap a box needs (0.5 in ILSVRC).

    Returns ``{"num_images", "classification_top1", "localization_top1", "localization_error_top1",
    "mean_iou", "iou_threshold"}`` plus the ``top5`` keys when ``K >= 5`` (``topK`` uses the first
    ``K`` guesses). ``mean_iou`` is the mean over images of the top-1 box's best IoU with any
    ground-truth box of the image, whatever the class: it measures the box alone. Images without
    ground truth are left out (``num_skipped``).
    """
    labels = as_numpy(pred_labels_topk, np.int64)
    boxes = as_numpy(pred_boxes_topk, np.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if boxes.ndim == 2:
        boxes = boxes[:, None, :]
    num_images, num_guesses = labels.shape
    if boxes.shape != (num_images, num_guesses, 4):
        raise ValueError(
            f"pred_boxes_topk must have shape [N, K, 4] = {[num_images, num_guesses, 4]}, got {list(boxes.shape)}"
        )
    if len(gt_labels) != num_images or len(gt_boxes) != num_images:
        raise ValueError(
            f"{num_images} predictions but {len(gt_labels)} gt_labels and {len(gt_boxes)} gt_boxes"
        )
    class_right = np.zeros((num_images, num_guesses), bool)
    localized = np.zeros((num_images, num_guesses), bool)
    best_iou = np.zeros(num_images)
    has_truth = np.zeros(num_images, bool)
    for index in range(num_images):
        image_labels = as_numpy(gt_labels[index], np.int64).reshape(-1)
        image_boxes = as_numpy(gt_boxes[index], np.float64).reshape(-1, 4)
        if len(image_labels) != len(image_boxes):
            raise ValueError(f"image {index}: {len(image_boxes)} gt boxes but {len(image_labels)} gt labels")
        if len(image_labels) == 0:
            continue
        has_truth[index] = True
        overlaps = box_arrays.iou(boxes[index], image_boxes)  # [K, M]
        same_class = labels[index][:, None] == image_labels[None, :]
        class_right[index] = same_class.any(axis=1)
        localized[index] = (same_class & (overlaps >= iou_threshold)).any(axis=1)
        best_iou[index] = overlaps[0].max()
    counted = int(has_truth.sum())
    result = {"num_images": counted, "num_skipped": num_images - counted, "iou_threshold": iou_threshold}
    for k in sorted({k for k in TOP_K if k <= num_guesses} | {num_guesses}):
        localization = float(localized[has_truth, :k].any(axis=1).mean()) if counted else 0.0
        result[f"classification_top{k}"] = (
            float(class_right[has_truth, :k].any(axis=1).mean()) if counted else 0.0
        )
        result[f"localization_top{k}"] = localization
        result[f"localization_error_top{k}"] = 1.0 - localization
    result["mean_iou"] = float(best_iou[has_truth].mean()) if counted else 0.0
    return result


class LocalizationEvaluator:
    """ILSVRC classification + localization metrics of a localizer, under the evaluator contract.

    ``update(predictions, targets)``: ``predictions[i]`` is the localizer's output for image ``i``,
    ``{"boxes": [k, 4] xyxy, "scores": [k], "labels": int [k] in 1..C}``, its k (class, box)
    guesses in any order; ``targets[i]`` holds ``"boxes": [M, 4]`` xyxy and ``"labels": [M]``
    (M may be 0: the image is then skipped and counted in ``num_skipped``). Each image keeps its
    ``top_k`` best-scored guesses (ties in the given order). Tensors and arrays are both accepted.

    ``compute()`` returns the dict of :func:`localization_metrics`: ``classification_top1``,
    ``localization_top1``, ``localization_error_top1``, the same three for ``top{top_k}``,
    ``mean_iou``, ``num_images``, ``num_skipped`` and ``iou_threshold``. An image with fewer than
    ``top_k`` guesses is judged on those it has; one with no guess at all is wrong, with IoU 0.
    """

    def __init__(self, classes: list[str], top_k: int = 5, iou_threshold: float = 0.5):
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.classes = list(classes)
        self.top_k = top_k
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self.pred_labels: list[np.ndarray] = []  # per image int64 [k], k <= top_k, best first
        self.pred_boxes: list[np.ndarray] = []  # per image float64 [k, 4]
        self.gt_labels: list[np.ndarray] = []  # per image int64 [M]
        self.gt_boxes: list[np.ndarray] = []  # per image float64 [M, 4]

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; give one per image")
        for prediction, target in zip(predictions, targets):
            index = len(self.pred_labels)
            scores = as_numpy(prediction["scores"], np.float64).reshape(-1)
            labels = self._labels(prediction["labels"], f"image {index}: prediction")
            boxes = as_numpy(prediction["boxes"], np.float64).reshape(-1, 4)
            if not len(scores) == len(labels) == len(boxes):
                raise ValueError(
                    f"image {index}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
                    "give one of each per guess"
                )
            gt_labels = self._labels(target["labels"], f"image {index}: target")
            best = np.argsort(-scores, kind="stable")[: self.top_k]
            self.pred_labels.append(labels[best])
            self.pred_boxes.append(boxes[best])
            self.gt_labels.append(gt_labels)
            self.gt_boxes.append(as_numpy(target["boxes"], np.float64).reshape(-1, 4))

    def _labels(self, value, where: str) -> np.ndarray:
        labels = as_numpy(value, np.int64).reshape(-1)
        if len(labels) and (labels.min() < 1 or labels.max() > len(self.classes)):
            raise ValueError(f"{where} labels must be in 1..{len(self.classes)}, got {np.unique(labels)}")
        return labels

    def compute(self) -> dict:
        # localization_metrics takes rectangular [N, top_k] guesses. Missing guesses are padded
        # with label 0 (background, never a ground-truth class, so never right) and an empty box
        # (IoU 0 with anything), which leaves every number as if they were simply absent.
        num_images = len(self.pred_labels)
        labels = np.zeros((num_images, self.top_k), np.int64)
        boxes = np.zeros((num_images, self.top_k, 4))
        for index, (image_labels, image_boxes) in enumerate(zip(self.pred_labels, self.pred_boxes)):
            labels[index, : len(image_labels)] = image_labels
            boxes[index, : len(image_boxes)] = image_boxes
        return localization_metrics(labels, boxes, self.gt_labels, self.gt_boxes, self.iou_threshold)
