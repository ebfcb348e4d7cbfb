"""Keypoint (pose) metrics: PCK and joint errors, for DeepPose-style regression.

A joint is correct at threshold ``t`` when its predicted position lies within ``t x`` the pose size
of the true one (PCK@t). This is DeepPose's "percent of detected joints" (Toshev & Szegedy,
"DeepPose", CVPR 2014, the metrics of the experiments section) with the pose size, the longer side
of the box around the true joints (at least 1 pixel), in place of the torso diameter, so it needs
no notion of which joints form a torso. The mean joint error is given in pixels and relative to
the pose size.

Joints whose true coordinates are not finite (NaN: not labelled) are left out of every number,
and of the pose size.

Shape letters: B images, K joints, S cascade stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2)


def pose_size(truth: np.ndarray) -> np.ndarray:
    """``[B, K, 2]`` true joints -> ``[B]``: the longer side of the box around each pose's labelled
    (finite) joints, at least 1 pixel (also when an image has fewer than two labelled joints)."""
    labelled = np.isfinite(truth).all(axis=2, keepdims=True)  # [B, K, 1]
    if truth.shape[1] == 0:
        return np.ones(len(truth))
    highest = np.where(labelled, truth, -np.inf).max(axis=1)  # [B, 2]
    lowest = np.where(labelled, truth, np.inf).min(axis=1)
    # an image without labelled joints gets sides of -inf, hence the minimum size 1
    return np.maximum((highest - lowest).max(axis=1), 1.0)


def keypoint_metrics(
    predicted: ArrayLike, truth: ArrayLike, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """PCK and mean joint error of ``predicted`` against ``truth``, both ``[B, K, 2]`` ``(x, y)`` pixels.

    Returns ``{"pck@{t}" for t in thresholds, "mean_error_px", "mean_error_relative"}``: the
    fraction of labelled joints within ``t x`` pose size of the truth, the mean distance in pixels
    and the mean distance over the pose size, all over the labelled joints of every image pooled.
    A non-finite predicted joint counts as wrong in PCK and makes the mean errors NaN. With no
    labelled joint at all every value is NaN.
    """
    predicted = np.asarray(predicted, np.float64)
    truth = np.asarray(truth, np.float64)
    if truth.ndim != 3 or truth.shape[2] != 2:
        raise ValueError(f"truth must have shape [B, K, 2], got {list(truth.shape)}")
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted has shape {list(predicted.shape)} but truth {list(truth.shape)}")
    labelled = np.isfinite(truth).all(axis=2)  # [B, K]
    distances = np.linalg.norm(predicted - truth, axis=2)[labelled]  # [J] over labelled joints
    sizes = np.broadcast_to(pose_size(truth)[:, None], labelled.shape)[labelled]  # [J]
    if distances.size == 0:
        nan = float("nan")
        return {**{f"pck@{t}": nan for t in thresholds}, "mean_error_px": nan, "mean_error_relative": nan}
    metrics = {f"pck@{t}": float(np.mean(distances <= t * sizes)) for t in thresholds}
    metrics["mean_error_px"] = float(np.mean(distances))
    metrics["mean_error_relative"] = float(np.mean(distances / sizes))
    return metrics


class KeypointEvaluator:
    """Keypoint metrics of a single-pose regressor (DeepPose), under the evaluator contract.

    ``update(predictions, targets)``: ``predictions[i]`` is ``{"keypoints": [1, K, 2] (x, y) pixels,
    "scores": [1]}`` plus optionally ``"keypoints_per_stage": [S, 1, K, 2]``, the estimate after each
    cascade stage; ``targets[i]["keypoints"]`` is ``[N, K, 2]`` and the first object is the truth.
    An image without keypoints (key missing, N = 0, or no labelled joint) is skipped and counted.

    ``compute()`` returns the :func:`keypoint_metrics` keys of the final estimate (``pck@{t}``,
    ``mean_error_px``, ``mean_error_relative``), the same keys per stage as ``stage{s}/{name}``
    (s = 1..S) when the predictions carry stages, and ``num_images``, ``num_skipped``.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.reset()

    def reset(self) -> None:
        self.predicted: list[np.ndarray] = []  # per image [K, 2]
        self.truth: list[np.ndarray] = []  # per image [K, 2]
        self.per_stage: list[np.ndarray | None] = []  # per image [S, K, 2], or None without stages
        self.num_skipped = 0

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; give one per image")
        for prediction, target in zip(predictions, targets):
            truth = target.get("keypoints")
            truth = np.zeros((0, 0, 2)) if truth is None else np.asarray(truth, np.float64)
            if truth.size and (truth.ndim != 3 or truth.shape[2] != 2):
                raise ValueError(f"target 'keypoints' must have shape [N, K, 2], got {list(truth.shape)}")
            if truth.size == 0 or not np.isfinite(truth[0]).all(axis=1).any():
                self.num_skipped += 1
                continue
            truth = truth[0]
            predicted = self._first_pose(prediction["keypoints"], truth.shape, "keypoints")
            per_stage = None
            stages = prediction.get("keypoints_per_stage")
            if stages is not None and len(stages):
                per_stage = np.stack(
                    [self._first_pose(stage, truth.shape, "keypoints_per_stage") for stage in stages]
                )
            # appended only once all three are checked, so a rejected image leaves no trace
            self.truth.append(truth)
            self.predicted.append(predicted)
            self.per_stage.append(per_stage)

    @staticmethod
    def _first_pose(value, shape: tuple[int, ...], name: str) -> np.ndarray:
        """``[1, K, 2]`` (or ``[K, 2]``) predicted pose -> ``[K, 2]``, checked against the truth's shape."""
        pose = np.asarray(value, np.float64)
        if pose.ndim == 3 and len(pose) >= 1:
            pose = pose[0]
        if pose.shape != shape:
            raise ValueError(
                f"'{name}' holds a pose of shape {list(pose.shape)}; the target's is {list(shape)}"
            )
        return pose

    def compute(self) -> dict:
        if len({len(truth) for truth in self.truth}) > 1:
            raise ValueError("images have different numbers of keypoints; evaluate each skeleton apart")
        truth = np.stack(self.truth) if self.truth else np.zeros((0, 0, 2))  # [B, K, 2]
        predicted = np.stack(self.predicted) if self.predicted else np.zeros((0, 0, 2))
        result = keypoint_metrics(predicted, truth, self.thresholds)
        with_stages = [stages is not None for stages in self.per_stage]
        if any(with_stages):
            if not all(with_stages) or len({len(stages) for stages in self.per_stage}) > 1:
                raise ValueError("'keypoints_per_stage' must be given for every image, with the same stages")
            per_stage = np.stack(self.per_stage, axis=1)  # [S, B, K, 2]
            for stage, estimate in enumerate(per_stage, start=1):
                stage_metrics = keypoint_metrics(estimate, truth, self.thresholds)
                result.update({f"stage{stage}/{name}": value for name, value in stage_metrics.items()})
        result["num_images"] = len(self.truth)
        result["num_skipped"] = self.num_skipped
        return result
