"""One evaluation problem as flat arrays: the ground truth and the detections of a whole data set.

Every evaluator (COCO, VOC) works on a :class:`DetectionProblem`, built from COCO JSON files, from
a :class:`~detlab.data.schema.DetectionDataset`, or from detector outputs and target dicts.

Shape letters: G ground-truth boxes, D detections. Boxes are float64 ``(x, y, width, height)``
as in COCO files, so that IoU arithmetic matches the COCO API exactly on COCO input.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from detlab.box_arrays import as_numpy, xyxy_to_xywh
from detlab.errors import BadInputError


class EmptyResultsWarning(UserWarning):
    """A results file or a prediction list holds no detection at all: every AP is 0."""


@dataclass
class DetectionProblem:
    """Ground truth and detections of a data set.

    ``image_ids``: the data set's image ids in evaluation order (sorted, as the COCO API does);
    ``category_ids`` / ``class_names``: one entry per class, sorted by category id.
    ``gt_image`` / ``det_image``: int64 index into ``image_ids``; ``gt_category`` / ``det_category``:
    int64 index into ``category_ids``. ``gt_area`` is the area used for COCO's size ranges (the
    annotation's ``area`` field when it has one). ``gt_crowd``: COCO crowd regions; ``gt_difficult``:
    VOC difficult objects. Arrays are in file order; that order breaks ties as in the COCO API.
    ``image_paths``: ``{image id: image file}`` where the ground truth is a data set (for pictures
    of the errors; scoring never reads images).
    """

    image_ids: list
    category_ids: list[int]
    class_names: list[str]
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_boxes: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_difficult: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    source: dict = field(default_factory=dict)
    image_paths: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


def image_sort_key(image_id) -> tuple:
    """Evaluation order of image ids."""
    # ints before strings, each in natural order: the COCO API sorts integer image ids
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


def load_json(path: Path):
    """Parsed JSON of ``path``; a missing file or bad JSON is a clear error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return orjson.loads(data)  # about twice as fast as json on a 500,000-detection results file
    except orjson.JSONDecodeError:
        pass  # json says where and what in words (orjson too, less readably), and reads what it accepts
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise BadInputError(path, f"not valid JSON ({error.msg})", line=error.lineno) from None
    except UnicodeDecodeError:
        raise BadInputError(path, "not a text JSON file") from None


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_result_entry(entry, index: int, image_index: dict, category_index: dict, where: str) -> str | None:
    """The problem with one results entry, or None if it is well formed."""
    if not isinstance(entry, dict):
        return f"results[{index}] is {type(entry).__name__}, expected an object with image_id, category_id, bbox, score"
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in entry:
            return f"results[{index}] has no '{key}'"
    if entry["image_id"] not in image_index:
        return f"results[{index}]: unknown image_id {entry['image_id']!r} (not in the ground truth {where})"
    if entry["category_id"] not in category_index:
        return f"results[{index}]: unknown category_id {entry['category_id']!r} (known: {sorted(category_index)})"
    bbox = entry["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite_number(v) for v in bbox):
        return f"results[{index}]: bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"results[{index}]: negative width or height in bbox {bbox!r}"
    if not _finite_number(entry["score"]):
        return f"results[{index}]: score must be a finite number, got {entry['score']!r}"
    return None


def parse_results(
    results, path: str | Path, image_index: dict, category_index: dict, where: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a COCO results list and turn it into ``(det_image, det_category, det_boxes, det_scores)``.

    ``image_index`` / ``category_index`` map the ids allowed in the file to array indices. Raises
    :class:`BadInputError` naming ``path`` and the first offending entry; an empty list gives empty
    arrays and an :class:`EmptyResultsWarning`.
    """
    if not isinstance(results, list):
        raise BadInputError(
            path, f"a COCO results file must be a JSON list of detections, got a {type(results).__name__}"
        )
    if not results:
        warnings.warn(f"{path}: no detections; every AP and AR is 0", EmptyResultsWarning, stacklevel=2)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0)
    try:  # fast path: one pass per field; any problem falls back to the entry-by-entry check
        det_image = np.fromiter((image_index[d["image_id"]] for d in results), np.int64, len(results))
        det_category = np.fromiter(
            (category_index[d["category_id"]] for d in results), np.int64, len(results)
        )
        det_boxes = np.array([d["bbox"] for d in results], dtype=np.float64)
        det_scores = np.array([d["score"] for d in results], dtype=np.float64)
        valid = (
            det_boxes.shape == (len(results), 4)
            and np.isfinite(det_boxes).all()
            and np.isfinite(det_scores).all()
            and det_scores.ndim == 1
            and (det_boxes[:, 2:] >= 0).all()
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        for index, entry in enumerate(results):
            problem = _check_result_entry(entry, index, image_index, category_index, where)
            if problem:
                raise BadInputError(path, problem)
        raise BadInputError(path, "results could not be read as [x, y, width, height] boxes and scores")
    return det_image, det_category, det_boxes, det_scores


def problem_from_coco(ground_truth: dict, results, gt_path: str | Path = "<gt>", results_path="<results>"):
    """A :class:`DetectionProblem` from a COCO ground-truth dict and a COCO results list.

    Follows the COCO API: every image of the ground truth is evaluated; a ground-truth annotation
    without ``area`` uses ``width * height``; ``iscrowd`` marks crowd regions. Ground truth is
    trusted as it is (boxes are not repaired, so numbers match the COCO API).
    """
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("images"), list):
        raise BadInputError(
            gt_path, "not a COCO ground-truth file (expected an object with an 'images' list)"
        )
    try:
        image_ids = sorted({image["id"] for image in ground_truth["images"]}, key=image_sort_key)
        categories = sorted(ground_truth.get("categories", []), key=lambda c: c["id"])
        category_ids = [c["id"] for c in categories]
        class_names = [str(c.get("name", c["id"])) for c in categories]
    except (KeyError, TypeError) as error:
        raise BadInputError(gt_path, f"image or category entry without a usable 'id' ({error!r})") from None
    image_index = {image_id: index for index, image_id in enumerate(image_ids)}
    category_index = {category_id: index for index, category_id in enumerate(category_ids)}
    annotations = ground_truth.get("annotations", [])
    gt_image, gt_category, gt_boxes, gt_area, gt_crowd = [], [], [], [], []
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        try:
            box = [float(v) for v in annotation["bbox"]]
            image, category = image_index[annotation["image_id"]], category_index[annotation["category_id"]]
        except KeyError as error:
            raise BadInputError(gt_path, f"{where}: unknown or missing {error}") from None
        except (TypeError, ValueError):
            raise BadInputError(gt_path, f"{where}: bbox must be [x, y, width, height]") from None
        if len(box) != 4:
            raise BadInputError(gt_path, f"{where}: bbox must be [x, y, width, height], got {box}")
        gt_image.append(image)
        gt_category.append(category)
        gt_boxes.append(box)
        gt_area.append(float(annotation.get("area", box[2] * box[3])))
        gt_crowd.append(bool(annotation.get("iscrowd", 0)))
    det_image, det_category, det_boxes, det_scores = parse_results(
        results, results_path, image_index, category_index, where=str(gt_path)
    )
    return DetectionProblem(
        image_ids=image_ids,
        category_ids=category_ids,
        class_names=class_names,
        gt_image=np.asarray(gt_image, np.int64),
        gt_category=np.asarray(gt_category, np.int64),
        gt_boxes=np.asarray(gt_boxes, np.float64).reshape(-1, 4),
        gt_area=np.asarray(gt_area, np.float64),
        gt_crowd=np.asarray(gt_crowd, bool),
        gt_difficult=np.zeros(len(gt_image), bool),
        det_image=det_image,
        det_category=det_category,
        det_boxes=det_boxes.reshape(-1, 4),
        det_scores=det_scores,
        source={"ground_truth": str(gt_path), "results": str(results_path)},
    )


def problem_from_coco_files(gt_path: str | Path, results_path: str | Path) -> DetectionProblem:
    """Read a COCO ground-truth JSON and a COCO results JSON (a list of detections)."""
    gt_path, results_path = Path(gt_path), Path(results_path)
    return problem_from_coco(load_json(gt_path), load_json(results_path), gt_path, results_path)


def box_flags(value, count: int, name: str) -> np.ndarray:
    """A bool ``[count]`` flag array (``difficult``/``iscrowd``); missing or empty means all False."""
    if value is None:
        return np.zeros(count, bool)
    flags = as_numpy(value, bool).reshape(-1)
    if len(flags) == 0:
        return np.zeros(count, bool)
    if len(flags) != count:
        raise ValueError(f"'{name}' has {len(flags)} entries for {count} boxes")
    return flags


def problem_from_targets(
    predictions: list[dict], targets: list[dict], class_names: list[str], image_ids: list | None = None
) -> DetectionProblem:
    """A problem from per-image detector outputs and target dicts (detlab's contracts).

    ``predictions[i]``: ``{"boxes": Tensor[D, 4] xyxy, "scores": Tensor[D], "labels": Tensor[D]}``;
    ``targets[i]``: ``{"boxes": Tensor[G, 4] xyxy, "labels": Tensor[G], "image_id", optional
    "difficult"/"iscrowd"}``. Labels are ``1..C`` with ``C = len(class_names)``. The ground-truth area
    for COCO's size ranges is the box area.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; give one per image")
    num_classes = len(class_names)
    if image_ids is None:
        image_ids = [target.get("image_id", index) for index, target in enumerate(targets)]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image_id values repeat; each target must have a distinct image_id")
    order = sorted(range(len(image_ids)), key=lambda index: image_sort_key(image_ids[index]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    parts: dict[str, list] = {key: [] for key in ("gi", "gc", "gb", "gx", "gd", "di", "dc", "db", "ds")}
    for index, (prediction, target) in enumerate(zip(predictions, targets)):
        gt_labels = as_numpy(target["labels"], np.int64).reshape(-1)
        det_labels = as_numpy(prediction["labels"], np.int64).reshape(-1)
        for name, labels in (("target", gt_labels), ("prediction", det_labels)):
            if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
                raise ValueError(
                    f"image {image_ids[index]!r}: {name} labels must be in 1..{num_classes}, got {np.unique(labels)}"
                )
        count = len(gt_labels)
        parts["gi"].append(np.full(count, rank[index]))
        parts["gc"].append(gt_labels - 1)
        parts["gb"].append(xyxy_to_xywh(target["boxes"]))
        parts["gx"].append(box_flags(target.get("iscrowd"), count, "iscrowd"))
        parts["gd"].append(box_flags(target.get("difficult"), count, "difficult"))
        parts["di"].append(np.full(len(det_labels), rank[index]))
        parts["dc"].append(det_labels - 1)
        parts["db"].append(xyxy_to_xywh(prediction["boxes"]))
        parts["ds"].append(as_numpy(prediction["scores"], np.float64).reshape(-1))
    joined = {
        key: np.concatenate(value) if value else np.zeros((0, 4) if key in ("gb", "db") else 0)
        for key, value in parts.items()
    }
    if not (np.isfinite(joined["db"]).all() and np.isfinite(joined["ds"]).all()):
        raise ValueError("predictions contain NaN or infinite boxes or scores")
    gt_boxes = joined["gb"].reshape(-1, 4)
    return DetectionProblem(
        image_ids=[image_ids[index] for index in order],
        category_ids=list(range(1, num_classes + 1)),
        class_names=list(class_names),
        gt_image=joined["gi"].astype(np.int64),
        gt_category=joined["gc"].astype(np.int64),
        gt_boxes=gt_boxes,
        gt_area=gt_boxes[:, 2] * gt_boxes[:, 3],
        gt_crowd=joined["gx"].astype(bool),
        gt_difficult=joined["gd"].astype(bool),
        det_image=joined["di"].astype(np.int64),
        det_category=joined["dc"].astype(np.int64),
        det_boxes=joined["db"].reshape(-1, 4),
        det_scores=joined["ds"],
    )


class DetectionAccumulator:
    """Collects per-image detector outputs and targets across ``update`` calls (the evaluator contract)."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        self.predictions: list[dict] = []
        self.targets: list[dict] = []

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """``predictions[i]``: ``{"boxes" Tensor[D, 4] xyxy, "scores", "labels"}``; ``targets[i]``: target dict."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; give one per image")
        self.predictions.extend(
            {key: prediction[key] for key in ("boxes", "scores", "labels")} for prediction in predictions
        )
        self.targets.extend(targets)

    def problem(self) -> DetectionProblem:
        return problem_from_targets(self.predictions, self.targets, self.class_names)
