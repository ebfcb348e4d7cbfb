"""Evaluation shared between processes, and what of its result the engine keeps.

:func:`evaluate_across_processes` lets each rank of a ``torchrun`` run predict its shard of the
validation images (:class:`~detlab.engine.sampling.ShardSampler`: images ``rank, rank + W, ...``);
rank 0 gathers the predictions in the data set's order and scores them with one evaluator, so the
numbers are those of one process, and every rank gets them. :func:`predictions` is the one loop
that runs a model over a loader, for it and for :func:`detlab.engine.train.evaluate`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch

from detlab.engine.distributed import Context, broadcast_object, gather_to_main, move_to_device
from detlab.engine.precision import full_precision, inference_autocast
from detlab.eval.coco import CocoResult
from detlab.models.contract import Detector

# Metrics tried in order to pick the best checkpoint when the caller names none: COCO's AP50 for
# detectors, top-1 localization for one-object localization, PCK for keypoints.
BEST_METRIC_CANDIDATES = ("AP50", "AP", "localization_top1", "pck@0.2")
SCORING_CHUNK = 64  # predictions handed to the evaluator at a time when scoring gathered shards


@torch.no_grad()
def predictions(
    model: torch.nn.Module, data_loader, device: torch.device, amp: bool = True
) -> Iterator[tuple[list, list]]:
    """``(predictions, targets)`` a batch: ``model`` in eval mode on ``device`` (under float16
    autocast on a GPU unless ``amp`` is off), predictions moved to the CPU as float32. The model's
    training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        for images, targets in data_loader:
            images, _ = move_to_device(images, None, device)
            with inference_autocast(device, amp):
                outputs = model(images)
            yield (
                [
                    {key: full_precision(value.detach().cpu()) for key, value in output.items()}
                    for output in outputs
                ],
                list(targets),
            )
    finally:
        model.train(was_training)


def evaluate_across_processes(
    model: Detector, shard_loader, classes: list[str], context: Context, amp: bool = True
) -> dict:
    """``model``'s :meth:`~detlab.models.contract.Detector.make_evaluator` result on the validation
    set, each rank predicting its shard; the scalar metrics (:func:`plain_metrics`), on every rank."""
    if not context.distributed:
        evaluator = model.make_evaluator(classes)
        for outputs, targets in predictions(model, shard_loader, context.device, amp):
            evaluator.update(outputs, targets)
        return plain_metrics(evaluator.compute())
    local = [
        pair
        for outputs, targets in predictions(model, shard_loader, context.device, amp)
        for pair in zip(outputs, targets)
    ]
    shards = gather_to_main(local, context)
    result = None
    if context.is_main:
        evaluator = model.make_evaluator(classes)
        # image i is shards[i % W][i // W]: interleave the shards back into the data set's order
        ordered = [item for group in itertools.zip_longest(*shards) for item in group if item is not None]
        for start in range(0, len(ordered), SCORING_CHUNK):
            chunk = ordered[start : start + SCORING_CHUNK]
            evaluator.update([output for output, _ in chunk], [target for _, target in chunk])
        result = plain_metrics(evaluator.compute())
    return broadcast_object(result, context)


def pick_best_metric(metrics: dict, name: str | None) -> tuple[str | None, float | None]:
    """``(name, value)`` of the metric that picks ``best.pt``: ``name``, else the first of
    :data:`BEST_METRIC_CANDIDATES` present; ``(None, None)`` when none is (an error for a named one)."""
    for candidate in [name] if name else BEST_METRIC_CANDIDATES:
        value = metrics.get(candidate)
        if isinstance(value, int | float) and math.isfinite(value):
            return candidate, float(value)
    if name:
        raise ValueError(f"evaluation returned no metric {name!r}; it returned {sorted(metrics)}")
    return None, None


def plain_metrics(metrics) -> dict:
    """The scalar part of an evaluator's result (tables stay out of the log and checkpoint): a
    :class:`~detlab.eval.coco.CocoResult` gives its summary numbers and its operating point (the
    best-F1 confidence, which ``predict --score-threshold auto`` reads from the checkpoint), another
    result object its ``summary()``."""
    if isinstance(metrics, CocoResult):
        metrics = metrics.scalars()
    elif not isinstance(metrics, dict):
        metrics = metrics.summary()
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    }
