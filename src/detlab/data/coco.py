"""COCO detection JSON: ``{"images": [...], "annotations": [...], "categories": [...]}`` + an image folder.

COCO category ids need not be contiguous; detlab labels are ``1..C`` in the order of the sorted
category ids, and the dataset keeps ``category_ids`` (label ``k`` -> ``category_ids[k - 1]``) so
results can be written back with the original ids.

Keypoints (COCO's person-keypoint format): an annotation's ``"keypoints": [x1, y1, v1, ...]``
becomes the record's ``keypoints`` ``Tensor[N, K, 2]`` (a point with visibility ``v = 0``, not
labelled, is NaN); the category's ``"keypoints"`` names become the data set's ``keypoint_names``.

Every field the reader uses is checked for type and range (:mod:`detlab.data.fields`): a category
needs a whole-number ``id`` and a name; an image a string or whole-number ``id``, a ``file_name``
inside the image folder and, if given, whole-number ``width``/``height``; an annotation known
``image_id`` and ``category_id``, a ``bbox`` of four finite numbers and ``iscrowd`` 0 or 1. A bad
entry is a :class:`BadInputError` naming the file and the field, skipped under ``on_bad='skip'``
(with the annotations of a skipped image); a file that is not a COCO JSON object is one error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from detlab.data import fields
from detlab.data.annotations import coco_category_ids, coco_image_ids  # noqa: F401 - re-exported
from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.images import image_size
from detlab.data.records import RawObject, build_record
from detlab.data.schema import DetectionDataset


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_bytes())
    except OSError as error:
        raise BadInputError(path, f"cannot read the file ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise BadInputError(
            path, f"not valid JSON ({error.msg} at line {error.lineno})", line=error.lineno
        ) from None
    except UnicodeDecodeError:
        raise BadInputError(path, "not a text JSON file") from None
    except RecursionError:
        raise BadInputError(path, "not a COCO annotation file (JSON nested too deeply)") from None
    except ValueError as error:  # a number of more than 4,300 digits
        raise BadInputError(path, f"not valid JSON ({str(error).split(';')[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadInputError(path, "not a COCO annotation file (expected an object with an 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise BadInputError(path, f"'{key}' must be a list, got {fields.describe(data[key])}")
    return data


def read_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    on_bad: str = "error",
    problems: ProblemLog | None = None,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read a COCO JSON file. ``image_dir`` defaults to ``images/`` beside the file if it exists,
    else the file's own folder; ``file_name`` entries are relative to it and must stay inside it
    unless ``allow_outside_root``. Every field used is checked (:mod:`detlab.data.fields`)."""
    json_path = Path(json_path)
    problems = problems or ProblemLog(on_bad)
    data = _load_json(json_path)
    if image_dir is None:
        image_dir = (
            json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
        )
    image_dir = Path(image_dir)
    categories = _categories(data.get("categories", []), json_path, problems)
    category_ids = list(categories)
    classes = [name for name, _ in categories.values()]
    images, skipped = _images(data["images"], json_path, image_dir, allow_outside_root, problems)
    objects_by_image: dict = {image_id: [] for image_id in images}
    image_ids = set(images) | skipped
    for index, annotation in enumerate(data.get("annotations", [])):
        try:
            image_id, obj = _annotation(annotation, index, image_ids, categories, json_path)
        except BadInputError as error:
            problems.bad(error, "bad annotation")
            continue
        if image_id not in skipped:  # its image was skipped already, and counted
            objects_by_image[image_id].append(obj)
    records = []
    for image_id, (image_path, width, height) in images.items():
        if not image_path.is_file():
            problems.bad(
                BadInputError(json_path, f"image {image_id}: file {image_path} is missing"), "missing image"
            )
            continue
        if width == 0 or height == 0:  # not given: read from the image
            try:
                width, height = image_size(image_path)
            except BadInputError as error:
                problems.bad(error, "bad image")
                continue
        record = build_record(
            image_id, image_path, width, height, objects_by_image[image_id], classes, json_path, problems
        )
        if record is not None:
            records.append(record)
    dataset = DetectionDataset(records, classes, name=f"coco:{json_path}")
    dataset.category_ids = category_ids
    dataset.problems = problems
    names = next((keypoint_names for _, keypoint_names in categories.values() if keypoint_names), None)
    if names:
        dataset.keypoint_names = names
    return dataset


