"""A checkpoint -> an ``.onnx`` file that :mod:`detlab.export.runtime` runs without torch.

What goes into the graph is the network from its input tensor to its raw outputs, including
whatever in between is tensor work (for Faster R-CNN: anchors, the RPN's top-k and NMS, RoIAlign,
the box decoding). What stays outside, in the runtime's numpy: reading and resizing the image,
and the final score threshold, class-wise NMS and top-k, whose settings the file's metadata holds
with the class names. Each exportable method has a small wrapper module here that calls the
model's own parts; nothing about export lives in the model code.

Exported: ``faster_rcnn``, ``yolo``, ``yolov1``, ``localizer``. Not exported, with the reason in
:data:`NOT_EXPORTABLE`: methods whose first stage runs outside a network (Selective Search for
``rcnn`` and ``fast_rcnn``), whose detections come from Python loops over scales and windows
(``overfeat``), or whose crops depend on the previous stage's output (``keypoints``).

Shape letters: P proposals, A anchor points, C classes, S side.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from detlab import __version__
from detlab import boxes as box_ops
from detlab.export.runtime import FORMAT_VERSION, METADATA_KEY

OPSET = 17  # RoIAlign with aligned=True needs 16

NOT_EXPORTABLE = {
    "rcnn": "R-CNN's regions come from Selective Search, which runs outside the network (and each region is "
            "warped and classified by per-class SVMs); it cannot be one ONNX graph",
    "fast_rcnn": "Fast R-CNN's proposals come from Selective Search, which runs outside the network; export "
                 "faster_rcnn, whose RPN makes the proposals inside the graph",
    "overfeat": "OverFeat's detections come from a Python loop over scales and window offsets followed by box "
                "merging; not exportable as one graph",
    "keypoints": "DeepPose's cascade crops each stage's input around the previous stage's output; not "
                 "exportable as one graph",
}  # fmt: skip


class GraphWrapper(nn.Module):
    """What the exporter traces: a trained ``model`` seen from its input tensors to its raw
    outputs, named ``input_names`` and ``output_names``."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class TwoStageGraph(GraphWrapper):
    """Faster R-CNN: ``images [1, 3, H, W]`` (normalised, padded), ``image_size int64[2]`` (the
    resized image inside the padding) -> ``proposals [P, 4]``, ``probabilities [P, C + 1]``,
    ``boxes [P, C, 4]`` (each class's box, decoded and clipped, in the resized frame)."""

    input_names = ("images", "image_size")
    output_names = ("proposals", "probabilities", "boxes")

    def forward(self, images: Tensor, image_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        size = (image_size[0], image_size[1])
        features = model.backbone(images)
        proposals, _ = model.rpn(features, [size], model.backbone.strides)
        logits, deltas = model.roi_head.predict(features, proposals, [size])
        boxes = model.roi_head.box_coder.decode(deltas, proposals[0]).reshape(-1, 4)
        boxes = box_ops.clip(boxes, size).reshape(len(proposals[0]), -1, 4)
        return proposals[0], logits.softmax(-1), boxes


class OneStageGraph(GraphWrapper):
    """YOLO: ``images [1, 3, H, W]`` (normalised, padded) -> ``boxes [A, 4]`` (xyxy in the resized
    frame), ``scores [A, C]`` (sigmoid)."""

    input_names = ("images",)
    output_names = ("boxes", "scores")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        _, logits, boxes, _, _ = self.model.predict(images)
        return boxes[0], logits[0].float().sigmoid()


class GridGraph(GraphWrapper):
    """YOLO v1: ``images [1, 3, S_in, S_in]`` (warped, normalised) -> ``grid [1, S, S, 5B + C]``."""

    input_names = ("images",)
    output_names = ("grid",)

    def forward(self, images: Tensor) -> Tensor:
        return self.model.network(images)


class WindowGraph(GraphWrapper):
    """The localizer: ``images [1, 3, S, S]`` (warped, [0, 1]) -> ``probabilities [1, K]`` (softmax
    over the object classes), ``boxes [1, R, 4]`` (normalised xyxy; R = 1 class-agnostic)."""

    input_names = ("images",)
    output_names = ("probabilities", "boxes")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model.predict(images)
        logits = outputs["class_logits"][:, 1:] if self.model.background else outputs["class_logits"]
        return logits.softmax(-1), outputs["boxes"]


def batcher_settings(batcher: nn.Module) -> dict:
    return {"resize": "batcher", "min_size": batcher.min_size, "max_size": batcher.max_size,
            "size_divisible": batcher.size_divisible, "mean": batcher.mean.flatten().tolist(),
            "std": batcher.std.flatten().tolist()}  # fmt: skip


def export_plan(model: nn.Module, method: str) -> tuple[GraphWrapper, str, dict, dict, tuple[int, int]]:
    """``(graph wrapper, kind, pre-processing settings, post-processing settings, an example
    input side)`` for a model of ``method``; a ``ValueError`` saying why for the methods that do
    not export."""
    if method in NOT_EXPORTABLE:
        raise ValueError(f"{method} cannot be exported to ONNX: {NOT_EXPORTABLE[method]}")
    if method == "faster_rcnn":
        head = model.roi_head
        if head.box_refinement:
            raise ValueError("faster_rcnn with model.box_refinement=true cannot be exported to ONNX (the second pass "
                             "of the box head is not in the graph); export with --set model.box_refinement=false")  # fmt: skip
        post = {"score_threshold": head.score_threshold, "nms_threshold": head.nms_threshold,
                "detections_per_image": head.detections_per_image}  # fmt: skip
        return TwoStageGraph(model), "two_stage", batcher_settings(model.batcher), post, (model.batcher.min_size,) * 2
    if method == "yolo":
        config = model.config
        post = {"score_threshold": config.score_threshold, "nms_threshold": config.nms_threshold,
                "detections_per_image": config.detections_per_image, "pre_nms_top_k": config.pre_nms_top_k}  # fmt: skip
        return OneStageGraph(model), "one_stage", batcher_settings(model.batcher), post, (config.input_size,) * 2
    if method == "yolov1":
        config = model.config
        with torch.no_grad():
            side = model.body(torch.zeros(1, 3, config.input_size, config.input_size))[-1].shape[-1]
        if side % config.grid:  # ONNX has no adaptive pooling between sizes that do not divide
            raise ValueError(
                f"yolov1 with input_size {config.input_size} cannot be exported to ONNX: its {side}x{side} feature "
                f"map does not divide into the {config.grid}x{config.grid} grid; input sizes that are multiples "
                f"of {config.input_size // side * config.grid} export (the default 448 does)"
            )
        pre = {"resize": "warp", "size": config.input_size, "mean": model.mean.flatten().tolist(),
               "std": model.std.flatten().tolist()}  # fmt: skip
        post = {"score_threshold": config.score_threshold, "nms_threshold": config.nms_threshold,
                "detections_per_image": config.detections_per_image, "boxes_per_cell": config.boxes_per_cell}  # fmt: skip
        return GridGraph(model), "grid", pre, post, (config.input_size,) * 2
    if method == "localizer":
        pre = {"resize": "warp", "size": model.window_size, "mean": [0.0] * 3, "std": [1.0] * 3}
        post = {"top_k": model.top_k, "box_offset": int(model.background)}
        return WindowGraph(model), "window", pre, post, (model.window_size,) * 2
    raise ValueError(f"no ONNX export for the method {method!r}")


def dynamic_axes(graph: GraphWrapper, kind: str) -> dict:
    """Image sides vary for the batcher's methods; proposals and detections vary in number."""
    axes: dict = {}
    if kind in ("two_stage", "one_stage"):
        axes["images"] = {2: "height", 3: "width"}
    if kind == "two_stage":
        axes.update({"proposals": {0: "proposals"}, "probabilities": {0: "proposals"}, "boxes": {0: "proposals"}})
    if kind == "one_stage":
        axes.update({"boxes": {0: "points"}, "scores": {0: "points"}})
    return axes


def export_onnx(checkpoint: str | Path, out: str | Path, overrides: list[str] | None = None) -> dict:
    """Write the model of ``checkpoint`` (any form :func:`detlab.load` takes) to ``out`` as ONNX with
    detlab's metadata; ``overrides``: ``model.FIELD=VALUE`` test-time settings stored with it.
    Returns the metadata."""
    from detlab.engine.predict import model_from_checkpoint

    model, classes, run_config = model_from_checkpoint(checkpoint, overrides)
    model = model.float().eval()
    graph, kind, pre, post, side = export_plan(model, run_config.model_name)
    example = (torch.rand(1, 3, *side) - 0.5,)
    if kind == "two_stage":
        example = (*example, torch.tensor(side, dtype=torch.int64))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every Python number taken from a tensor; the parity test is the check
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, example, str(out), dynamo=False, opset_version=OPSET, input_names=list(graph.input_names),
            output_names=list(graph.output_names), dynamic_axes=dynamic_axes(graph, kind),
        )  # fmt: skip
    metadata = {
        "format_version": FORMAT_VERSION, "detlab_version": __version__, "method": run_config.model_name,
        "kind": kind, "classes": classes, "preprocess": pre, "postprocess": post,
        "inputs": list(graph.input_names), "outputs": list(graph.output_names), "checkpoint": str(checkpoint),
    }  # fmt: skip
    write_metadata(out, metadata)
    return metadata


def write_metadata(path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(path))
