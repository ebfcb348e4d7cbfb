"""Inference-only rewrites of a trained model that keep its outputs (up to float rounding), and
test-time combinations that change them: multi-scale testing, ensembles of checkpoints and tiled
inference."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detlab import boxes as box_ops
from detlab import tiles
from detlab.models.contract import NO_TRACE, DetectorModule, MemoryCost, Trace


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into
    that convolution (in eval mode BatchNorm is a fixed per-channel scale and shift, which the
    convolution's weights and bias can absorb), in place; the BatchNorm becomes ``nn.Identity``.
    Saves a pass over every feature map at test time. Only for a model that will not train again
    (its state dict changes shape). Returns the number of folded pairs."""
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
                folded += 1
    return folded


@contextlib.contextmanager
def input_scale(model: DetectorModule, factor: float):
    """Within the block, ``model``'s batcher resizes images ``factor`` times larger (its short
    and long side limits both scaled): multi-scale testing of any detector that resizes its input
    with an :class:`~detlab.models.transform.ImageBatcher` (Fast and Faster R-CNN, yolo)."""
    batcher = model.image_batcher()
    if batcher is None:
        raise ValueError(
            f"{type(model).__name__} does not resize its input: multi-scale testing needs a detector "
            "with an image batcher (fast_rcnn, faster_rcnn, yolo)"
        )
    saved = batcher.min_size, batcher.max_size
    batcher.min_size, batcher.max_size = (max(1, round(side * factor)) for side in saved)
    try:
        yield model
    finally:
        batcher.min_size, batcher.max_size = saved


def merge_detections(parts: list[dict[str, Tensor]], nms_threshold: float, limit: int) -> dict[str, Tensor]:
    """One image's detections from several passes -> one set: per-class NMS over their union,
    the ``limit`` best kept."""
    boxes = torch.cat([part["boxes"].float() for part in parts])
    scores = torch.cat([part["scores"].float() for part in parts])
    labels = torch.cat([part["labels"] for part in parts])
    keep = box_ops.batched_nms(boxes, scores, labels, nms_threshold)[:limit]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class TestTimeCombination(DetectorModule):
    """Detections of several trained detectors (an ensemble of checkpoints) and/or at several
    input scales (multi-scale testing), merged per image by per-class NMS at ``nms_threshold``
    (the lecture's "multi-scale testing" and "ensemble" rows). Obeys the detector contract in
    eval mode; every model must detect the same classes (their scores are then comparable
    probabilities)."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        models: list[DetectorModule],
        scales: tuple[float, ...] = (1.0,),
        nms_threshold: float | None = None,
        detections_per_image: int | None = None,
    ):
        super().__init__()
        if not models:
            raise ValueError("no model to combine")
        if not all(isinstance(model, DetectorModule) for model in models):
            raise ValueError("a test-time combination combines detlab detectors (DetectorModule)")
        if any(model.evaluation != "detection" for model in models):
            raise ValueError(
                "ensembles and multi-scale testing combine detectors' boxes; this checkpoint is not a detector"
            )
        if any(scale <= 0 for scale in scales) or not scales:
            raise ValueError(f"test scales must be positive factors, got {list(scales)}")
        self.models = nn.ModuleList(models)
        self.scales = tuple(float(scale) for scale in scales)
        # by default the first model's test-time NMS and detection limit merge the passes
        own_nms, own_limit = models[0].merge_settings()
        self.nms_threshold = own_nms if nms_threshold is None else nms_threshold
        self.detections_per_image = own_limit if detections_per_image is None else detections_per_image
        if any(scale != 1.0 for scale in self.scales):
            for model in models:
                with input_scale(model, 1.0):  # refuses a model without a batcher now, not mid-run
                    pass

    def merge_settings(self) -> tuple[float, int]:
        return self.nms_threshold, self.detections_per_image

    def memory_cost(self) -> MemoryCost | None:
        """The costliest member's, its fixed part at the largest scale (the passes run one after
        another; a scale resizes the working size of a member, so its area)."""
        costs = [model.memory_cost() for model in self.models]
        if any(cost is None for cost in costs):
            return None
        largest = max(self.scales) ** 2
        return MemoryCost(
            max(cost.bytes_per_input_pixel for cost in costs),
            max(cost.fixed_bytes for cost in costs) * max(largest, 1.0),
        )

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE
    ) -> list[dict[str, Tensor]]:
        if self.training:
            raise ValueError("a test-time combination does not train; call .eval()")
        passes: list[list[dict[str, Tensor]]] = [[] for _ in images]
        for model in self.models:
            for scale in self.scales:
                with input_scale(model, scale) if scale != 1.0 else contextlib.nullcontext():
                    for index, output in enumerate(model(images)):
                        passes[index].append(output)
        return [merge_detections(parts, self.nms_threshold, self.detections_per_image) for parts in passes]


class TiledDetector(DetectorModule):
    """A detector run on overlapping tiles of each image (:func:`detlab.tiles.tile_windows`), each
    tile at the resolution the detector gives its input, and with ``tiling.full_image`` on the
    whole image too; the passes' detections merged by :func:`detlab.tiles.merge_detections` (the
    rule is written there) with the detector's own NMS threshold and detection limit. Tiles of one
    image have one size, so they go ``tiling.batch_size`` a forward pass. An image that is one tile
    gets the detector's own output. Obeys the detector contract in eval mode."""

    def __init__(self, model: DetectorModule, tiling: tiles.Tiling):
        super().__init__()
        if not isinstance(model, DetectorModule) or model.evaluation != "detection":
            raise ValueError("tiled inference merges detectors' boxes; this checkpoint is not a detector")
        self.model, self.tiling = model, tiling

    def merge_settings(self) -> tuple[float, int]:
        return self.model.merge_settings()

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE
    ) -> list[dict[str, Tensor]]:
        if self.training:
            raise ValueError("tiled inference does not train; train on a tiled copy (detlab convert --tile)")
        return [self.detect(image) for image in images]

    def detect(self, image: Tensor) -> dict[str, Tensor]:
        """One image ``Tensor[3, H, W]`` -> its merged detections, in its pixels."""
        height, width = image.shape[-2:]
        windows = tiles.tile_windows(height, width, self.tiling.size, self.tiling.overlap)
        crops = [image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in windows.tolist()]
        outputs = []
        for start in range(0, len(crops), self.tiling.batch_size):
            outputs += self.model(crops[start : start + self.tiling.batch_size])
        if len(windows) == 1:
            return outputs[0]
        whole = self.model([image])[0] if self.tiling.full_image else None
        nms_threshold, limit = self.model.merge_settings()
        boxes, scores, labels = tiles.merge_tiles(
            windows,
            (height, width),
            [as_arrays(output) for output in outputs],
            as_arrays(whole) if whole is not None else None,
            self.tiling,
            nms_threshold,
            limit,
        )
        return {
            "boxes": torch.from_numpy(boxes).to(image.device),
            "scores": torch.from_numpy(scores).to(image.device),
            "labels": torch.from_numpy(labels).to(image.device),
        }


def as_arrays(output: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A detector's output -> ``(boxes float32[K, 4], scores float32[K], labels int64[K])`` on the CPU."""
    return (
        output["boxes"].float().cpu().numpy(),
        output["scores"].float().cpu().numpy(),
        output["labels"].cpu().numpy(),
    )
