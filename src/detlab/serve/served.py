"""The models a server holds, and what one detection request computes (no HTTP here).

A model is known to clients by its name, the name of its run folder (``runs/shapes/best`` ->
``shapes``; ``-2``, ``-3``... when two runs share a name), and chosen by that name only: no path
a client sends is ever opened.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from detlab.engine.predict import Predictor
from detlab.serve.inside import look_inside
from detlab.serve.limits import Limits, RequestRefused
from detlab.serve.upload import decode_upload
from detlab.tiles import Tiling


@dataclasses.dataclass
class ServedModel:
    name: str
    method: str  # the name in detlab.models.MODELS, or the model's class name
    checkpoint: str  # the file it was loaded from ("" for a Predictor handed in)
    predictor: Predictor

    def describe(self) -> dict:
        """What ``GET /api/models`` says about it."""
        return {
            "name": self.name,
            "method": self.method,
            "classes": list(self.predictor.classes),
            "checkpoint": self.checkpoint,
        }


def run_name(path: str | Path) -> str:
    """The run folder's name of a checkpoint path: ``RUN/best``, ``RUN/best.pt`` and ``RUN`` -> ``RUN``."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name or path.stem


def served_models(sources, device: str = "auto") -> dict[str, ServedModel]:
    """``name -> ServedModel`` from checkpoint paths and :class:`Predictor` objects, or from a dict
    ``name -> path or Predictor`` (names as given). Paths load with
    :meth:`Predictor.from_checkpoint` (on ``device``)."""
    from detlab.engine import checkpoint as checkpoints

    items = list(sources.items()) if isinstance(sources, dict) else [(None, source) for source in sources]
    if not items:
        raise ValueError(
            "no model to serve: give at least one checkpoint (detlab serve --checkpoint RUN/best)"
        )
    models: dict[str, ServedModel] = {}
    for name, source in items:
        if isinstance(source, Predictor):
            predictor, checkpoint = source, ""
            method = source.run_config.model_name if source.run_config else type(source.model).__name__
        else:
            checkpoint = str(checkpoints.resolve_checkpoint_path(source))
            predictor = Predictor.from_checkpoint(source, device=device)
            method = predictor.run_config.model_name
        name = unique_name(name or (run_name(source) if checkpoint else method), models)
        predictor.model.stop_disk_caches()  # a server would write files a request
        models[name] = ServedModel(name, method, checkpoint, predictor)
    return models


def unique_name(name: str, taken: dict) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def detect(
    model: ServedModel,
    data: bytes,
    score_threshold: float,
    inside: bool,
    limits: Limits,
    tiling: Tiling | None = None,
) -> dict:
    """Decode an uploaded image and run ``model`` on it (blocking: the app runs it in a worker
    thread). Returns the ``POST /api/detect`` answer without ``"timings"["queue_ms"]``::

        {"model", "image": {"width", "height"}, "detections": [{"bbox": [x, y, w, h], "score",
         "category_id", "category_name"[, "keypoints": [x1, y1, v1, ...]]}], "timings": {"decode_ms",
         "model_ms"}, "inside": {"stages", "views"} (with ``inside`` only)}

    Detections are COCO results (best first, ``score >= score_threshold``) with class names;
    category ids are the labels (1..C). ``tiling``: tiled inference (not with ``inside``, whose
    view is one pass of the model: 400). A model that refuses the image raises
    :class:`RequestRefused` (422)."""
    if inside and tiling is not None:
        raise RequestRefused(
            400, "inside and tile cannot be combined: the look-inside view shows one pass of the model"
        )
    from detlab.eval.results import coco_result_entries

    started = time.perf_counter()
    image = decode_upload(data, limits)
    decoded = time.perf_counter()
    predictor = model.predictor
    inside_view = None
    try:
        if inside:
            output, inside_view = look_inside(predictor, image)
            prediction = predictor.select(output, score_threshold)
        else:
            prediction = predictor.predict(image, score_threshold, tiling=tiling)
    except ValueError as error:  # detlab's models raise ValueError for input they cannot use
        raise RequestRefused(422, f"{model.name} cannot use this image: {error}") from None
    finished = time.perf_counter()
    # Boxes to a thousandth of a pixel: x + w is then within 0.002 px of the model's x2.
    entries = coco_result_entries(
        prediction["boxes"], prediction["scores"], prediction["labels"], 0, decimals=3
    )
    detections = []
    for index, (entry, name) in enumerate(zip(entries, prediction["names"])):
        detection = {**{key: entry[key] for key in ("bbox", "score", "category_id")}, "category_name": name}
        if "keypoints" in prediction:  # COCO keypoint triples (x, y, visibility 2)
            points = prediction["keypoints"][index].tolist()
            detection["keypoints"] = [round(value, 3) for x, y in points for value in (x, y, 2)]
        detections.append(detection)
    answer = {
        "model": model.name,
        "image": {"width": int(image.shape[-1]), "height": int(image.shape[-2])},
        "detections": detections,
        "timings": {
            "decode_ms": round((decoded - started) * 1000, 2),
            "model_ms": round((finished - decoded) * 1000, 2),
        },
    }
    if inside_view is not None:
        answer["inside"] = inside_view
    return answer
