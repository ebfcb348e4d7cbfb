"""Reading a PASCAL VOC folder's annotations without torch: split files, class file, XML.

:func:`detlab.data.voc.read_voc` builds training records from :func:`scan_voc`;
:func:`read_voc_annotations` gives the same checked annotations as numpy arrays, which is all that
scoring a results file against a VOC folder needs (``detlab eval --gt DIR --pred FILE.json``),
so that path never loads torch.

Reading uses ``defusedxml``, so a file with a DTD entity (billion laughs) or an external entity is
refused, never expanded.
"""

from __future__ import annotations

import xml.etree.ElementTree as StdET
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET

from detlab.data.annotations import AnnotationSet, RawObject, annotated_image, check_objects
from detlab.data.errors import BadInputError, ProblemLog
from detlab.image_files import image_size, open_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


def read_split_ids(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise FileNotFoundError(f"{split_file}: split {split!r} not found (available: {available or 'none'})")
    ids = []
    for line in split_file.read_text().splitlines():
        fields = line.split()
        # Per-class split files ("id  1") carry a flag; only the id matters here.
        if fields:
            ids.append(fields[0])
    return ids


def read_class_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise BadInputError(path, "duplicate class names")
    return names


def _text(element, tag: str, path: Path) -> str:
    node = element.find(tag)
    if node is None or node.text is None or not node.text.strip():
        raise BadInputError(path, f"missing <{tag}>")
    return node.text.strip()


def parse_annotation(path: Path) -> tuple[str | None, tuple[int, int] | None, list[RawObject]]:
    """One VOC XML file -> (image file name or None, (width, height) or None, objects)."""
    try:
        tree = SafeET.parse(path)
    except defusedxml.DefusedXmlException as error:
        raise BadInputError(path, f"refused unsafe XML ({type(error).__name__}: entities are not expanded)") from None
    except StdET.ParseError as error:
        line = error.position[0] if getattr(error, "position", None) else None
        raise BadInputError(path, f"malformed XML ({error})", line=line) from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise BadInputError(path, f"not a VOC annotation (root element <{root.tag}>)")
    file_name = root.findtext("filename")
    file_name = file_name.strip() if file_name and file_name.strip() else None
    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            width, height = int(float(_text(size_node, "width", path))), int(float(_text(size_node, "height", path)))
            if width > 0 and height > 0:
                size = (width, height)
        except (BadInputError, ValueError):
            size = None  # re-read from the image
    objects = []
    for index, node in enumerate(root.iter("object")):
        name = node.findtext("name")  # kept raw: build_record strips it and reports the repair
        if name is None or not name.strip():
            raise BadInputError(path, f"object {index} has no <name>")
        box_node = node.find("bndbox")
        if box_node is None:
            raise BadInputError(path, f"object {index} ({name!r}) has no <bndbox>")
        try:
            box = [float(_text(box_node, key, path)) for key in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as error:
            raise BadInputError(path, f"object {index} ({name!r}): non-numeric coordinate ({error})") from None
        difficult_text = node.findtext("difficult")
        difficult = difficult_text is not None and difficult_text.strip() not in ("", "0")
        objects.append(RawObject(name=name, box=box, difficult=difficult, where=f"object {index}"))
    return file_name, size, objects


def find_image(root: Path, image_id: str, file_name: str | None) -> Path:
    image_dir = root / "JPEGImages"
    if file_name:
        candidate = image_dir / Path(file_name).name
        if candidate.is_file():
            return candidate
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / (Path(file_name).name if file_name else f"{image_id}.jpg")


def scan_voc(
    root: str | Path,
    split: str | None = None,
    classes: list[str] | None = None,
    verify_images: bool = False,
    problems: ProblemLog | None = None,
) -> tuple[list[tuple], list[str], ProblemLog]:
    """The annotation files of a VOC folder at ``split``, parsed: ``(entries, classes, problems)``
    with one ``(image_id, image_path, (width, height), objects, xml_path)`` per readable image.

    ``split``: a file in ``ImageSets/Main`` (``None``: every XML in ``Annotations``).
    ``classes``: fixed class list (names outside it are bad input); default ``classes.txt`` or the
    sorted names found. ``verify_images``: fully decode every image now, so corrupt files are
    found (and, with ``on_bad='skip'``, skipped) before training starts.
    """
    root = Path(root)
    annotation_dir = root / "Annotations"
    if not annotation_dir.is_dir():
        raise FileNotFoundError(f"{root}: not a VOC directory (no Annotations/ folder)")
    problems = problems or ProblemLog("error")
    if split is None:
        ids = sorted(p.stem for p in annotation_dir.glob("*.xml"))
    else:
        ids = read_split_ids(root, split)
    parsed = []
    for image_id in ids:
        xml_path = annotation_dir / f"{image_id}.xml"
        try:
            if not xml_path.is_file():
                raise BadInputError(xml_path, "annotation file listed in the split is missing")
            file_name, size, objects = parse_annotation(xml_path)
            image_path = find_image(root, image_id, file_name)
            if not image_path.is_file():
                raise BadInputError(xml_path, f"its image {image_path} is missing")
            if verify_images:
                size = open_rgb(image_path).size
            elif size is None:
                size = image_size(image_path)
        except BadInputError as error:
            problems.bad(error, "bad annotation or image")
            continue
        parsed.append((image_id, image_path, size, objects, xml_path))
    if classes is None:
        classes = read_class_file(root / "classes.txt")
    if classes is None:
        classes = sorted({obj.name.strip() for *_, objects, _ in parsed for obj in objects})
    return parsed, classes, problems


def dataset_name(root: str | Path, split: str | None) -> str:
    return f"voc:{Path(root)}" + (f" [{split}]" if split else "")


def read_voc_annotations(
    root: str | Path, split: str | None = None, classes: list[str] | None = None, on_bad: str = "error"
) -> AnnotationSet:
    """The checked annotations of a VOC folder (as :func:`detlab.data.voc.read_voc` checks them)
    as numpy arrays, without torch; see :func:`scan_voc` for the arguments."""
    parsed, classes, problems = scan_voc(root, split, classes, problems=ProblemLog(on_bad))
    records = []
    for image_id, image_path, (width, height), objects, xml_path in parsed:
        checked = check_objects(objects, width, height, classes, xml_path, problems)
        if checked is not None:
            records.append(annotated_image(image_id, image_path, width, height, checked))
    return AnnotationSet(records, classes, name=dataset_name(root, split), problems=problems)