def _categories(entries: list, path: Path, problems: ProblemLog) -> dict[int, tuple[str, list[str] | None]]:
    """``{category id: (name, keypoint names or None)}`` in id order; a bad entry is skipped under
    ``on_bad='skip'`` (its annotations then have an unknown ``category_id``)."""
    found: dict[int, tuple[str, list[str] | None]] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"categories[{index}]"
        try:
            if not isinstance(entry, dict):
                raise BadInputError(
                    path, f"{where} must be an object with 'id' and 'name', got {fields.describe(entry)}"
                )
            category_id = fields.whole_number(
                entry.get("id", fields.MISSING), path, f"{where} 'id'", 0, fields.MAX_ID
            )
            name = fields.name(entry.get("name", fields.MISSING), path, f"{where} 'name'")
            if category_id in found:
                raise BadInputError(path, f"{where}: category id {category_id} repeated")
            if name in names:
                raise BadInputError(path, f"{where}: category name {name!r} repeated")
            keypoint_names = entry.get("keypoints")
            if keypoint_names is not None:
                if not isinstance(keypoint_names, list):
                    raise BadInputError(
                        path,
                        f"{where} 'keypoints' must be a list of names, got {fields.describe(keypoint_names)}",
                    )
                keypoint_names = [
                    fields.name(v, path, f"{where} 'keypoints'[{i}]") for i, v in enumerate(keypoint_names)
                ]
        except BadInputError as error:
            problems.bad(error, "bad category")
            continue
        if name != entry["name"]:
            problems.fix(
                f"{path}: {where}: class name {entry['name']!r} stripped to {name!r}", "stripped class name"
            )
        found[category_id] = (name, keypoint_names)
        names.add(name)
    return dict(sorted(found.items()))


def _images(
    entries: list, path: Path, image_dir: Path, allow_outside_root: bool, problems: ProblemLog
) -> tuple[dict, set]:
    """``({image id: (image path, width, height)}, ids of skipped entries)``; width and height are
    0 where the file does not give them (read from the image later)."""
    images, skipped = {}, set()
    for index, entry in enumerate(entries):
        where = f"images[{index}]"
        image_id = None
        try:
            if not isinstance(entry, dict):
                raise BadInputError(
                    path, f"{where} must be an object with 'id' and 'file_name', got {fields.describe(entry)}"
                )
            image_id = fields.identifier(entry.get("id", fields.MISSING), path, f"{where} 'id'")
            where = f"{where} (id {fields.describe(image_id)})"
            if image_id in images or image_id in skipped:
                raise BadInputError(path, f"{where}: image id repeated")
            file_name = fields.path_text(entry.get("file_name", fields.MISSING), path, f"{where} 'file_name'")
            image_path = fields.inside(image_dir, file_name, path, f"{where} 'file_name'", allow_outside_root)
            # absent, null or 0: unknown, read from the image
            width, height = (
                0
                if entry.get(key) is None
                else fields.whole_number(entry[key], path, f"{where} '{key}'", 0, fields.MAX_SIDE)
                for key in ("width", "height")
            )
        except BadInputError as error:
            if image_id is not None and image_id not in images:
                skipped.add(image_id)
            problems.bad(
                error,
                fields.OUTSIDE_KIND if isinstance(error, fields.OutsideRootError) else "bad image entry",
            )
            continue
        images[image_id] = (image_path, width, height)
    return images, skipped


