"""The look-inside view of ``POST /api/detect`` (``inside=true``) as JSON: the stages of one test
pass with their times, and what the page draws.

The model itself says what happened inside (its
:meth:`~detlab.models.contract.Detector.look_inside`: the stages of its test pass, timed from the
named outputs its forward pass records, and the views worth drawing); this module turns that into
what the page reads, for every method alike. ``inside`` is ``{"stages": [{"name", "ms"}],
"views": [view, ...]}``; views are in pixels of the image as uploaded unless said otherwise:

- ``{"kind": "boxes", "title", "boxes": [[x1, y1, x2, y2]], "labels": [str] | None, "scores": [float] | None}``
  (at most :data:`MAX_BOXES`);
- ``{"kind": "heatmap", "title", "values": [[v]] (rows, in [0, 1]), "region": [x1, y1, x2, y2]}``
  (the area the grid of values covers) ``"labels": [[str]] | None`` (a text per cell) and
  ``"grid": bool`` (draw cell borders); at most :data:`MAX_CELLS` a side;
- ``{"kind": "points", "title", "points": [[x, y]], "labels": [str] | None, "scores": [float] | None}``
- ``{"kind": "window", "title", "src": "data:image/png;base64,...", "size": S}``: the network's
  input window, with ``"boxes"``/``"labels"`` or ``"points"`` in the window's pixels.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from detlab.engine.predict import Predictor
from detlab.models.contract import (
    MAX_PROPOSALS_SHOWN,
    BoxesView,
    HeatmapView,
    Inside,
    PointsView,
    View,
    WindowView,
)

MAX_BOXES = MAX_PROPOSALS_SHOWN  # boxes sent to the page
MAX_CELLS = 64  # a heat map larger than this a side is max-pooled down to it


def box_list(boxes: Tensor, limit: int | None = None) -> list[list[float]]:
    """``Tensor[K, 4]`` -> the first ``limit`` boxes as lists, to a tenth of a pixel."""
    return [[round(value, 1) for value in box] for box in boxes[:limit].float().cpu().tolist()]


def point_list(points: Tensor) -> list[list[float]]:
    """``Tensor[N, 2]`` -> ``[[x, y]]`` to a tenth of a pixel."""
    return [[round(x, 1), round(y, 1)] for x, y in points.float().cpu().tolist()]


def score_list(scores: Tensor | None, limit: int | None = None) -> list[float] | None:
    return None if scores is None else [round(score, 3) for score in scores[:limit].float().cpu().tolist()]


def view_json(view: View) -> dict:
    """One view as the page reads it."""
    if isinstance(view, BoxesView):
        return {
            "kind": "boxes",
            "title": view.title,
            "boxes": box_list(view.boxes, MAX_BOXES),
            "labels": view.labels,
            "scores": score_list(view.scores, MAX_BOXES),
        }
    if isinstance(view, PointsView):
        return {
            "kind": "points",
            "title": view.title,
            "points": point_list(view.points),
            "labels": view.labels,
            "scores": score_list(view.scores),
        }
    if isinstance(view, HeatmapView):
        values = view.values.detach().float().cpu()
        if max(values.shape) > MAX_CELLS:
            values = F.adaptive_max_pool2d(
                values[None], tuple(min(side, MAX_CELLS) for side in values.shape)
            )[0]
        rows = [[round(value, 3) for value in row] for row in values.clamp(0, 1).tolist()]
        return {
            "kind": "heatmap",
            "title": view.title,
            "values": rows,
            "region": [round(v, 1) for v in view.region],
            "labels": view.labels,
            "grid": view.grid,
        }
    if isinstance(view, WindowView):
        pixels = (view.window.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(pixels.contiguous().numpy()).save(buffer, "PNG")
        drawn: dict = {"labels": view.labels} if view.labels is not None else {}
        if view.boxes is not None:
            drawn["boxes"] = box_list(view.boxes)
        if view.points is not None:
            drawn["points"] = point_list(view.points)
        source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return {
            "kind": "window",
            "title": view.title,
            "src": source,
            "size": int(view.window.shape[-1]),
            **drawn,
        }
    raise TypeError(f"not a view: {type(view).__name__}")


def inside_json(inside: Inside) -> dict:
    return {
        "stages": [dataclasses.asdict(stage) for stage in inside.stages],
        "views": [view_json(v) for v in inside.views],
    }


@torch.no_grad()
def look_inside(predictor: Predictor, image: Tensor) -> tuple[dict, dict]:
    """``(the model's eval output for image, its inside as JSON)``; the output is exactly
    ``model([image])[0]``, so the detections are the ones the model gives."""
    output, inside = predictor.model.look_inside(image.to(predictor.device), predictor.class_name)
    return output, inside_json(inside)
