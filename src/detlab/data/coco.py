"""COCO detection JSON: ``{"images": [...], "annotations": [...], "categories": [...]}`` + an image folder.

COCO category ids need not be contiguous; detlab labels are ``1..C`` in the order of the sorted
category ids, and the dataset keeps ``category_ids`` (label ``k`` -> ``category_ids[k - 1]``) so
results can be written back with the original ids.

Keypoints (COCO's person-keypoint format): an annotation's ``"keypoints": [x1, y1, v1, ...]``
becomes the record's ``keypoints`` ``Tensor[N, K, 2]`` (a point with visibility ``v = 0``, not
labelled, is NaN); the category's ``"keypoints"`` names become the data set's ``keypoint_names``.
"""

from __future__ import annotations

import json
from pathlib import Path

from detlab.data.annotations import coco_category_ids, coco_image_ids  # noqa: F401 - re-exported
from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.images import image_size
from detlab.data.records import RawObject, build_record
from detlab.data.schema import DetectionDataset


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise BadInputError(path, f"not valid JSON ({error.msg} at line {error.lineno})", line=error.lineno) from None
    except UnicodeDecodeError:
        raise BadInputError(path, "not a text JSON file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadInputError(path, "not a COCO annotation file (expected an object with an 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise BadInputError(path, f"'{key}' must be a list")
    return data


def read_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    on_bad: str = "error",
    problems: ProblemLog | None = None,
) -> DetectionDataset:
    """Read a COCO JSON file. ``image_dir`` defaults to ``images/`` beside the file if it exists,
    else the file's own folder; ``file_name`` entries are relative to it."""
    json_path = Path(json_path)
    problems = problems or ProblemLog(on_bad)
    data = _load_json(json_path)
    if image_dir is None:
        image_dir = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    image_dir = Path(image_dir)
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    classes = [str(c["name"]).strip() for c in categories]
    name_of = {int(c["id"]): str(c["name"]) for c in categories}
    images = {}
    for index, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            problems.bad(BadInputError(json_path, f"images[{index}] lacks 'id' or 'file_name'"), "bad image entry")
            continue
        images[image["id"]] = image
    objects_by_image: dict = {image_id: [] for image_id in images}
    for index, annotation in enumerate(data.get("annotations", [])):
        where = f"annotations[{index}] (id {annotation.get('id')})"
        try:
            if annotation.get("image_id") not in images:
                raise BadInputError(json_path, f"{where}: unknown image_id {annotation.get('image_id')!r}")
            if annotation.get("category_id") not in name_of:
                raise BadInputError(json_path, f"{where}: unknown category_id {annotation.get('category_id')!r}")
            bbox = annotation.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise BadInputError(json_path, f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            keypoints = _keypoints(annotation, json_path, where)
        except BadInputError as error:
            problems.bad(error, "bad annotation")
            continue
        objects_by_image[annotation["image_id"]].append(
            RawObject(
                name=name_of[annotation["category_id"]],
                box=[x, y, x + w, y + h],
                iscrowd=bool(annotation.get("iscrowd", 0)),
                where=where,
                keypoints=keypoints,
            )
        )
    records = []
    for image_id, image in images.items():
        image_path = image_dir / image["file_name"]
        if not image_path.is_file():
            problems.bad(BadInputError(json_path, f"image {image_id}: file {image_path} is missing"), "missing image")
            continue
        width, height = int(image.get("width", 0)), int(image.get("height", 0))
        if width <= 0 or height <= 0:
            try:
                width, height = image_size(image_path)
            except BadInputError as error:
                problems.bad(error, "bad image")
                continue
        record = build_record(image_id, image_path, width, height, objects_by_image[image_id], classes, json_path, problems)
        if record is not None:
            records.append(record)
    dataset = DetectionDataset(records, classes, name=f"coco:{json_path}")
    dataset.category_ids = category_ids
    dataset.problems = problems
    names = next((c["keypoints"] for c in categories if c.get("keypoints")), None)
    if names:
        dataset.keypoint_names = [str(name) for name in names]
    return dataset


def _keypoints(annotation: dict, json_path: Path, where: str) -> list[list[float]] | None:
    """COCO ``[x1, y1, v1, x2, y2, v2, ...]`` -> ``[[x, y], ...]`` (NaN where ``v == 0``)."""
    values = annotation.get("keypoints")
    if values is None:
        return None
    if not isinstance(values, list) or len(values) % 3:
        raise BadInputError(json_path, f"{where}: 'keypoints' must be a list of x, y, v triples")
    triples = [values[index : index + 3] for index in range(0, len(values), 3)]
    return [[float(x), float(y)] if v else [float("nan")] * 2 for x, y, v in triples]


def to_coco_dict(dataset: DetectionDataset, image_root: Path | None = None) -> dict:
    """The COCO ground-truth dict for ``dataset``; ``file_name`` relative to ``image_root`` if given."""
    category_ids = coco_category_ids(dataset)
    images, annotations = [], []
    for coco_id, record in zip(coco_image_ids(dataset), dataset.records):
        file_name = str(record.image_path.relative_to(image_root)) if image_root else record.image_path.name
        images.append({"id": coco_id, "file_name": file_name, "width": record.width, "height": record.height,
                       "detlab_image_id": str(record.image_id)})
        for index, (box, label, crowd) in enumerate(
            zip(record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist())
        ):
            width, height = box[2] - box[0], box[3] - box[1]
            annotation = {"id": len(annotations) + 1, "image_id": coco_id, "category_id": category_ids[label - 1],
                          "bbox": [box[0], box[1], width, height], "area": width * height, "iscrowd": int(crowd)}
            if record.keypoints is not None:
                points = record.keypoints[index].tolist()
                annotation["keypoints"] = [value for x, y in points for value in
                                           ((0.0, 0.0, 0) if x != x else (x, y, 2))]  # NaN != NaN: not labelled
                annotation["num_keypoints"] = sum(1 for x, _ in points if x == x)
            annotations.append(annotation)
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, dataset.classes)]
    keypoint_names = getattr(dataset, "keypoint_names", None)
    if keypoint_names:
        for category in categories:
            category["keypoints"] = list(keypoint_names)
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(dataset: DetectionDataset, path: str | Path, image_dir: str | Path | None = None, copy_images: bool = True) -> Path:
    """Write COCO ground truth JSON. With ``image_dir`` the images are copied (or linked) there and
    ``file_name`` is relative to it; otherwise ``file_name`` is the image's absolute path's name and
    the images stay where they are (pass ``image_dir`` to :func:`read_coco` to read them back)."""
    from detlab.data.voc import transfer_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_dir is not None:
        image_dir = Path(image_dir)
        for record in dataset.records:
            transfer_image(record.image_path, image_dir / record.image_path.name, copy_images)
    data = to_coco_dict(dataset)
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path
