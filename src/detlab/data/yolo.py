"""YOLO layout: one ``.txt`` per image, a line ``class cx cy w h`` per object (class from 0,
coordinates normalised to [0, 1] by the image width/height), and a names file.

Accepted folder layouts: ``images/<split>/`` + ``labels/<split>/`` (as Ultralytics writes), or
``images/`` + ``labels/`` without splits. Names come from ``classes.txt``, ``obj.names``,
``names.txt`` (one a line) or ``data.yaml`` (``names`` as a list or an ``{index: name}`` map).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.images import image_size
from detlab.data.records import RawObject, build_record
from detlab.data.schema import DetectionDataset
from detlab.data.voc import IMAGE_SUFFIXES, export_stems, transfer_image

NAME_FILES = ("classes.txt", "obj.names", "names.txt")


def read_yolo_names(root: Path) -> list[str]:
    for file_name in NAME_FILES:
        path = root / file_name
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        data = yaml.safe_load(data_yaml.read_text()) or {}
        names = data.get("names")
        if isinstance(names, dict):
            return [str(names[k]).strip() for k in sorted(names)]
        if isinstance(names, list):
            return [str(n).strip() for n in names]
        raise BadInputError(data_yaml, "no 'names' list or map")
    raise FileNotFoundError(f"{root}: no class names file ({', '.join(NAME_FILES)} or data.yaml)")


def _folders(root: Path, split: str | None) -> tuple[Path, Path]:
    if split is not None and (root / "images" / split).is_dir():
        return root / "images" / split, root / "labels" / split
    if split is not None:
        available = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        if available:
            raise FileNotFoundError(f"{root}: split {split!r} not found (available: {available})")
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{root}: not a YOLO directory (no images/ folder)")
    return root / "images", root / "labels"


def parse_label_file(path: Path, num_classes: int, width: int, height: int, classes: list[str]) -> list[RawObject]:
    objects = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise BadInputError(path, f"expected 5 fields 'class cx cy w h', got {len(fields)}", line=line_number)
        try:
            class_index = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise BadInputError(path, f"non-numeric field in {line.strip()!r}", line=line_number) from None
        if not 0 <= class_index < num_classes:
            raise BadInputError(path, f"class index {class_index} outside 0..{num_classes - 1}", line=line_number)
        values = (cx, cy, w, h)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise BadInputError(path, f"coordinates {values} outside [0, 1] (YOLO labels are normalised)", line=line_number)
        # Rounded to 1/1000 px so that 6-decimal normalised text does not fake boxes leaving the image.
        box = [round(v, 3) for v in ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)]
        objects.append(RawObject(name=classes[class_index], box=box, where=f"line {line_number}"))
    return objects


def read_yolo(
    root: str | Path,
    split: str | None = None,
    on_bad: str = "error",
    problems: ProblemLog | None = None,
) -> DetectionDataset:
    """Read a YOLO folder. An image without a label file is a background-only image."""
    root = Path(root)
    problems = problems or ProblemLog(on_bad)
    classes = read_yolo_names(root)
    image_dir, label_dir = _folders(root, split)
    records = []
    for image_path in sorted(p for p in image_dir.iterdir() if p.suffix in IMAGE_SUFFIXES):
        label_path = label_dir / f"{image_path.stem}.txt"
        try:
            width, height = image_size(image_path)
            objects = parse_label_file(label_path, len(classes), width, height, classes) if label_path.is_file() else []
        except BadInputError as error:
            problems.bad(error, "bad label file or image")
            continue
        record = build_record(image_path.stem, image_path, width, height, objects, classes, label_path, problems)
        if record is not None:
            records.append(record)
    dataset = DetectionDataset(records, classes, name=f"yolo:{root}" + (f" [{split}]" if split else ""))
    dataset.problems = problems
    return dataset


def write_yolo(dataset: DetectionDataset, out_dir: str | Path, split: str | None = None, copy_images: bool = True) -> Path:
    """Write ``dataset`` as a YOLO folder (``images[/split]``, ``labels[/split]``, ``classes.txt``)."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split if split else out_dir / "images"
    label_dir = out_dir / "labels" / split if split else out_dir / "labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.classes))
    for record, stem in zip(dataset.records, export_stems(dataset)):
        transfer_image(record.image_path, image_dir / f"{stem}{record.image_path.suffix.lower()}", copy_images)
        lines = []
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
            cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
            w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
            lines.append(f"{label - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (label_dir / f"{stem}.txt").write_text("".join(lines))
    return out_dir
