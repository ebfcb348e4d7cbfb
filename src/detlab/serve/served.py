"""The models a server holds, and what one detection request computes (no HTTP here).

A model is known to clients by its name, the name of its run folder (``runs/shapes/best`` ->
``shapes``; ``-2``, ``-3``... when two runs share a name), and chosen by that name only: no path
a client sends is ever opened, and none of the server's is shown (``/api/models`` names a
checkpoint by its run folder and file, ``shapes/best.pt``).

What a model gives is cleaned before it becomes JSON: a detection with a coordinate, score or
keypoint that is NaN or infinite is dropped (an untrained or broken model can produce them, and
JSON has no such numbers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch

from detlab.engine.predict import Predictor
from detlab.models.contract import PassCancelled, stop_at
from detlab.serve.inside import look_inside
from detlab.serve.limits import Limits, RequestRefused
from detlab.serve.upload import ImageHeader, decode_upload
from detlab.tiles import Tiling

LOG = logging.getLogger("detlab.serve")


@dataclasses.dataclass
class ServedModel:
    name: str
    method: str  # the name in detlab.models.MODELS, or the model's class name
    checkpoint: str  # the file it was loaded from ("" for a Predictor handed in); never shown whole
    predictor: Predictor
    max_pixels: int = 0  # the most pixels an image may have (the memory plan sets it; 0: no own limit)

    def describe(self) -> dict:
        """What ``GET /api/models`` says about it (the checkpoint as ``RUN/FILE``, no absolute path)."""
        shown = f"{Path(self.checkpoint).parent.name}/{Path(self.checkpoint).name}" if self.checkpoint else ""
        return {
            "name": self.name,
            "method": self.method,
            "classes": list(self.predictor.classes),
            "checkpoint": shown,
            "max_pixels": self.max_pixels,
        }

    def check_pixels(self, header: ImageHeader) -> None:
        """413 for an image with more pixels than this model's share of the memory budget fits."""
        pixels = header.width * header.height
        if self.max_pixels and pixels > self.max_pixels:
            raise RequestRefused(
                413,
                f"the image is {header.width} x {header.height} = {pixels} pixels; {self.name} ({self.method}) "
                f"takes at most {self.max_pixels} pixels within the server's memory budget: send a smaller image",
            )


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
    deadline: float | None = None,
    tiling: Tiling | None = None,
) -> dict:
    """Decode an uploaded image and run ``model`` on it (blocking: the app runs it in a worker
    thread), stopping at a stage mark once ``time.monotonic()`` passes ``deadline``. Returns the
    ``POST /api/detect`` answer without ``"timings"["queue_ms"]``::

        {"model", "image": {"width", "height"}, "detections": [{"bbox": [x, y, w, h], "score",
         "category_id", "category_name"[, "keypoints": [x1, y1, v1, ...]]}], "timings": {"decode_ms",
         "model_ms"}, "inside": {"stages", "views"} (with ``inside`` only)}

    Detections are COCO results (best first, ``score >= score_threshold``, every number finite)
    with class names; category ids are the labels (1..C). ``tiling``: tiled inference (not with
    ``inside``, whose view is one pass of the model: 400). :class:`RequestRefused`: 504 past the
    deadline (before starting, or at a stage mark), 422 when the model fails on the image."""
    if inside and tiling is not None:
        raise RequestRefused(
            400, "inside and tile cannot be combined: the look-inside view shows one pass of the model"
        )
    refuse_if_late(deadline, limits)  # never start work nobody waits for
    started = time.perf_counter()
    image = decode_upload(data, limits)
    decoded = time.perf_counter()
    refuse_if_late(deadline, limits)  # decoding a large image took the time left
    try:
        with stop_at(deadline):
            prediction, inside_view = run_model(model.predictor, image, score_threshold, inside, tiling)
            detections = detections_json(prediction)
    except PassCancelled:
        raise RequestRefused(
            504, f"the request took longer than the time limit of {limits.time_limit_s:g} s"
        ) from None
    except ValueError as error:  # detlab's models raise ValueError for input they cannot use
        raise RequestRefused(422, f"{model.name} cannot use this image: {error}") from None
    except MemoryError:
        raise RequestRefused(
            503, f"{model.name} ran out of memory on this image; try a smaller one"
        ) from None
    except Exception as error:  # noqa: BLE001 - a model failing on one image must not fail the server
        LOG.exception("%s failed on a %s image", model.name, "x".join(map(str, image.shape)))
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise RequestRefused(
            422, f"{model.name} failed on this image ({type(error).__name__}: {message})"
        ) from None
    finished = time.perf_counter()
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


def refuse_if_late(deadline: float | None, limits: Limits) -> None:
    """504 once ``deadline`` has passed: work nobody waits for is never started."""
    if deadline is not None and time.monotonic() >= deadline:
        raise RequestRefused(
            504, f"the request ran out of time (limit {limits.time_limit_s:g} s) before it started"
        )


def run_model(
    predictor: Predictor, image: torch.Tensor, score_threshold: float, inside: bool, tiling: Tiling | None
):
    """``(the predictor's selection for image, on tiles with ``tiling``; the look-inside JSON or None)``."""
    if inside:
        output, inside_view = look_inside(predictor, image)
        return predictor.select(output, score_threshold), inside_view
    return predictor.predict(image, score_threshold, tiling=tiling), None


def detections_json(prediction: dict) -> list[dict]:
    """A :meth:`Predictor.select` result as COCO results with class names, leaving out every
    detection that holds a NaN or infinite number."""
    from detlab.eval.results import coco_result_entries

    # Boxes to a thousandth of a pixel: x + w is then within 0.002 px of the model's x2.
    entries = coco_result_entries(
        prediction["boxes"], prediction["scores"], prediction["labels"], 0, decimals=3
    )
    detections = []
    for index, (entry, name) in enumerate(zip(entries, prediction["names"])):
        detection = {**{key: entry[key] for key in ("bbox", "score", "category_id")}, "category_name": name}
        numbers = [*entry["bbox"], entry["score"]]
        if "keypoints" in prediction:  # COCO keypoint triples (x, y, visibility 2)
            points = prediction["keypoints"][index].tolist()
            detection["keypoints"] = [round(value, 3) for x, y in points for value in (x, y, 2)]
            numbers += detection["keypoints"]
        if all(math.isfinite(number) for number in numbers):
            detections.append(detection)
    return detections