def _annotation(
    annotation, index: int, image_ids: set, categories: dict, path: Path
) -> tuple[int | str, RawObject]:
    """``(image id, object)`` of one entry of ``annotations``, every field it uses checked."""
    where = f"annotations[{index}]"
    if not isinstance(annotation, dict):
        raise BadInputError(path, f"{where} must be an object, got {fields.describe(annotation)}")
    where = f"{where} (id {fields.describe(annotation.get('id'))})"
    image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
    for key, value, known in (("image_id", image_id, image_ids), ("category_id", category_id, categories)):
        if isinstance(value, bool) or not isinstance(value, int | float | str) or value not in known:
            raise BadInputError(path, f"{where}: unknown {key} {fields.describe(value)}")
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise BadInputError(
            path, f"{where}: 'bbox' must be [x, y, width, height], got {fields.describe(bbox)}"
        )
    x, y, w, h = (fields.number(v, path, f"{where} 'bbox'[{i}]") for i, v in enumerate(bbox))
    iscrowd = fields.whole_number(annotation.get("iscrowd", 0), path, f"{where} 'iscrowd'", 0, 1)
    obj = RawObject(
        name=categories[category_id][0],
        box=[x, y, x + w, y + h],
        iscrowd=bool(iscrowd),
        where=where,
        keypoints=_keypoints(annotation, path, where),
    )
    return image_id, obj


def _keypoints(annotation: dict, json_path: Path, where: str) -> list[list[float]] | None:
    """COCO ``[x1, y1, v1, x2, y2, v2, ...]`` -> ``[[x, y], ...]`` (NaN where ``v == 0``)."""
    values = annotation.get("keypoints")
    if values is None:
        return None
    if not isinstance(values, list) or len(values) % 3:
        raise BadInputError(
            json_path,
            f"{where}: 'keypoints' must be a list of x, y, v triples, got {fields.describe(values)}",
        )
    points = []
    for start in range(0, len(values), 3):
        field = f"{where} 'keypoints'[{start}:{start + 3}]"
        x, y = (fields.number(v, json_path, field) for v in values[start : start + 2])
        visibility = fields.whole_number(values[start + 2], json_path, f"{field} visibility", 0, 2)
        points.append([x, y] if visibility else [math.nan, math.nan])
    return points


def to_coco_dict(dataset: DetectionDataset, image_root: Path | None = None) -> dict:
    """The COCO ground-truth dict for ``dataset``; ``file_name`` relative to ``image_root`` if given."""
    category_ids = coco_category_ids(dataset)
    images, annotations = [], []
    for coco_id, record in zip(coco_image_ids(dataset), dataset.records):
        file_name = str(record.image_path.relative_to(image_root)) if image_root else record.image_path.name
        images.append(
            {
                "id": coco_id,
                "file_name": file_name,
                "width": record.width,
                "height": record.height,
                "detlab_image_id": str(record.image_id),
            }
        )
        for index, (box, label, crowd) in enumerate(
            zip(record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist())
        ):
            width, height = box[2] - box[0], box[3] - box[1]
            annotation = {
                "id": len(annotations) + 1,
                "image_id": coco_id,
                "category_id": category_ids[label - 1],
                "bbox": [box[0], box[1], width, height],
                "area": width * height,
                "iscrowd": int(crowd),
            }
            if record.keypoints is not None:
                points = record.keypoints[index].tolist()
                annotation["keypoints"] = [
                    value for x, y in points for value in ((0.0, 0.0, 0) if x != x else (x, y, 2))
                ]  # NaN != NaN: not labelled
                annotation["num_keypoints"] = sum(1 for x, _ in points if x == x)
            annotations.append(annotation)
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, dataset.classes)]
    keypoint_names = getattr(dataset, "keypoint_names", None)
    if keypoint_names:
        for category in categories:
            category["keypoints"] = list(keypoint_names)
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(
    dataset: DetectionDataset, path: str | Path, image_dir: str | Path | None = None, copy_images: bool = True
) -> Path:
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
