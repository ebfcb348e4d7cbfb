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

Every number is finite: a box or point holding a NaN or infinity is left out (with its label and
score), and a heat map's or window's NaN values become 0 (infinities the nearest end of [0, 1]).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math

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


def finite_rows(rows: Tensor, scores: Tensor | None, labels: list[str] | None):
    """``(rows, scores, labels)`` without the rows (``Tensor[K, D]``) that hold a NaN or infinity
    in their values or score; ``labels`` (one a row, or ``None``) follow their rows."""
    keep = torch.isfinite(rows.detach().float().cpu()).all(dim=1)
    if scores is not None:
        score_values = scores.detach().float().cpu().reshape(-1)
        if len(score_values) == len(keep):
            keep &= torch.isfinite(score_values)
            scores = score_values[keep]
    if labels is not None and len(labels) == len(keep):
        labels = [label for label, kept in zip(labels, keep.tolist()) if kept]
    return rows[keep.to(rows.device)], scores, labels


def finite_values(values: Tensor) -> Tensor:
    """Values meant to lie in [0, 1] with NaN as 0 and infinities clamped."""
    return torch.nan_to_num(values.detach().float().cpu(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)


def box_list(boxes: Tensor, limit: int | None = None) -> list[list[float]]:
    """``Tensor[K, 4]`` -> the first ``limit`` boxes as lists, to a tenth of a pixel."""
    return [[round(value, 1) for value in box] for box in boxes[:limit].float().cpu().tolist()]


def point_list(points: Tensor) -> list[list[float]]:
    """``Tensor[N, 2]`` -> ``[[x, y]]`` to a tenth of a pixel."""
    return [[round(x, 1), round(y, 1)] for x, y in points.float().cpu().tolist()]


def score_list(scores: Tensor | None, limit: int | None = None) -> list[float] | None:
    return None if scores is None else [round(score, 3) for score in scores[:limit].float().cpu().tolist()]


def view_json(view: View) -> dict:
    """One view as the page reads it (every number finite)."""
    if isinstance(view, BoxesView | PointsView):
        rows, scores, labels = finite_rows(
            view.boxes if isinstance(view, BoxesView) else view.points, view.scores, view.labels
        )
        if isinstance(view, PointsView):
            return {
                "kind": "points",
                "title": view.title,
                "points": point_list(rows),
                "labels": labels,
                "scores": score_list(scores),
            }
        return {
            "kind": "boxes",
            "title": view.title,
            "boxes": box_list(rows, MAX_BOXES),
            "labels": labels,
            "scores": score_list(scores, MAX_BOXES),
        }
    if isinstance(view, HeatmapView):
        values = finite_values(view.values)
        if max(values.shape) > MAX_CELLS:
            values = F.adaptive_max_pool2d(
                values[None], tuple(min(side, MAX_CELLS) for side in values.shape)
            )[0]
        return {
            "kind": "heatmap",
            "title": view.title,
            "values": [[round(value, 3) for value in row] for row in values.tolist()],
            "region": [round(v, 1) if math.isfinite(v) else 0.0 for v in view.region],
            "labels": view.labels,
            "grid": view.grid,
        }
    if isinstance(view, WindowView):
        return window_json(view)
    raise TypeError(f"not a view: {type(view).__name__}")


def window_json(view: WindowView) -> dict:
    """A :class:`WindowView` as a PNG data URL with what is drawn on it."""
    pixels = (finite_values(view.window) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels.contiguous().numpy()).save(buffer, "PNG")
    drawn: dict = {"labels": view.labels} if view.labels is not None else {}
    if view.boxes is not None:
        boxes, _, labels = finite_rows(view.boxes, None, view.labels)
        drawn.update(boxes=box_list(boxes), **({"labels": labels} if labels is not None else {}))
    if view.points is not None:
        points, _, labels = finite_rows(view.points, None, view.labels)
        drawn.update(points=point_list(points), **({"labels": labels} if labels is not None else {}))
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"kind": "window", "title": view.title, "src": source, "size": int(view.window.shape[-1]), **drawn}


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
