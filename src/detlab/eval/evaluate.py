"""``evaluate_detections``: the one entry point the CLI and the training engine share.

Ground truth may be a :class:`DetectionDataset`, a COCO ground-truth JSON file, or a data set path
(``voc:DIR``, a VOC folder, ``yolo:DIR``, ...). Predictions may be a COCO results JSON file, a
COCO results list, or per-image detector outputs aligned with the data set's records.

Image ids in a results file, for data set ground truth: a string is a record's own id (for VOC,
the file stem, e.g. ``"BloodImage_00007"``); an integer is the id :func:`detlab.data.write_coco`
gives that record (1..N in record order, i.e. the order of the split file; or the record's own
id when all ids are integers).
"""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np

from detlab.box_arrays import as_numpy, xyxy_to_xywh
from detlab.eval.coco import CocoResult, evaluate_coco
from detlab.eval.problem import (
    DetectionProblem,
    box_flags,
    image_sort_key,
    load_json,
    parse_results,
    problem_from_coco,
    problem_from_targets,
)
from detlab.eval.report import build_report
from detlab.eval.results import coco_result_entries
from detlab.eval.voc import PROTOCOLS as VOC_PROTOCOLS
from detlab.eval.voc import VocResult, evaluate_voc

if typing.TYPE_CHECKING:  # the data layer (and torch) load only when a data set is the ground truth
    from detlab.data.schema import DetectionDataset

PROTOCOLS = ("coco", *VOC_PROTOCOLS)


def problem_from_dataset(
    dataset: DetectionDataset, results, results_path: str | Path = "<results>"
) -> DetectionProblem:
    """A problem from a data set's records and a COCO results list (ids as in the module doc)."""
    from detlab.data.annotations import coco_category_ids, coco_image_ids

    records = dataset.records
    order = sorted(range(len(records)), key=lambda index: image_sort_key(records[index].image_id))
    rank = np.empty(len(records), np.int64)
    rank[order] = np.arange(len(records))
    image_index = {record.image_id: int(rank[index]) for index, record in enumerate(records)}
    for index, coco_id in enumerate(coco_image_ids(dataset)):
        image_index.setdefault(coco_id, int(rank[index]))
    category_ids = coco_category_ids(dataset)
    category_index = {category_id: index for index, category_id in enumerate(category_ids)}
    det_image, det_category, det_boxes, det_scores = parse_results(
        results, results_path, image_index, category_index, where=dataset.name or "data set"
    )
    gt_boxes = [xyxy_to_xywh(record.boxes) for record in records]
    counts = [len(boxes) for boxes in gt_boxes]
    boxes = np.concatenate(gt_boxes) if gt_boxes else np.zeros((0, 4))

    def flags(name: str) -> np.ndarray:
        parts = [box_flags(getattr(record, name), len(record.boxes), name) for record in records]
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    labels = [as_numpy(record.labels, np.int64) - 1 for record in records]
    return DetectionProblem(
        image_ids=[records[index].image_id for index in order],
        category_ids=category_ids,
        class_names=list(dataset.classes),
        gt_image=np.repeat(rank, counts),
        gt_category=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        gt_boxes=boxes,
        gt_area=boxes[:, 2] * boxes[:, 3],
        gt_crowd=flags("iscrowd"),
        gt_difficult=flags("difficult"),
        det_image=det_image,
        det_category=det_category,
        det_boxes=det_boxes,
        det_scores=det_scores,
        source={"ground_truth": dataset.name, "results": str(results_path)},
        image_paths=dataset_image_paths(dataset),
    )


def dataset_image_paths(dataset: DetectionDataset) -> dict:
    """``{image id: image file}`` of a data set's records."""
    return {record.image_id: record.image_path for record in dataset.records}


