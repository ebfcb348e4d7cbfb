"""Look inside a detector: the stage each method starts from, and the time of every stage, for one
image (``POST /api/detect`` with ``inside=true``; the page's "look inside" view).

:data:`INSIDE` maps a method's name to its function ``function(predictor, image) -> (output,
inside)``. The function runs the model itself on ``image`` (``Tensor[3, H, W]`` on the
predictor's device) and returns its eval output, exactly ``model([image])[0]``, so the
detections are the ones the model gives. The stages are observed, not recomputed: forward hooks
on the model's own sub-modules (``model.batcher``, ``model.backbone``, ``model.rpn``, ...; see
:class:`ModuleCalls`) record when each starts and ends and what it returns; no model code is
copied here. A method whose proposals come from outside (R-CNN, Fast R-CNN) is handed them, timed
on their own.

``inside`` is ``{"stages": [{"name", "ms"}], "views": [view, ...]}``. Stages follow each other:
one ends when its sub-module last returns and the next begins there, so together they are the
whole run, glue code included. Views are what the page draws, in pixels of the image as uploaded
unless said otherwise:

- ``{"kind": "boxes", "title", "boxes": [[x1, y1, x2, y2]], "labels": [str] | None, "scores": [float] | None}``
- ``{"kind": "heatmap", "title", "values": [[v]] (rows, in [0, 1]), "region": [x1, y1, x2, y2]}``
  (the area the grid of values covers) ``"labels": [[str]] | None`` (a text per cell) and
  ``"grid": bool`` (draw cell borders);
- ``{"kind": "points", "title", "points": [[x, y]], "labels": [str] | None, "scores": [float] | None}``
- ``{"kind": "window", "title", "src": "data:image/png;base64,...", "size": S}``: the network's
  input window, with ``"boxes"``/``"labels"`` or ``"points"`` in the window's pixels.

Shape letters: K proposals, A anchor points (cells of every level), S a window or grid side,
C classes, J joints.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.engine.predict import Predictor

MAX_BOXES = 300  # proposals sent to the page (the RPN keeps 300 at test time; Selective Search up to 2000)
MAX_CELLS = 64  # a heat map larger than this a side is max-pooled down to it
TOP_POINTS = 30  # yolo's best anchor points shown


@dataclasses.dataclass
class Call:
    """One forward call of a watched sub-module: ``time.perf_counter`` start and end; its inputs
    and output when asked to keep them."""

    module: str
    started: float
    finished: float
    inputs: tuple | None = None
    output: Any = None


class ModuleCalls:
    """Within a ``with`` block, record every forward call of ``modules`` (``name -> sub-module``)
    made by this thread (the same model may serve another request in another thread at the same
    time; its calls are not recorded). ``keep``: names whose inputs and output are kept."""

    def __init__(self, modules: dict[str, nn.Module], keep: tuple[str, ...] = ()):
        self.modules, self.keep = modules, set(keep)
        self.calls: list[Call] = []
        self.started = self.finished = 0.0
        self._handles: list = []

    def __enter__(self) -> ModuleCalls:
        thread, open_calls = threading.get_ident(), {}

        def before(name: str):
            def hook(module, inputs):
                if threading.get_ident() == thread:
                    open_calls[name] = (time.perf_counter(), inputs)

            return hook

        def after(name: str):
            def hook(module, inputs, output):
                if threading.get_ident() == thread and name in open_calls:
                    started, inputs = open_calls.pop(name)
                    kept = name in self.keep
                    self.calls.append(Call(name, started, time.perf_counter(), inputs if kept else None,
                                           output if kept else None))  # fmt: skip

            return hook

        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(before(name)))
            self._handles.append(module.register_forward_hook(after(name)))
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.finished = time.perf_counter()
        for handle in self._handles:
            handle.remove()

    def of(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.module == name]

    def first(self, name: str) -> Call:
        return self.of(name)[0]

    def last(self, name: str) -> Call:
        return self.of(name)[-1]


def stages_between(started: float, marks: list[tuple[str, float]], finished: float, tail: str | None) -> list[dict]:
    """Consecutive stages: stage ``i`` runs from the previous mark (``started`` for the first) to
    its own mark ``(name, time)``; ``tail`` names the stage from the last mark to ``finished``."""
    stages, previous = [], started
    for name, mark in marks:
        stages.append({"name": name, "ms": round((mark - previous) * 1000, 2)})
        previous = mark
    if tail is not None:
        stages.append({"name": tail, "ms": round((finished - previous) * 1000, 2)})
    return stages


# -- views -------------------------------------------------------------------------------------


def box_list(boxes: Tensor, limit: int | None = None) -> list[list[float]]:
    """``Tensor[K, 4]`` -> the first ``limit`` boxes as lists, to a tenth of a pixel."""
    return [[round(value, 1) for value in box] for box in boxes[:limit].float().cpu().tolist()]


def boxes_view(title: str, boxes: Tensor, labels: list[str] | None = None, scores: Tensor | None = None) -> dict:
    """``boxes``: ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` pixels, best first; the first :data:`MAX_BOXES`."""
    return {"kind": "boxes", "title": title, "boxes": box_list(boxes, MAX_BOXES), "labels": labels,
            "scores": None if scores is None else [round(s, 3) for s in scores[:MAX_BOXES].tolist()]}  # fmt: skip


def heatmap_view(title: str, values: Tensor, region: list[float], labels: list[list[str]] | None = None,
                 grid: bool = False) -> dict:  # fmt: skip
    """``values``: ``Tensor[h, w]`` in [0, 1], max-pooled to at most :data:`MAX_CELLS` a side."""
    values = values.detach().float().cpu()
    if max(values.shape) > MAX_CELLS:
        size = tuple(min(side, MAX_CELLS) for side in values.shape)
        values = F.adaptive_max_pool2d(values[None], size)[0]
    rows = [[round(value, 3) for value in row] for row in values.clamp(0, 1).tolist()]
    return {"kind": "heatmap", "title": title, "values": rows, "region": [round(v, 1) for v in region],
            "labels": labels, "grid": grid}  # fmt: skip


def points_view(title: str, points: Tensor, labels: list[str] | None = None, scores: Tensor | None = None) -> dict:
    """``points``: ``Tensor[N, 2]`` ``(x, y)`` pixels."""
    rounded = [[round(x, 1), round(y, 1)] for x, y in points.float().cpu().tolist()]
    return {"kind": "points", "title": title, "points": rounded, "labels": labels,
            "scores": None if scores is None else [round(s, 3) for s in scores.tolist()]}  # fmt: skip


def window_view(title: str, window: Tensor, **drawn) -> dict:
    """``window``: the network's input ``Tensor[3, S, S]`` in [0, 1], as a PNG data URL."""
    pixels = (window.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"kind": "window", "title": title, "src": source, "size": int(window.shape[-1]), **drawn}


def guess_labels(predictor: Predictor, output: dict) -> list[str]:
    """``"name score"`` of each detection of a model's ``output``."""
    pairs = zip(output["labels"].tolist(), output["scores"].tolist())
    return [f"{predictor.class_name(label)} {score:.2f}" for label, score in pairs]


def proposals_title(kind: str, proposals: Tensor) -> str:
    """``"RPN: all 300 proposals"``, ``"Selective Search: the first 300 of 1873 proposals"``."""
    shown = min(len(proposals), MAX_BOXES)
    return f"{kind}: {'all ' if shown == len(proposals) else f'the first {shown} of '}{len(proposals)} proposals"


# -- one function per method family -------------------------------------------------------------


def faster_rcnn_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Resize -> backbone (+ FPN) -> RPN proposals -> RoI head; the view: the RPN's proposals."""
    model = predictor.model
    parts = {"batcher": model.batcher, "backbone": model.backbone, "rpn": model.rpn, "roi_head": model.roi_head}
    with ModuleCalls(parts, keep=("batcher", "rpn")) as calls:
        output = model([image])[0]
    scale = calls.last("batcher").output[2][0]
    proposals = box_ops.clip(calls.last("rpn").output[0][0] / scale, tuple(image.shape[-2:]))  # best first
    stages = stages_between(calls.started, [
        (f"resize (x{scale:.2f}) and normalise", calls.last("batcher").finished),
        ("backbone" + (" + FPN" if model.backbone.fpn is not None else ""), calls.last("backbone").finished),
        (f"RPN: anchors scored, {len(proposals)} proposals after NMS", calls.last("rpn").finished),
        ("RoI head: pool, classify and refine each proposal, NMS", calls.last("roi_head").finished),
    ], calls.finished, "boxes back to the image's pixels")  # fmt: skip
    return output, {"stages": stages, "views": [boxes_view(proposals_title("RPN", proposals), proposals)]}


def proposal_stage(model, image: Tensor) -> tuple[Tensor, dict]:
    """R-CNN's and Fast R-CNN's external proposals (their ``proposal_method``, Selective Search by
    default), run and timed on their own: ``(Tensor[K, 4], stage)``."""
    started = time.perf_counter()
    proposals = model.proposal_method(image).float().to(image.device)
    name = getattr(model.proposal_method, "name", "proposals")
    title = f"Selective Search ({name})" if name.startswith("ss-") else name
    return proposals, {"name": f"{title}: {len(proposals)} proposals", "ms": round((time.perf_counter() - started) * 1000, 2)}


def fast_rcnn_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Selective Search -> resize -> one backbone pass -> RoI head on every proposal."""
    model = predictor.model
    proposals, first = proposal_stage(model, image)
    with ModuleCalls({"batcher": model.batcher, "backbone": model.backbone, "roi_head": model.roi_head}) as calls:
        output = model([image], proposals=[proposals])[0]
    stages = [first] + stages_between(calls.started, [
        ("resize and normalise", calls.last("batcher").finished),
        ("backbone: one pass for the whole image", calls.last("backbone").finished),
        (f"RoI head: pool, classify and refine {len(proposals)} proposals, NMS", calls.last("roi_head").finished),
    ], calls.finished, "boxes back to the image's pixels")  # fmt: skip
    return output, {"stages": stages, "views": [boxes_view(proposals_title("Selective Search", proposals), proposals)]}


def rcnn_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Selective Search -> every proposal warped and through the CNN on its own -> SVMs, box
    regression, NMS."""
    model = predictor.model
    proposals, first = proposal_stage(model, image)
    with ModuleCalls({"cnn": model.backbone}) as calls:
        output = model([image], proposals=[proposals])[0]
    marks = []
    if calls.of("cnn"):
        size = model.config.window_size
        marks.append((f"warp each proposal (with context) to {size} x {size}, CNN on each: {len(proposals)} passes",
                      calls.last("cnn").finished))  # fmt: skip
    scorer = "SVM" if model.config.classifier == "svm" and bool(model.svm_trained) else "softmax"
    regression = ", box regression" if model.config.box_regression and bool(model.box_trained) else ""
    stages = [first] + stages_between(calls.started, marks, calls.finished, f"fc6, fc7, {scorer} scores{regression}, NMS")
    return output, {"stages": stages, "views": [boxes_view(proposals_title("Selective Search", proposals), proposals)]}


def overfeat_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """The converted (fully convolutional) network at every scale -> boxes merged; the views: each
    scale's map of window scores (best object class probability)."""
    model = predictor.model
    network = model.dense_network()  # the one detect() runs (cached until the weights change)
    with ModuleCalls({"network": network}, keep=("network",)) as calls:
        output = model([image])[0]
    height, width = image.shape[-2:]
    window, stride = network.window_size, network.stride
    marks, views = [], []
    for scale, call in zip(model.scales, calls.of("network")):
        scores = call.output["class_logits"][0].softmax(dim=0)[1:].amax(dim=0)  # [h', w'], background dropped
        map_height, map_width = scores.shape
        scaled_height, scaled_width = call.inputs[0].shape[-2:]
        # Cell (i, j) is the window at (j, i) * stride of the scaled image; drawn as a stride-sized
        # tile around the window's centre.
        factor_x, factor_y, offset = scaled_width / width, scaled_height / height, (window - stride) / 2
        region = [offset / factor_x, offset / factor_y, (offset + map_width * stride) / factor_x,
                  (offset + map_height * stride) / factor_y]  # fmt: skip
        title = f"scale {scale:g}: {map_height} x {map_width} windows, best class probability"
        views.append(heatmap_view(title, scores, region))
        marks.append((f"scale {scale:g}: {map_height * map_width} windows of {window} px in one pass", call.finished))
    stages = stages_between(calls.started, marks, calls.finished, "merge window boxes across positions and scales")
    return output, {"stages": stages, "views": views}


def yolo_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Letterbox -> backbone -> neck -> head at strides 8, 16, 32 -> NMS; the views: each stride's
    map of best class scores, and the best anchor points."""
    from detlab.models.yolo import anchor_points

    model = predictor.model
    parts = {"batcher": model.batcher, "body": model.body, "neck": model.neck, "head": model.head}
    with ModuleCalls(parts, keep=("batcher", "neck", "head")) as calls:
        output = model([image])[0]
    scale = calls.last("batcher").output[2][0]
    levels = calls.last("neck").output
    scores, classes = calls.last("head").output[1][0].float().sigmoid().max(dim=1)  # [A] each
    views, start = [], 0
    for level, stride in zip(levels, model.strides):
        rows, columns = level.shape[-2:]
        grid = scores[start : start + rows * columns].view(rows, columns)
        start += rows * columns
        region = [0.0, 0.0, columns * stride / scale, rows * stride / scale]
        views.append(heatmap_view(f"stride {stride:g}: {rows} x {columns} cells, best class score", grid, region))
    top = scores.topk(min(TOP_POINTS, len(scores)))
    points = anchor_points(levels, model.strides)[0][top.indices] / scale
    names = [predictor.class_name(index + 1) for index in classes[top.indices].tolist()]
    views.append(points_view(f"the {len(top.indices)} best anchor points (cell centres)", points, names, top.values))
    stages = stages_between(calls.started, [
        (f"letterbox: resize (x{scale:.2f}), normalise, pad", calls.last("batcher").finished),
        ("backbone", calls.last("body").finished),
        ("neck: FPN + PAN", calls.last("neck").finished),
        (f"head: box and class scores at {len(scores)} cells", calls.last("head").finished),
    ], calls.finished, "decode boxes, threshold, NMS")  # fmt: skip
    return output, {"stages": stages, "views": views}


def yolov1_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Warp -> backbone -> FC layers to the S x S grid -> boxes, NMS; the view: the grid, each
    cell's confidence (its most confident predictor) and most likely class."""
    model = predictor.model
    with ModuleCalls({"body": model.body, "fc": model.fc}, keep=("fc",)) as calls:
        output = model([image])[0]
    side, predictors, input_size = model.config.grid, model.config.boxes_per_cell, model.config.input_size
    grid = calls.last("fc").output[0].float().view(side, side, model.outputs)
    confidence = grid[..., 4 : 5 * predictors : 5].clamp(0, 1).amax(dim=-1)  # [S, S]
    probability, best = grid[..., 5 * predictors :].clamp(0, 1).max(dim=-1)
    labels = [[f"{predictor.class_name(c + 1)} {p:.2f}" for c, p in zip(row_classes, row_probabilities)]
              for row_classes, row_probabilities in zip(best.tolist(), probability.tolist())]  # fmt: skip
    height, width = image.shape[-2:]
    view = heatmap_view(f"{side} x {side} grid: cell confidence (shading), most likely class and its probability",
                        confidence, [0.0, 0.0, float(width), float(height)], labels, grid=True)  # fmt: skip
    stages = stages_between(calls.started, [
        (f"warp to {input_size} x {input_size}, normalise", calls.first("body").started),
        ("backbone", calls.last("body").finished),
        (f"1x1 conv, pool to {side} x {side}, two FC layers", calls.last("fc").finished),
    ], calls.finished, "boxes from the grid, class-specific confidence, NMS")  # fmt: skip
    return output, {"stages": stages, "views": [view]}


def localizer_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """Warp to the window -> conv features -> heads; the views: the warped window with the top-k
    guesses, and the guesses on the image."""
    model = predictor.model
    with ModuleCalls({"features": model.features}, keep=("features",)) as calls:
        output = model([image])[0]
    window = calls.first("features").inputs[0][0]
    size = model.window_size
    height, width = image.shape[-2:]
    in_window = output["boxes"] * torch.tensor([size / width, size / height] * 2, device=output["boxes"].device)
    labels = guess_labels(predictor, output)
    stages = stages_between(calls.started, [
        (f"warp the image to the {size} x {size} window", calls.first("features").started),
        ("conv features", calls.last("features").finished),
    ], calls.finished, f"FC layers, class and box heads, top {len(labels)} guesses")  # fmt: skip
    views = [window_view(f"the network's input: the image warped to {size} x {size}, with its top {len(labels)} guesses",
                         window, boxes=box_list(in_window), labels=labels),
             boxes_view(f"top {len(labels)} guesses", output["boxes"], labels, output["scores"])]  # fmt: skip
    return output, {"stages": stages, "views": views}


def keypoints_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """DeepPose: stage 1 on the warped image -> each refinement on crops around the joints; the
    views: the warped window with stage 1's joints, and the joints after every stage."""
    model = predictor.model
    parts = {"initial": model.initial} | {f"refinement {index + 1}": refiner for index, refiner in enumerate(model.refiners)}
    with ModuleCalls(parts, keep=("initial",)) as calls:
        output = model([image])[0]
    window = calls.first("initial").inputs[0][0]
    size = model.initial.window_size
    height, width = image.shape[-2:]
    per_stage = output["keypoints_per_stage"][:, 0]  # [stages, J, 2]
    first_in_window = per_stage[0] * torch.tensor([size / width, size / height], device=per_stage.device)
    marks = [(f"warp the image to the {size} x {size} window", calls.first("initial").started),
             ("stage 1: joints regressed from the whole image", calls.last("initial").finished)]  # fmt: skip
    marks += [(f"{name}: a crop around each joint, regressed again", calls.last(name).finished)
              for name in list(parts)[1:] if calls.of(name)]  # fmt: skip
    views = [window_view(f"the network's input: the image warped to {size} x {size}, with stage 1's joints", window,
                         points=[[round(x, 1), round(y, 1)] for x, y in first_in_window.tolist()])]  # fmt: skip
    views += [points_view("joints after stage 1" if index == 0 else f"joints after refinement {index}", joints)
              for index, joints in enumerate(per_stage)]  # fmt: skip
    return output, {"stages": stages_between(calls.started, marks, calls.finished, None), "views": views}


def whole_model(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """A model no function here knows: one stage, no views."""
    started = time.perf_counter()
    output = predictor.model([image])[0]
    stage = {"name": "the whole model", "ms": round((time.perf_counter() - started) * 1000, 2)}
    return output, {"stages": [stage], "views": []}


INSIDE: dict[str, Callable[[Predictor, Tensor], tuple[dict, dict]]] = {
    "faster_rcnn": faster_rcnn_inside,
    "fast_rcnn": fast_rcnn_inside,
    "rcnn": rcnn_inside,
    "overfeat": overfeat_inside,
    "yolo": yolo_inside,
    "yolov1": yolov1_inside,
    "localizer": localizer_inside,
    "keypoints": keypoints_inside,
}


@torch.no_grad()
def look_inside(predictor: Predictor, method: str, image: Tensor) -> tuple[dict, dict]:
    """``(the model's output for image, inside)`` with the function of ``method`` (or
    :func:`whole_model` for a method not in :data:`INSIDE`)."""
    return INSIDE.get(method, whole_model)(predictor, image.to(predictor.device))
