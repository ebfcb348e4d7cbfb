"""PASCAL VOC layout: ``Annotations/*.xml``, ``JPEGImages/*``, ``ImageSets/Main/<split>.txt``.

Reading uses ``defusedxml``, so a file with a DTD entity (billion laughs) or an external entity is
refused, never expanded. Coordinates are kept as written (VOC's 1-based pixel numbers are not
shifted), which is what the VOC devkit, the peers in ``shared/anchors`` and most tools do.
A ``classes.txt`` beside ``Annotations/`` (one name a line) fixes the class order; without it the
classes are the sorted names found.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as StdET
from pathlib import Path

from detlab.data.errors import ProblemLog
from detlab.data.records import build_record
from detlab.data.schema import DetectionDataset
from detlab.data.voc_files import (  # noqa: F401 - the parsing helpers are re-exported
    dataset_name,
    find_image,
    parse_annotation,
    read_class_file,
    read_split_ids,
    scan_voc,
)


def read_voc(
    root: str | Path,
    split: str | None = None,
    classes: list[str] | None = None,
    on_bad: str = "error",
    verify_images: bool = False,
    problems: ProblemLog | None = None,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read a VOC directory into a :class:`DetectionDataset` (arguments as :func:`scan_voc`)."""
    parsed, classes, problems = scan_voc(
        root, split, classes, verify_images, problems or ProblemLog(on_bad), allow_outside_root
    )
    records = []
    for image_id, image_path, (width, height), objects, xml_path in parsed:
        record = build_record(image_id, image_path, width, height, objects, classes, xml_path, problems)
        if record is not None:
            records.append(record)
    dataset = DetectionDataset(records, classes, name=dataset_name(root, split))
    dataset.problems = problems
    return dataset


def write_voc(
    dataset: DetectionDataset, out_dir: str | Path, split: str = "all", copy_images: bool = True
) -> Path:
    """Write ``dataset`` as a VOC directory (images copied unless ``copy_images=False``, then linked).

    Appends the image ids to ``ImageSets/Main/<split>.txt`` and writes ``classes.txt``.
    """
    out_dir = Path(out_dir)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.classes))
    ids = []
    for record, image_id in zip(dataset.records, export_stems(dataset)):
        image_name = f"{image_id}{record.image_path.suffix.lower() or '.jpg'}"
        destination = out_dir / "JPEGImages" / image_name
        transfer_image(record.image_path, destination, copy_images)
        annotation = StdET.Element("annotation")
        StdET.SubElement(annotation, "filename").text = image_name
        size = StdET.SubElement(annotation, "size")
        for key, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            StdET.SubElement(size, key).text = str(value)
        for box, label, difficult in zip(
            record.boxes.tolist(), record.labels.tolist(), record.difficult.tolist()
        ):
            obj = StdET.SubElement(annotation, "object")
            StdET.SubElement(obj, "name").text = dataset.classes[label - 1]
            StdET.SubElement(obj, "difficult").text = str(int(difficult))
            bndbox = StdET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                StdET.SubElement(bndbox, key).text = f"{value:.2f}".rstrip("0").rstrip(".")
        StdET.indent(annotation)
        StdET.ElementTree(annotation).write(out_dir / "Annotations" / f"{image_id}.xml", encoding="utf-8")
        ids.append(image_id)
    with open(out_dir / "ImageSets" / "Main" / f"{split}.txt", "a") as handle:
        handle.writelines(f"{image_id}\n" for image_id in ids)
    return out_dir


def export_stems(dataset: DetectionDataset) -> list[str]:
    """File stems for writing ``dataset``'s images and labels: the image files' own stems (so ids
    survive a trip through COCO, whose ids are numbers). Two images with one stem are an error."""
    stems = [record.image_path.stem for record in dataset.records]
    if len(set(stems)) != len(stems):
        duplicates = sorted({s for s in stems if stems.count(s) > 1})[:5]
        raise ValueError(
            f"{dataset.name}: several images share a file name ({duplicates}); rename them first"
        )
    return stems


def transfer_image(source: Path, destination: Path, copy: bool = True) -> None:
    """Copy (or symlink) an image file into a converted data set, unless it is already there."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists() or destination.is_symlink():
        if destination.resolve() == source.resolve():
            return
        destination.unlink()
    if copy:
        shutil.copy2(source, destination)
    else:
        destination.symlink_to(source.resolve())