def load_ground_truth(gt: str | Path | DetectionDataset, split: str | None = None):
    """A data set, or the raw COCO dict for a ``.json`` file (kept raw so numbers match the COCO API).

    A VOC folder is read as annotations only (:func:`detlab.data.voc_files.read_voc_annotations`),
    like a COCO file without torch; YOLO folders and the synthetic sets go through the data layer.
    """
    if not isinstance(gt, (str, Path)):
        return gt  # a DetectionDataset
    path = str(gt)
    if path.endswith(".json") and not path.startswith(("voc:", "yolo:")):
        file_path = Path(path.removeprefix("coco:"))
        return {"path": file_path, "data": load_json(file_path)}
    if path.startswith("voc:") or (":" not in path and (Path(path) / "Annotations").is_dir()):
        from detlab.data.voc_files import read_voc_annotations

        return read_voc_annotations(path.removeprefix("voc:"), split)
    from detlab.data.loading import load_dataset

    return load_dataset(path, split=split)


def evaluate_detections(
    ground_truth: str | Path | DetectionDataset,
    predictions: str | Path | list,
    protocol: str = "coco",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    split: str | None = None,
) -> tuple[dict, CocoResult | VocResult]:
    """Evaluate detections and return ``(report dict, result object)``.

    Args:
        ground_truth: a :class:`DetectionDataset`, a COCO ground-truth ``.json`` path, or a data
            set spec/path (``voc:DIR``, a VOC folder, ``yolo:DIR``) read at ``split``.
        predictions: a COCO results ``.json`` path, a COCO results list (``[{"image_id",
            "category_id", "bbox": [x, y, w, h], "score"}]``), or, with a data set, per-image
            detector outputs ``[{"boxes" xyxy, "scores", "labels"}]`` in record order.
        protocol: ``coco`` (12 numbers), ``voc07`` (11-point AP) or ``voc`` (all-point AP).
        iou_threshold: the VOC matching threshold (ignored by ``coco``).
        max_detections: COCO's per-image limit (ignored by ``voc``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    truth = load_ground_truth(ground_truth, split)
    results_path = "<predictions>"
    if isinstance(predictions, (str, Path)):
        results_path = Path(predictions)
        predictions = load_json(results_path)
    detector_outputs = (
        isinstance(predictions, list)
        and predictions
        and isinstance(predictions[0], dict)
        and ("boxes" in predictions[0] and "bbox" not in predictions[0])
    )
    if isinstance(truth, dict):
        if detector_outputs:
            raise ValueError(
                "per-image detector outputs need a data set as ground truth, not a COCO json file"
            )
        problem = problem_from_coco(truth["data"], predictions, truth["path"], results_path)
    elif detector_outputs:
        if len(predictions) != len(truth):
            raise ValueError(
                f"{len(predictions)} detector outputs for {len(truth)} images; give one per record"
            )
        problem = problem_from_targets(
            predictions, [record.target() for record in truth.records], truth.classes
        )
        from detlab.data.annotations import coco_category_ids

        problem.category_ids = coco_category_ids(truth)
        problem.source = {"ground_truth": truth.name, "results": "detector outputs"}
        problem.image_paths = dataset_image_paths(truth)
    else:
        problem = problem_from_dataset(truth, predictions, results_path)
    settings = {"protocol": protocol}
    if protocol == "coco":
        result = evaluate_coco(problem, max_detections=max_detections)
        settings["max_detections"] = max_detections
    else:
        result = evaluate_voc(problem, iou_threshold, use_11_point=protocol == "voc07")
        settings["iou_threshold"] = iou_threshold
    return build_report(result, problem, settings), result


def to_coco_results(
    predictions: list[dict], dataset: DetectionDataset, use_record_ids: bool = True
) -> list[dict]:
    """Detector outputs (one ``{"boxes" xyxy, "scores", "labels"}`` per record, in record order) as
    a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    ``use_record_ids``: write the records' own ids (VOC stems); otherwise the integer ids of
    :func:`detlab.data.write_coco`, so the file also works with a COCO ground-truth file it wrote.
    """
    from detlab.data.annotations import coco_category_ids, coco_image_ids

    if len(predictions) != len(dataset.records):
        raise ValueError(
            f"{len(predictions)} predictions for {len(dataset.records)} records; give one per record"
        )
    image_ids = [record.image_id for record in dataset.records] if use_record_ids else coco_image_ids(dataset)
    category_ids = coco_category_ids(dataset)
    results = []
    for image_id, prediction in zip(image_ids, predictions):
        results.extend(
            coco_result_entries(
                prediction["boxes"], prediction["scores"], prediction["labels"], image_id, category_ids
            )
        )
    return results
