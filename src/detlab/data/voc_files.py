"""Reading a PASCAL VOC folder's annotations without torch: split files, class file, XML.

:func:`detlab.data.voc.read_voc` builds training records from :func:`scan_voc`;
:func:`read_voc_annotations` gives the same checked annotations as numpy arrays, which is all that
scoring a results file against a VOC folder needs (``detlab eval --gt DIR --pred FILE.json``),
so that path never loads torch.

Reading uses ``defusedxml``, so a file with a DTD entity (billion laughs) or an external entity is
refused, never expanded. The values used are checked (:mod:`detlab.data.fields`): ``<size>`` whole
numbers (absent, empty or 0: read from the image), ``<difficult>`` 0 or 1, box corners numbers, and
split ids must name files inside ``Annotations/`` and ``JPEGImages/`` (no ``..`` out, no absolute
path) unless ``allow_outside_root``.
"""

from __future__ import annotations

import xml.etree.ElementTree as StdET
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET

from detlab.data import fields
from detlab.data.annotations import AnnotationSet, RawObject, annotated_image, check_objects
from detlab.data.errors import BadInputError, ProblemLog
from detlab.image_files import IMAGE_SUFFIXES, image_size, open_rgb


def split_file_path(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def _split_entries(root: Path, split: str) -> list[tuple[int, str]]:
    """``(line number, image id)`` of each line of ``split``'s file."""
    split_file = split_file_path(root, split)
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise FileNotFoundError(f"{split_file}: split {split!r} not found (available: {available or 'none'})")
    entries = []
    for line_number, line in enumerate(fields.text_file(split_file).splitlines(), start=1):
        words = line.split()
        # Per-class split files ("id  1") carry a flag; only the id matters here.
        if words:
            entries.append((line_number, words[0]))
    return entries


def read_split_ids(root: Path, split: str) -> list[str]:
    return [image_id for _, image_id in _split_entries(root, split)]


def read_class_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in fields.text_file(path).splitlines() if line.strip()]
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
    except OSError as error:
        raise BadInputError(path, f"cannot read the file ({error.strerror or error})") from None
    except defusedxml.DefusedXmlException as error:
        raise BadInputError(
            path, f"refused unsafe XML ({type(error).__name__}: entities are not expanded)"
        ) from None
    except StdET.ParseError as error:
        line = error.position[0] if getattr(error, "position", None) else None
        raise BadInputError(path, f"malformed XML ({error})", line=line) from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise BadInputError(path, f"not a VOC annotation (root element <{root.tag}>)")
    file_name = root.findtext("filename")
    file_name = file_name.strip() if file_name and file_name.strip() else None
    objects = []
    for index, node in enumerate(root.iter("object")):
        name = node.findtext("name")  # kept raw: build_record strips it and reports the repair
        if name is None or not name.strip():
            raise BadInputError(path, f"object {index} has no <name>")
        where = f"object {index} ({fields.describe(name)})"
        box_node = node.find("bndbox")
        if box_node is None:
            raise BadInputError(path, f"{where} has no <bndbox>")
        box = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(box_node, key, path)
            try:
                box.append(float(text))
            except ValueError:
                raise BadInputError(
                    path, f"{where} <{key}>: non-numeric coordinate {fields.describe(text)}"
                ) from None
        difficult = (node.findtext("difficult") or "").strip()
        difficult = (
            fields.whole_number_text(difficult, path, f"{where} <difficult>", 0, 1) if difficult else 0
        )
        objects.append(RawObject(name=name, box=box, difficult=bool(difficult), where=f"object {index}"))
    return file_name, _size(root, path), objects


def _size(root, path: Path) -> tuple[int, int] | None:
    """``<size>``'s ``(width, height)``; ``None`` (read from the image) where it is absent, empty or 0."""
    size_node = root.find("size")
    if size_node is None:
        return None
    size = []
    for tag in ("width", "height"):
        text = (size_node.findtext(tag) or "").strip()
        size.append(fields.whole_number_text(text, path, f"<size><{tag}>", 0, fields.MAX_SIDE) if text else 0)
    return (size[0], size[1]) if all(size) else None


def find_image(root: Path, image_id: str, file_name: str | None) -> Path:
    image_dir = root / "JPEGImages"
    if file_name:
        candidate = image_dir / Path(file_name).name
        if candidate.is_file():
            return candidate
    # the lower-case suffixes, then the upper-case ones (file systems tell PHOTO.JPG from photo.jpg)
    for suffix in IMAGE_SUFFIXES + tuple(suffix.upper() for suffix in IMAGE_SUFFIXES):
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
    allow_outside_root: bool = False,
) -> tuple[list[tuple], list[str], ProblemLog]:
    """The annotation files of a VOC folder at ``split``, parsed: ``(entries, classes, problems)``
    with one ``(image_id, image_path, (width, height), objects, xml_path)`` per readable image.

    ``split``: a file in ``ImageSets/Main`` (``None``: every XML in ``Annotations``).
    ``classes``: fixed class list (names outside it are bad input); default ``classes.txt`` or the
    sorted names found. ``verify_images``: fully decode every image now, so corrupt files are
    found (and, with ``on_bad='skip'``, skipped) before training starts. ``allow_outside_root``:
    split ids may name files outside ``Annotations/`` and ``JPEGImages/`` (``../x``, ``/abs/x``).
    """
    root = Path(root)
    annotation_dir = root / "Annotations"
    if not annotation_dir.is_dir():
        raise FileNotFoundError(f"{root}: not a VOC directory (no Annotations/ folder)")
    problems = problems or ProblemLog("error")
    if split is None:
        entries = [(None, p.stem) for p in sorted(annotation_dir.glob("*.xml"))]
    else:
        entries = _split_entries(root, split)
    parsed = []
    for line_number, image_id in entries:
        xml_path = annotation_dir / f"{image_id}.xml"
        try:
            # Inside Annotations/ means the id does not climb out, so <id>.<suffix> is inside JPEGImages/ too.
            if not allow_outside_root and not fields.is_inside(xml_path, annotation_dir):
                raise fields.OutsideRootError(
                    split_file_path(root, split),
                    f"id {fields.describe(image_id)} leads "
                    f"outside the data set's folder {root}; {fields.ALLOW_HINT}",
                    line=line_number,
                )
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
            kind = (
                fields.OUTSIDE_KIND
                if isinstance(error, fields.OutsideRootError)
                else "bad annotation or image"
            )
            problems.bad(error, kind)
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
    root: str | Path,
    split: str | None = None,
    classes: list[str] | None = None,
    on_bad: str = "error",
    allow_outside_root: bool = False,
) -> AnnotationSet:
    """The checked annotations of a VOC folder (as :func:`detlab.data.voc.read_voc` checks them)
    as numpy arrays, without torch; see :func:`scan_voc` for the arguments."""
    parsed, classes, problems = scan_voc(
        root, split, classes, problems=ProblemLog(on_bad), allow_outside_root=allow_outside_root
    )
    records = []
    for image_id, image_path, (width, height), objects, xml_path in parsed:
        checked = check_objects(objects, width, height, classes, xml_path, problems)
        if checked is not None:
            records.append(annotated_image(image_id, image_path, width, height, checked))
    return AnnotationSet(records, classes, name=dataset_name(root, split), problems=problems)
