"""YOLO layout: one ``.txt`` per image, a line ``class cx cy w h`` per object (class from 0,
coordinates normalised to [0, 1] by the image width/height), and the class names.

Accepted layouts:

- a data set YAML as Ultralytics defines it and labelling services (Roboflow) export it, given as
  ``yolo:DIR/data.yaml`` or as ``yolo:DIR`` with ``data.yaml`` (or ``dataset.yaml``) in ``DIR``:
  ``names`` (a list or an ``{index: name}`` map; ``nc``, if given, must agree), an optional
  ``path`` (the data set root; a relative one is taken from the YAML's folder, else from the
  working directory) and ``train``/``val``/``test`` entries, each a folder of images, a ``.txt``
  list of image paths (one a line), or a list of those. An entry is looked up relative to ``path``,
  then to the YAML's folder, and one starting with ``../`` also without it (Roboflow writes
  ``../train/images`` for the ``train/images`` folder beside ``data.yaml``). The labels of
  ``.../images/x.jpg`` are in ``.../labels/x.txt`` (the last ``images`` folder of the path replaced).
- folders without such a YAML: ``images/<split>/`` + ``labels/<split>/`` (as Ultralytics
  writes), ``<split>/images/`` + ``<split>/labels/`` (as Roboflow exports), or ``images/`` +
  ``labels/`` without splits; names from ``classes.txt``, ``obj.names``, ``names.txt`` (one a
  line) or the ``names`` of ``data.yaml``.

Split names: ``val`` also finds ``valid`` and ``validation`` (and the other way round);
``trainval`` is ``train`` + ``val`` unless the data set defines it; no split means every split.

Checks (:mod:`detlab.data.fields`): label files and name files must be UTF-8 text; in a data set
YAML, ``names`` are non-empty names (text or numbers), ``nc`` a whole number from 1 to 100,000,
``path`` and the split entries text. ``path`` keeps the meaning Ultralytics gives it: it *is* the
data set's folder, wherever it points. The split entries, and the images a ``.txt`` list names,
must lie inside that folder or the YAML's own folder unless ``allow_outside_root``; label files
follow their images by Ultralytics' rule.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from detlab.data import fields
from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.images import image_size
from detlab.data.records import RawObject, build_record
from detlab.data.schema import DetectionDataset
from detlab.data.voc import export_stems, transfer_image
from detlab.image_files import IMAGE_SUFFIXES

NAME_FILES = ("classes.txt", "obj.names", "names.txt")
YAML_FILES = ("data.yaml", "dataset.yaml")
YAML_SUFFIXES = (".yaml", ".yml")
SPLIT_KEYS = ("train", "val", "test")  # what "every split" means
YAML_SPLIT_KEYS = ("train", "val", "valid", "validation", "test", "minival", "trainval")
VAL_ALIASES = ("val", "valid", "validation")


def split_aliases(split: str) -> tuple[str, ...]:
    """The names ``split`` may go by: ``val``, ``valid`` and ``validation`` are one split."""
    return VAL_ALIASES if split in VAL_ALIASES else (split,)


def find_data_yaml(root: Path) -> Path | None:
    """``root`` itself if it is a ``.yaml`` file, else ``root/data.yaml`` or ``root/dataset.yaml``."""
    if root.is_file():
        if root.suffix.lower() not in YAML_SUFFIXES:
            raise BadInputError(root, "not a YOLO data set: give a folder or its data .yaml file")
        return root
    return next((root / name for name in YAML_FILES if (root / name).is_file()), None)


def read_data_yaml(path: Path) -> dict:
    text = fields.text_file(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise BadInputError(path, f"not valid YAML ({error})".replace("\n", " ")) from None
    except RecursionError:
        raise BadInputError(path, "not valid YAML (nested too deeply)") from None
    except ValueError as error:  # a value YAML's resolver took for a number or date that is none
        raise BadInputError(path, f"not valid YAML ({str(error).split(';')[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInputError(path, f"expected a mapping (names, train, val, ...), got a {type(data).__name__}")
    return data


def names_from_yaml(data: dict, path: Path) -> list[str]:
    """``names`` (a list or an ``{index: name}`` map with indices 0..n-1), checked against ``nc``."""
    names, nc = data.get("names"), data.get("nc")
    if nc is not None and (
        isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= fields.MAX_CLASSES
    ):
        raise BadInputError(
            path,
            f"'nc' must be a positive whole number (at most {fields.MAX_CLASSES:,}), "
            f"got {fields.describe(nc)}",
        )
    if names is None:
        if nc is None:
            raise BadInputError(path, "no 'names' list or map (and no 'nc')")
        return [f"class_{index}" for index in range(nc)]  # as Ultralytics names them
    if isinstance(names, dict):
        by_index = {}
        for key, value in names.items():
            if isinstance(key, str) and key.strip().isdecimal() and len(key.strip()) <= 6:
                key = int(key)
            if isinstance(key, bool) or not isinstance(key, int):
                raise BadInputError(
                    path, f"'names' map keys must be class indices 0, 1, ..., got {fields.describe(key)}"
                )
            by_index[key] = value
        if sorted(by_index) != list(range(len(by_index))):
            keys = sorted(by_index)
            shown = f"{keys}" if len(keys) <= 10 else f"{keys[:10]} ... ({len(keys)} keys)"
            raise BadInputError(
                path, f"'names' map keys must be the class indices 0..{len(by_index) - 1}, got {shown}"
            )
        classes = [
            fields.name(by_index[index], path, f"'names'[{index}]", numbers=True)
            for index in range(len(by_index))
        ]
    elif isinstance(names, list):
        classes = [
            fields.name(value, path, f"'names'[{index}]", numbers=True) for index, value in enumerate(names)
        ]
    else:
        raise BadInputError(
            path, f"'names' must be a list or an {{index: name}} map, got {fields.describe(names)}"
        )
    if not classes:
        raise BadInputError(path, "'names' is empty")
    if nc is not None and nc != len(classes):
        raise BadInputError(path, f"'nc: {nc}' does not match the {len(classes)} class names in 'names'")
    duplicates = sorted({name for name in classes if classes.count(name) > 1})
    if duplicates:
        raise BadInputError(path, f"class names repeated in 'names': {duplicates}")
    return classes


def read_yolo_names(root: Path) -> list[str]:
    for file_name in NAME_FILES:
        path = root / file_name
        if path.is_file():
            names = [line.strip() for line in fields.text_file(path).splitlines() if line.strip()]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise BadInputError(
                    path, f"class names repeated: {[fields.describe(n) for n in duplicates[:5]]}"
                )
            return names
    for file_name in YAML_FILES:
        path = root / file_name
        if path.is_file():
            return names_from_yaml(read_data_yaml(path), path)
    raise FileNotFoundError(
        f"{root}: no class names file ({', '.join(NAME_FILES)} or {' / '.join(YAML_FILES)})"
    )


def label_path_for(image_path: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``
    (beside the image when the path has no ``images`` folder)."""
    parts = image_path.parts
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def _absolute(path: Path) -> Path:
    """Absolute with ``..`` folded, symbolic links kept (a linked image keeps its labels beside the link)."""
    return Path(os.path.abspath(path))


