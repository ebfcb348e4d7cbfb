"""ImageNet-style classification + localization metrics (ILSVRC localization task).

Each image gets ``k`` ranked guesses, each a class and a box. A guess is a correct *localization*
only if its class is one of the image's ground-truth classes AND its box overlaps a ground-truth
box of that class with IoU >= 0.5 (Russakovsky et al., "ImageNet Large Scale Visual Recognition
Challenge", IJCV 2015, section 4.2). Top-k accuracy counts an image as right if any of its first
``k`` guesses is right; the error is one minus the accuracy.

Shape letters: N images, K guesses per image, M ground-truth boxes of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from detlab.eval.proposals import pairwise_iou

TOP_K = (1, 5)


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def localization_metrics(
    pred_labels_topk: Tensor | np.ndarray,
    pred_boxes_topk: Tensor | np.ndarray,
    gt_labels: Sequence[Tensor | np.ndarray],
    gt_boxes: Sequence[Tensor | np.ndarray],
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
    labels = _numpy(pred_labels_topk, np.int64)
    boxes = _numpy(pred_boxes_topk, np.float64)
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
        image_labels = _numpy(gt_labels[index], np.int64).reshape(-1)
        image_boxes = _numpy(gt_boxes[index], np.float64).reshape(-1, 4)
        if len(image_labels) != len(image_boxes):
            raise ValueError(f"image {index}: {len(image_boxes)} gt boxes but {len(image_labels)} gt labels")
        if len(image_labels) == 0:
            continue
        has_truth[index] = True
        overlaps = pairwise_iou(boxes[index], image_boxes)  # [K, M]
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