class YoloDataYaml:
    """A data set YAML: its classes, its root and where each split's images are. ``allow_outside_root``:
    split entries and listed images may lie outside the root and the YAML's folder."""

    def __init__(self, path: Path, allow_outside_root: bool = False):
        self.path = path
        self.allow_outside_root = allow_outside_root
        self.data = read_data_yaml(path)
        self.classes = names_from_yaml(self.data, path)
        self.root = self._root()
        self.splits = {}  # split name -> the YAML's entry
        for key in YAML_SPLIT_KEYS:
            if self.data.get(key) not in (None, "", []):
                self.splits.setdefault(split_aliases(key)[0], (key, self.data[key]))

    @staticmethod
    def defines_splits(path: Path) -> bool:
        data = read_data_yaml(path)
        return any(data.get(key) not in (None, "", []) for key in YAML_SPLIT_KEYS)

    def _root(self) -> Path:
        folder = self.path.parent
        root = self.data.get("path")
        if root is None or root == "":
            return folder
        root = Path(os.path.expanduser(fields.path_text(root, self.path, "'path'")))
        if root.is_absolute():
            return root
        # Relative to the YAML's folder; Ultralytics takes it from the working directory.
        return next((c for c in (folder / root, root) if c.is_dir()), folder / root)

    def available(self) -> list[str]:
        names = set(self.splits)
        if "train" in names and "val" in names:
            names.add("trainval")
        return sorted(names)

    def entries(self, split: str | None) -> list[tuple[str, str]]:
        """``(yaml key, path entry)`` pairs of ``split`` (every split when ``None``)."""
        if split is None:
            wanted = [name for name in SPLIT_KEYS if name in self.splits] or sorted(self.splits)
        elif split_aliases(split)[0] in self.splits:
            wanted = [split_aliases(split)[0]]
        elif split == "trainval" and "train" in self.splits and "val" in self.splits:
            wanted = ["train", "val"]
        else:
            raise BadInputError(self.path, f"split {split!r} is not defined (available: {self.available()})")
        pairs = []
        for name in wanted:
            key, value = self.splits[name]
            values = value if isinstance(value, list) else [value]
            for entry in values:
                if not isinstance(entry, str) or not entry.strip() or "\0" in entry:
                    raise BadInputError(
                        self.path,
                        f"'{key}': expected a folder, a .txt list of images or a list "
                        f"of those, got {fields.describe(entry)}",
                    )
                pairs.append((key, entry.strip()))
        return pairs

    def inside(self, path: Path) -> bool:
        """Whether ``path`` may be read: it lies in the root or the YAML's folder, or that is allowed."""
        return self.allow_outside_root or any(
            fields.is_inside(path, folder) for folder in (self.root, self.path.parent)
        )

    def locate(self, key: str, entry: str) -> Path:
        """Where ``entry`` of ``key`` is: relative to the root, then to the YAML's folder, then (for
        ``../x``) ``x`` in either; a place outside both is passed over unless allowed."""
        folder = self.path.parent
        candidates = [self.root / entry, folder / entry]
        if entry.startswith(("../", "..\\")):
            candidates += [self.root / entry[3:], folder / entry[3:]]
        candidates = list(dict.fromkeys(_absolute(Path(os.path.expanduser(c))) for c in candidates))
        existing = [candidate for candidate in candidates if candidate.exists()]
        for candidate in existing:
            if self.inside(candidate):
                return candidate
        if existing:
            raise fields.OutsideRootError(
                self.path,
                f"'{key}' entry {fields.describe(entry)} leads outside the data "
                f"set's folder {self.root}; {fields.ALLOW_HINT}",
            )
        tried = ", ".join(str(c) for c in candidates)
        raise BadInputError(self.path, f"'{key}: {entry}' not found (tried {tried})")

    def images(self, split: str | None, problems: ProblemLog) -> list[Path]:
        """The image paths of ``split``, each once, in the YAML's order (each folder sorted)."""
        images = []
        for key, entry in self.entries(split):
            location = self.locate(key, entry)
            if location.is_dir():
                images += sorted(
                    p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
            elif location.suffix.lower() == ".txt":
                images += self._listed(location, problems)
            else:
                raise BadInputError(
                    self.path,
                    f"'{key}: {entry}': {location} is neither a folder of images nor "
                    "a .txt list of image paths",
                )
        return list(dict.fromkeys(images))

    def _listed(self, list_file: Path, problems: ProblemLog) -> list[Path]:
        images = []
        for line_number, line in enumerate(fields.text_file(list_file).splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(os.path.expanduser(line))
            candidates = [path] if path.is_absolute() else [self.root / path, list_file.parent / path]
            candidates = [candidate for candidate in candidates if self.inside(candidate)]
            if not candidates:
                problems.bad(
                    fields.OutsideRootError(
                        list_file,
                        f"image {fields.describe(line)} leads outside the data "
                        f"set's folder {self.root}; {fields.ALLOW_HINT}",
                        line=line_number,
                    ),
                    fields.OUTSIDE_KIND,
                )
                continue
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                problems.bad(
                    BadInputError(list_file, f"image {fields.describe(line)} not found", line=line_number),
                    "missing image",
                )
                continue
            images.append(_absolute(found))
        return images


def _split_folders(root: Path) -> dict[str, tuple[Path, Path]]:
    """``{folder name: (image dir, label dir)}`` of ``images/<split>/`` and ``<split>/images/``."""
    found = {}
    if (root / "images").is_dir():
        found.update(
            (p.name, (p, root / "labels" / p.name)) for p in sorted((root / "images").iterdir()) if p.is_dir()
        )
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name not in ("images", "labels") and (p / "images").is_dir():
            found.setdefault(p.name, (p / "images", p / "labels"))
    return found


def _folders(root: Path, split: str | None) -> list[tuple[Path, Path]]:
    """``(image dir, label dir)`` pairs of ``split`` in a folder layout (no data set YAML)."""
    splits = _split_folders(root)
    if split is None:
        flat = (root / "images").is_dir() and any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in (root / "images").iterdir()
        )
        if splits and not flat:
            return list(splits.values())  # every split
        if (root / "images").is_dir():
            return [(root / "images", root / "labels")]
    else:
        for name in split_aliases(split):
            if name in splits:
                return [splits[name]]
        if split == "trainval":
            parts = [
                next((splits[n] for n in split_aliases(part) if n in splits), None)
                for part in ("train", "val")
            ]
            if all(parts):
                return parts
        if splits:
            raise FileNotFoundError(f"{root}: split {split!r} not found (available: {sorted(splits)})")
        if (root / "images").is_dir():
            return [(root / "images", root / "labels")]  # one set without splits
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    raise FileNotFoundError(
        f"{root}: not a YOLO directory (no {' or '.join(YAML_FILES)}, no images/ folder, no <split>/images/ folders)"
    )


def parse_label_file(
    path: Path, num_classes: int, width: int, height: int, classes: list[str]
) -> list[RawObject]:
    objects = []
    for line_number, line in enumerate(fields.text_file(path).splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) != 5:
            raise BadInputError(
                path, f"expected 5 fields 'class cx cy w h', got {len(words)}", line=line_number
            )
        try:
            class_index = int(words[0])
            cx, cy, w, h = (float(v) for v in words[1:])
        except ValueError:
            raise BadInputError(
                path, f"non-numeric field in {fields.describe(line.strip(), 80)}", line=line_number
            ) from None
        if not 0 <= class_index < num_classes:
            raise BadInputError(
                path, f"class index {class_index} outside 0..{num_classes - 1}", line=line_number
            )
        values = (cx, cy, w, h)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise BadInputError(
                path, f"coordinates {values} outside [0, 1] (YOLO labels are normalised)", line=line_number
            )
        # Rounded to 1/1000 px so that 6-decimal normalised text does not fake boxes leaving the image.
        box = [
            round(v, 3)
            for v in (
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
        ]
        objects.append(RawObject(name=classes[class_index], box=box, where=f"line {line_number}"))
    return objects


def _image_ids(images: list[Path], root: Path) -> list[str]:
    """File stems, or the path below ``root`` (without suffix) for stems that several images share."""
    stems = [p.stem for p in images]
    repeated = {stem for stem in stems if stems.count(stem) > 1}
    ids = []
    for path, stem in zip(images, stems):
        if stem in repeated:
            try:
                stem = path.relative_to(root).with_suffix("").as_posix()
            except ValueError:
                stem = path.with_suffix("").as_posix()
        ids.append(stem)
    return ids


def read_yolo(
    root: str | Path,
    split: str | None = None,
    on_bad: str = "error",
    problems: ProblemLog | None = None,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Read a YOLO data set (a folder, or its data set YAML; see the module doc) at ``split``
    (``None``: every image). An image without a label file is a background-only image.
    ``allow_outside_root``: the YAML may name images outside the data set's folder."""
    root = Path(root)
    problems = problems or ProblemLog(on_bad)
    data_yaml = find_data_yaml(root)
    if data_yaml is not None and YoloDataYaml.defines_splits(data_yaml):
        spec = YoloDataYaml(data_yaml, allow_outside_root)
        classes, base = spec.classes, _absolute(spec.root)
        pairs = [(image, label_path_for(image)) for image in spec.images(split, problems)]
        name = f"yolo:{data_yaml}"
    else:
        if data_yaml is not None and root.is_file():
            root = root.parent  # a YAML with only the names
        classes, base = read_yolo_names(root), root
        pairs = []
        for image_dir, label_dir in _folders(root, split):
            images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            pairs += [(image, label_dir / f"{image.stem}.txt") for image in images]
        name = f"yolo:{root}"
    records = []
    for (image_path, label_path), image_id in zip(pairs, _image_ids([p for p, _ in pairs], base)):
        try:
            width, height = image_size(image_path)
            objects = (
                parse_label_file(label_path, len(classes), width, height, classes)
                if label_path.is_file()
                else []
            )
        except BadInputError as error:
            problems.bad(error, "bad label file or image")
            continue
        record = build_record(image_id, image_path, width, height, objects, classes, label_path, problems)
        if record is not None:
            records.append(record)
    dataset = DetectionDataset(records, classes, name=name + (f" [{split}]" if split else ""))
    dataset.problems = problems
    return dataset


def write_yolo(
    dataset: DetectionDataset, out_dir: str | Path, split: str | None = None, copy_images: bool = True
) -> Path:
    """Write ``dataset`` as a YOLO folder (``images[/split]``, ``labels[/split]``, ``classes.txt``)."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split if split else out_dir / "images"
    label_dir = out_dir / "labels" / split if split else out_dir / "labels"
    label_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.classes))
    for record, stem in zip(dataset.records, export_stems(dataset)):
        transfer_image(
            record.image_path, image_dir / f"{stem}{record.image_path.suffix.lower()}", copy_images
        )
        lines = []
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
            cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
            w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
            lines.append(f"{label - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (label_dir / f"{stem}.txt").write_text("".join(lines))
    return out_dir
