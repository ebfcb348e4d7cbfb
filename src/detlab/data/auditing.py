"""``detlab data audit``: what is wrong with a data set, not with a model.

:func:`audit` looks at every split of a data set at once and finds:

1. duplicate and near-duplicate images, within a split and across splits (a leak: a test image
   that is also a training image), by perceptual hash and a pixel check
   (:mod:`detlab.data.duplicates`); and image files listed in several splits;
2. box problems (:mod:`detlab.data.box_checks`): one object boxed twice under one class
   (IoU > 0.9), boxed under two classes, boxes whose size or aspect ratio is a robust-z outlier for
   their class, images without objects, and the class-imbalance table;
3. given a model's detections on the images, likely label mistakes, ranked
   (:mod:`detlab.data.suspects`): missing labels, swapped classes, spurious boxes.

With ``out_dir`` it writes ``audit.md``, ``audit.json``, ``suspects.csv`` (with predictions) and
contact sheets (``duplicates.png``, ``boxes.png``, ``suspects.png``). ``AuditResult.summary()`` is
the one line the command prints at the end; ``AuditResult.should_fail(["leaks"])`` is what
``--fail-on leaks`` turns into an exit code.

Splits: for a spec, every split the data set defines (VOC: the files of ``ImageSets/Main``; YOLO:
train, val and test; synthetic: train, val and test; COCO: its one file), less any split that is
the union of others (``trainval`` = ``train`` + ``val``), so that each image has one split. An
image file listed in two of the remaining splits is a leak of its own.
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detlab.data import audit_sheets
from detlab.data.box_checks import class_table, overlapping_pairs, size_and_aspect_outliers
from detlab.data.duplicates import find_duplicates, image_hashes
from detlab.data.errors import ON_BAD_CHOICES, BadInputError, BadInputWarning
from detlab.data.loading import load_dataset, parse_spec
from detlab.data.schema import DetectionDataset
from detlab.data.suspects import image_suspects
from detlab.machine import usable_cpus

FAIL_ON_CHOICES = ("leaks", "duplicates", "boxes", "suspects")
VAL_NAMES = ("val", "valid", "validation", "minival")
MAX_TABLE_ROWS = 50  # per table of audit.md; audit.json has every finding
REJECTED_KEPT = 10


@dataclass
class AuditConfig:
    """Thresholds of the audit (defaults measured on BCCD, raccoon and the synthetic set; see
    ``docs/data.md``, "Auditing a data set")."""

    hash_distance: int = 16  # Hamming distance (of 64 bits) for a candidate pair
    pixel_similarity: float = 0.9  # pixel check: a duplicate at or above this
    duplicate_iou: float = 0.9  # two boxes on one image above this IoU are one object
    outlier_z: float = 3.5  # robust z beyond which a box's size or aspect is an outlier
    outlier_min_boxes: int = 10  # classes with fewer (uncut) boxes are not judged
    confident_score: float = 0.5  # a detection this sure contradicts a label
    found_score: float = 0.05  # a label with no detection this sure is "never found"
    match_iou: float = 0.5  # a detection on a labelled box (IoU at least this)
    spurious_weight: float = 0.5  # a box never found is weaker evidence than a confident detection
    sheet_items: int = 24  # findings drawn on each contact sheet


@dataclass
class AuditImage:
    """One image file of the audited data set: ``boxes`` float ``[N, 4]`` ``(x1, y1, x2, y2)``
    pixels, ``labels`` int ``[N]`` in ``1..C`` of the audit's class list, ``difficult`` bool ``[N]``;
    ``splits``: every split that lists it."""

    image_id: str
    path: Path
    splits: list[str]
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class DuplicatePair:
    """Two image files that show the same picture (re-encoded, resized or slightly cropped)."""

    image_a: str
    path_a: str
    splits_a: list[str]
    image_b: str
    path_b: str
    splits_b: list[str]
    hash_distance: int
    pixel_similarity: float

    @property
    def across_splits(self) -> bool:
        """A leak: no split holds both images."""
        return not set(self.splits_a) & set(self.splits_b)


@dataclass
class BoxFinding:
    """A box problem. ``kind``: ``duplicate_box`` (``other_box`` of the same class, ``value`` = IoU),
    ``class_conflict`` (``other_box`` of another class, ``value`` = IoU), ``size_outlier`` or
    ``aspect_outlier`` (``value`` = sqrt(box area / image area) or width / height, ``z`` its
    robust z-score in the class). Boxes are ``[x1, y1, x2, y2]`` pixels."""

    kind: str
    image_id: str
    path: str
    splits: list[str]
    box: list[float]
    label: str
    value: float
    other_box: list[float] | None = None
    other_label: str | None = None
    z: float | None = None


@dataclass
class Suspect:
    """A likely label mistake (kinds and score in :mod:`detlab.data.suspects`). ``label_box`` /
    ``label_class``: the labelled box concerned (none for a missing label); ``det_box`` /
    ``det_class`` / ``det_score``: the detection (none for a spurious box);
    ``labelled_class_score``: for a swapped class, the model's best score for the labelled class."""

    rank: int
    kind: str
    score: float
    image_id: str
    path: str
    splits: list[str]
    label_box: list[float] | None
    label_class: str | None
    det_box: list[float] | None
    det_class: str | None
    det_score: float | None
    labelled_class_score: float | None = None


@dataclass
class AuditResult:
    """What :func:`audit` found. Every list is ordered worst first.

    ``splits``: images per split; ``duplicates``: duplicate image pairs (leaks first);
    ``rejected_candidates``: the hash candidates most alike that the pixel check turned down (the
    closest calls, to judge the threshold by); ``shared_files``: images listed in several splits
    ``{"image_id", "path", "splits"}``; ``duplicate_boxes``, ``class_conflicts``, ``outliers``:
    :class:`BoxFinding`; ``empty_images``: ``{"image_id", "path", "splits"}``; ``class_table``: rows
    of :func:`detlab.data.box_checks.class_table`; ``suspects``: ranked :class:`Suspect` (``None``
    without predictions); ``unreadable``: images skipped as undecodable (``on_bad="skip"``);
    ``seconds``: time of each part; ``files``: what was written (name -> path).
    """

    name: str
    classes: list[str]
    splits: dict[str, int]
    num_images: int
    num_boxes: int
    duplicates: list[DuplicatePair] = field(default_factory=list)
    rejected_candidates: list[DuplicatePair] = field(default_factory=list)
    shared_files: list[dict] = field(default_factory=list)
    duplicate_boxes: list[BoxFinding] = field(default_factory=list)
    class_conflicts: list[BoxFinding] = field(default_factory=list)
    outliers: list[BoxFinding] = field(default_factory=list)
    empty_images: list[dict] = field(default_factory=list)
    class_table: list[dict] = field(default_factory=list)
    suspects: list[Suspect] | None = None
    unreadable: list[str] = field(default_factory=list)
    config: AuditConfig = field(default_factory=AuditConfig)
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def leaks(self) -> list[DuplicatePair]:
        """Duplicate pairs whose images are in different splits."""
        return [pair for pair in self.duplicates if pair.across_splits]

    def leaked_images(self) -> dict[tuple[str, str], int]:
        """``{(split, earlier split): images}``: how many images of ``split`` duplicate an image of
        ``earlier split`` (splits ordered train, val, test, then the rest): the leaked copies, each
        counted once."""
        leaked: dict[tuple[str, str], set[str]] = defaultdict(set)
        for pair in self.leaks:
            sides = sorted(
                [(pair.splits_a, pair.path_a), (pair.splits_b, pair.path_b)],
                key=lambda side: _split_rank(side[0]),
            )
            (earlier, _), (later, later_path) = sides
            leaked[("+".join(later), "+".join(earlier))].add(later_path)
        return {key: len(paths) for key, paths in sorted(leaked.items())}

    def counts(self) -> dict[str, int]:
        """Number of each finding (what ``audit.json``'s ``counts`` holds)."""
        counts = {
            "images": self.num_images,
            "boxes": self.num_boxes,
            "duplicate_pairs": len(self.duplicates),
            "duplicate_pairs_across_splits": len(self.leaks),
            "images_duplicating_another_split": sum(self.leaked_images().values()),
            "images_in_several_splits": len(self.shared_files),
            "duplicate_boxes": len(self.duplicate_boxes),
            "class_conflicts": len(self.class_conflicts),
            "size_outliers": sum(finding.kind == "size_outlier" for finding in self.outliers),
            "aspect_outliers": sum(finding.kind == "aspect_outlier" for finding in self.outliers),
            "images_without_objects": len(self.empty_images),
            "unreadable_images": len(self.unreadable),
        }
        if self.suspects is not None:
            counts["suspects"] = len(self.suspects)
            for kind, number in sorted(Counter(suspect.kind for suspect in self.suspects).items()):
                counts[f"suspects_{kind}"] = number
        return counts

    def summary(self) -> str:
        """One line: ``"3 test images duplicate train images; 12 duplicate boxes; 41 suspects"``."""
        parts = []
        for (split, earlier), number in self.leaked_images().items():
            parts.append(
                f"{number} {split} image{'s' if number != 1 else ''} duplicate{'' if number != 1 else 's'} "
                f"{earlier} images"
            )
        within = len(self.duplicates) - len(self.leaks)
        if within:
            parts.append(f"{within} duplicate image pair{'s' if within != 1 else ''} within a split")
        if self.shared_files:
            parts.append(f"{len(self.shared_files)} images listed in several splits")
        if not parts:
            parts.append("no duplicate images")
        counts = self.counts()
        parts.append(f"{counts['duplicate_boxes']} duplicate boxes")
        parts.append(f"{counts['class_conflicts']} boxes of two classes on one object")
        parts.append(f"{counts['size_outliers'] + counts['aspect_outliers']} size or aspect outliers")
        parts.append(f"{counts['images_without_objects']} images without objects")
        if self.suspects is not None:
            parts.append(f"{len(self.suspects)} suspects")
        return "; ".join(parts)

    def should_fail(self, fail_on: Iterable[str]) -> bool:
        """Whether a CI run should fail for ``fail_on`` (``leaks``: a duplicate across splits or a file
        in several splits; ``duplicates``: any duplicate image pair; ``boxes``: a duplicate box or
        a class conflict; ``suspects``: any suspect)."""
        fail_on = check_fail_on(fail_on)
        checks = {
            "leaks": bool(self.leaks or self.shared_files),
            "duplicates": bool(self.duplicates or self.shared_files),
            "boxes": bool(self.duplicate_boxes or self.class_conflicts),
            "suspects": bool(self.suspects),
        }
        return any(checks[name] for name in fail_on)

    def as_dict(self) -> dict:
        """Everything, JSON-ready (what ``audit.json`` holds)."""
        data = asdict(self)
        data["summary"] = self.summary()
        data["counts"] = self.counts()
        data["leaked_images"] = [
            {"split": split, "duplicates_of": earlier, "images": number}
            for (split, earlier), number in self.leaked_images().items()
        ]
        for pair_list in ("duplicates", "rejected_candidates"):
            for pair, record in zip(getattr(self, pair_list), data[pair_list]):
                record["across_splits"] = pair.across_splits
        for row in data["class_table"]:  # JSON has no infinity
            if row.get("vs_largest") == float("inf"):
                row["vs_largest"] = None
        return data


def check_fail_on(fail_on: Iterable[str]) -> list[str]:
    """``fail_on`` as a list; a ``ValueError`` naming the choices for an unknown name."""
    fail_on = list(fail_on)
    unknown = sorted(set(fail_on) - set(FAIL_ON_CHOICES))
    if unknown:
        raise ValueError(f"--fail-on: unknown {unknown}; choose from {', '.join(FAIL_ON_CHOICES)}")
    return fail_on


def _split_rank(splits: list[str]) -> tuple:
    """Order of splits for naming leaks: train first, then validation, then test, then the rest."""

    def rank(name):
        return (
            0 if name.startswith("train") else 1 if name in VAL_NAMES else 2 if name == "test" else 3,
            name,
        )

    return min(rank(name) for name in splits)


def discover_splits(spec: str, root: str | Path | None = None) -> list[str]:
    """The split names a data set spec defines (empty: the spec is one split). VOC: the files of
    ``ImageSets/Main`` less per-class files (``<class>_<split>.txt``); YOLO and synthetic sets:
    train, val and test where they exist; COCO: none."""
    kind, location = parse_spec(spec)
    if kind in ("synthetic", "synthetic-single", "synthetic-small"):
        return ["train", "val", "test"]
    if kind == "voc":
        names = sorted(path.stem for path in (Path(location) / "ImageSets" / "Main").glob("*.txt"))
        return [name for name in names if not any(name.endswith(f"_{other}") for other in names)]
    if kind == "yolo":
        found = []
        for split in ("train", "val", "test"):
            try:
                load_dataset(spec, split, on_bad="skip")
            except (FileNotFoundError, BadInputError):
                continue
            found.append(split)
        return found
    return []


def _drop_unions(datasets: dict[str, DetectionDataset]) -> dict[str, DetectionDataset]:
    """``datasets`` less every split whose images are exactly the union of two or more others."""
    files = {
        name: {str(record.image_path.resolve()) for record in dataset.records}
        for name, dataset in datasets.items()
    }
    kept = {}
    for name, dataset in datasets.items():
        parts = [other for other in files if other != name and files[other] < files[name]]
        if len(parts) >= 2 and set().union(*(files[part] for part in parts)) == files[name]:
            continue
        kept[name] = dataset
    return kept


def load_splits(
    data: str | DetectionDataset | Mapping[str, DetectionDataset],
    splits: Iterable[str] | None = None,
    on_bad: str = "error",
    **load_options,
) -> dict[str, DetectionDataset]:
    """``{split: data set}`` to audit: a spec's splits (given, or :func:`discover_splits` less the
    unions of others), a mapping as it is, or one data set as the split ``all``.
    ``load_options`` go to :func:`detlab.data.load_dataset` (``root``, ``num_synthetic``, ...)."""
    if isinstance(data, DetectionDataset):
        return {"all": data}
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("no data sets to audit (an empty mapping)")
        return dict(data)
    if not isinstance(data, str):
        raise TypeError(
            f"data: expected a spec string, a DetectionDataset or a {{split: DetectionDataset}} mapping, got {type(data).__name__}"
        )
    with warnings.catch_warnings():
        # The readers warn once per repaired box; the audit's own findings are what matter here.
        warnings.simplefilter("ignore", BadInputWarning)
        if splits is not None:
            return {split: load_dataset(data, split, on_bad=on_bad, **load_options) for split in splits}
        names = discover_splits(data, load_options.get("root"))
        if not names:
            return {"all": load_dataset(data, None, on_bad=on_bad, **load_options)}
        return _drop_unions(
            {split: load_dataset(data, split, on_bad=on_bad, **load_options) for split in names}
        )


def collect_images(datasets: dict[str, DetectionDataset]) -> tuple[list[AuditImage], list[str]]:
    """The distinct image files of ``datasets`` (one per file, with every split that lists it) and
    one class list for all: the splits' own when they agree, else the sorted union of names (a
    VOC set without ``classes.txt`` names only the classes a split has)."""
    class_lists = [list(dataset.classes) for dataset in datasets.values()]
    if all(names == class_lists[0] for names in class_lists):
        classes = class_lists[0]
    else:
        classes = sorted({name for names in class_lists for name in names})
    index_of = {name: index + 1 for index, name in enumerate(classes)}
    images: dict[str, AuditImage] = {}
    for split, dataset in datasets.items():
        relabel = np.array([0] + [index_of[name] for name in dataset.classes], dtype=np.int64)
        for record in dataset.records:
            key = str(record.image_path.resolve())
            if key in images:
                if split not in images[key].splits:
                    images[key].splits.append(split)
                continue
            images[key] = AuditImage(
                image_id=str(record.image_id),
                path=record.image_path,
                splits=[split],
                width=int(record.width),
                height=int(record.height),
                boxes=record.boxes.numpy().astype(np.float64).reshape(-1, 4),
                labels=relabel[record.labels.numpy()],
                difficult=record.difficult.numpy().astype(bool),
            )
    return list(images.values()), classes


def _image_ref(image: AuditImage) -> dict:
    return {"image_id": image.image_id, "path": str(image.path), "splits": list(image.splits)}


def _box_list(box: np.ndarray) -> list[float]:
    return [round(float(value), 2) for value in box]


def _progress(enabled: bool, description: str):
    """A tqdm wrapper for an iterator (or ``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda iterable, total=None: tqdm(
        iterable, total=total, desc=description, unit="img", dynamic_ncols=True
    )


def audit_duplicates(
    images: list[AuditImage],
    config: AuditConfig,
    on_bad: str = "error",
    workers: int | None = None,
    progress: bool = False,
) -> tuple[list[DuplicatePair], list[DuplicatePair], list[str]]:
    """Part 1 on ``images``: ``(duplicate pairs, closest rejected candidates, unreadable files)``."""
    unreadable: list[str] = []

    def skip(error: BadInputError) -> None:
        unreadable.append(str(error))
        warnings.warn(f"skipped {error}", BadInputWarning, stacklevel=2)

    paths = [image.path for image in images]
    hashes, readable = image_hashes(
        paths,
        workers=workers or usable_cpus(),
        on_bad=skip if on_bad == "skip" else None,
        progress=_progress(progress, "audit: hashing images"),
    )
    found, rejected = find_duplicates(paths, hashes, readable, config.hash_distance, config.pixel_similarity)

    def pair(i: int, j: int, distance: int, similarity: float) -> DuplicatePair:
        a, b = images[i], images[j]
        if _split_rank(b.splits) < _split_rank(a.splits):  # the earlier split first, as leaks are told
            a, b = b, a
        return DuplicatePair(
            a.image_id,
            str(a.path),
            list(a.splits),
            b.image_id,
            str(b.path),
            list(b.splits),
            int(distance),
            float(similarity),
        )

    duplicates = [pair(*item) for item in found]
    duplicates.sort(key=lambda p: (not p.across_splits, -p.pixel_similarity, p.path_a, p.path_b))
    return duplicates, [pair(*item) for item in rejected[:REJECTED_KEPT]], unreadable


def audit_boxes(images: list[AuditImage], classes: list[str], config: AuditConfig) -> dict:
    """Part 2 on ``images``: ``{"duplicate_boxes", "class_conflicts", "outliers", "empty_images",
    "class_table"}``."""
    counts = [len(image.boxes) for image in images]
    boxes = np.concatenate([image.boxes for image in images]) if images else np.zeros((0, 4))
    labels = np.concatenate([image.labels for image in images]) if images else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(images)), counts)
    sizes = np.repeat(
        np.array([[image.width, image.height] for image in images], dtype=np.float64).reshape(-1, 2),
        counts,
        axis=0,
    )

    def finding(
        kind: str, index: int, value: float, other: int | None = None, z: float | None = None
    ) -> BoxFinding:
        image = images[owner[index]]
        return BoxFinding(
            kind=kind,
            image_id=image.image_id,
            path=str(image.path),
            splits=list(image.splits),
            box=_box_list(boxes[index]),
            label=classes[labels[index] - 1],
            value=round(float(value), 4),
            other_box=None if other is None else _box_list(boxes[other]),
            other_label=None if other is None else classes[labels[other] - 1],
            z=z,
        )

    first, second, iou = overlapping_pairs(boxes, owner, config.duplicate_iou)
    duplicate_boxes, conflicts = [], []
    for i, j, value in sorted(zip(first.tolist(), second.tolist(), iou.tolist()), key=lambda item: -item[2]):
        if labels[i] == labels[j]:
            duplicate_boxes.append(finding("duplicate_box", j, value, other=i))
        else:
            conflicts.append(finding("class_conflict", j, value, other=i))
    outliers = [
        finding(f"{feature}_outlier", index, value, z=z)
        for index, feature, value, z in size_and_aspect_outliers(
            boxes, labels, sizes, config.outlier_z, config.outlier_min_boxes
        )
    ]
    by_split: dict[str, list[np.ndarray]] = defaultdict(list)
    for image in images:
        by_split["+".join(image.splits)].append(image.labels)
    table = class_table({split: np.concatenate(parts) for split, parts in by_split.items()}, classes)
    return {
        "duplicate_boxes": duplicate_boxes,
        "class_conflicts": conflicts,
        "outliers": outliers,
        "empty_images": [_image_ref(image) for image in images if len(image.boxes) == 0],
        "class_table": table,
    }


def _as_array(value, name: str, image: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(0, *shape_tail)
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        wanted = "[K, 4] (x1, y1, x2, y2) pixels" if shape_tail else "[K]"
        raise ValueError(
            f"predictions for image {image}: '{name}' has shape {list(array.shape)}, expected {wanted}"
        )
    return array


def audit_predictions(
    images: list[AuditImage],
    classes: list[str],
    predictions: Mapping,
    config: AuditConfig,
    prediction_classes: list[str] | None = None,
    progress: bool = False,
) -> list[Suspect]:
    """Part 3: ``predictions`` held against ``images``' labels -> ranked suspects.

    ``predictions``: ``{image key: {"boxes": [K, 4] (x1, y1, x2, y2) pixels of the stored image,
    "scores": [K], "labels": [K] in 1..C}}`` (numpy arrays, tensors or lists), keyed by each
    record's ``image_id`` or its image path. Give every detection down to a low score (0.05 or
    less): a box is "never found" only against that. ``prediction_classes``: the class names the
    labels index (default: the audit's class list). Images without an entry are not judged.
    """
    prediction_classes = list(prediction_classes or classes)
    relabel = _class_map(prediction_classes, classes)
    by_key = _predictions_by_key(predictions)
    judged = 0
    suspects = []
    iterator = images if not progress else _progress(True, "audit: label suspects")(images)
    for image in iterator:
        prediction = _prediction_of(image, by_key)
        if prediction is None:
            continue
        judged += 1
        det_boxes, det_scores, det_labels = _detections(prediction, image.image_id, len(prediction_classes))
        suspects += _suspects_on_image(image, classes, det_boxes, det_scores, relabel[det_labels], config)
    if judged == 0 and images:
        example = next(iter(predictions), None)
        raise ValueError(
            f"predictions match none of the {len(images)} images (keys are image ids such as "
            f"{images[0].image_id!r} or image paths; got keys such as {example!r})"
        )
    return _ranked(suspects)


def _class_map(prediction_classes: list[str], classes: list[str]) -> np.ndarray:
    """int ``[1 + len(prediction_classes)]``: a prediction's label (``1..``, in
    ``prediction_classes``) -> the audit's label (``1..C``, in ``classes``); a ``ValueError`` for a
    class the data set does not have."""
    unknown = sorted(set(prediction_classes) - set(classes))
    if unknown:
        raise ValueError(
            f"predictions name classes the data set does not have: {unknown} (data set: {classes})"
        )
    return np.array([0] + [classes.index(name) + 1 for name in prediction_classes], dtype=np.int64)


def _predictions_by_key(predictions: Mapping) -> dict:
    """``predictions`` under every key an image may be looked up by: the key as a string and, for a
    key that may be a path (not an int), that path resolved, so that a path relative to the working
    directory finds its image. A key as given wins over another key's resolved path."""
    by_key = {}
    for key, value in predictions.items():
        by_key[str(key)] = value
        if not isinstance(key, int):
            by_key.setdefault(str(Path(str(key)).resolve()), value)
    return by_key


def _prediction_of(image: AuditImage, by_key: dict) -> Mapping | None:
    """The prediction for ``image`` (by image id, else by its path as given or resolved), or None."""
    prediction = by_key.get(image.image_id)
    if prediction is None:
        prediction = by_key.get(str(image.path), by_key.get(str(image.path.resolve())))
    return prediction


def _detections(
    prediction: Mapping, image_id: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's prediction checked and as arrays: ``(boxes`` float ``[K, 4]`` ``(x1, y1, x2, y2)``
    pixels, ``scores`` float ``[K]``, ``labels`` int ``[K]`` in ``1..num_classes)``; a
    ``ValueError`` naming the image for a missing key, a wrong shape, unequal lengths or a label
    out of range."""
    missing_keys = {"boxes", "scores", "labels"} - set(prediction)
    if missing_keys:
        raise ValueError(f"predictions for image {image_id}: missing {sorted(missing_keys)}")
    det_boxes = _as_array(prediction["boxes"], "boxes", image_id, (4,))
    det_scores = _as_array(prediction["scores"], "scores", image_id, ())
    det_labels = _as_array(prediction["labels"], "labels", image_id, ()).astype(np.int64)
    if not len(det_boxes) == len(det_scores) == len(det_labels):
        raise ValueError(
            f"predictions for image {image_id}: {len(det_boxes)} boxes, {len(det_scores)} "
            f"scores and {len(det_labels)} labels; they must be equally many"
        )
    if len(det_labels) and (det_labels.min() < 1 or det_labels.max() > num_classes):
        raise ValueError(
            f"predictions for image {image_id}: labels must be in 1..{num_classes}, "
            f"got {det_labels.min()}..{det_labels.max()}"
        )
    return det_boxes, det_scores, det_labels


def _suspects_on_image(
    image: AuditImage,
    classes: list[str],
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    config: AuditConfig,
) -> list[Suspect]:
    """The suspects (unranked: ``rank`` 0) of one image, given its detections: ``det_boxes`` float
    ``[K, 4]`` ``(x1, y1, x2, y2)`` pixels, ``det_scores`` ``[K]``, ``det_labels`` int ``[K]`` in
    ``1..C`` of ``classes`` (already mapped from the prediction's classes)."""
    found = image_suspects(
        image.boxes,
        image.labels,
        det_boxes,
        det_scores,
        det_labels,
        image.difficult,
        confident=config.confident_score,
        found=config.found_score,
        match_iou=config.match_iou,
        spurious_weight=config.spurious_weight,
    )
    suspects = []
    for item in found:
        gt, det = item["gt"], item["det"]
        suspects.append(
            Suspect(
                rank=0,
                kind=item["kind"],
                score=round(item["score"], 4),
                image_id=image.image_id,
                path=str(image.path),
                splits=list(image.splits),
                label_box=None if gt is None else _box_list(image.boxes[gt]),
                label_class=None if gt is None else classes[image.labels[gt] - 1],
                det_box=None if det is None else _box_list(det_boxes[det]),
                det_class=None if det is None else classes[det_labels[det] - 1],
                det_score=None if det is None else round(float(det_scores[det]), 4),
                labelled_class_score=None
                if item["labelled_class_score"] is None
                else round(item["labelled_class_score"], 4),
            )
        )
    return suspects


def _ranked(suspects: list[Suspect]) -> list[Suspect]:
    """``suspects`` sorted worst first (equal scores by image path), ranks numbered from 1."""
    suspects.sort(key=lambda suspect: (-suspect.score, suspect.path))
    for rank, suspect in enumerate(suspects, start=1):
        suspect.rank = rank
    return suspects


def audit(
    data: str | DetectionDataset | Mapping[str, DetectionDataset],
    predictions: Mapping | None = None,
    out_dir: str | Path | None = None,
    splits: Iterable[str] | None = None,
    config: AuditConfig | None = None,
    prediction_classes: list[str] | None = None,
    on_bad: str = "error",
    workers: int | None = None,
    progress: bool = True,
    **load_options,
) -> AuditResult:
    """Audit a data set: duplicate images and leaks, box problems and, given ``predictions``,
    likely label mistakes (see the module doc).

    ``data``: a spec (``voc:DIR``, ``synthetic``, ...; every split it defines, or ``splits``), a
    :class:`DetectionDataset` (one split, ``all``) or ``{split: DetectionDataset}``.
    ``predictions``: a model's detections per image, as :func:`audit_predictions` takes them.
    ``out_dir``: write ``audit.md``, ``audit.json``, ``suspects.csv`` and the contact sheets there.
    ``on_bad``: ``"error"`` stops at an unreadable annotation or image naming the file, ``"skip"``
    leaves it out with a warning (and lists it in ``unreadable``). ``workers``: decoding threads
    (default: the usable CPUs). ``load_options`` go to :func:`detlab.data.load_dataset`.
    """
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {ON_BAD_CHOICES}, got {on_bad!r}")
    config = config or AuditConfig()
    seconds = {}
    started = time.perf_counter()
    datasets = load_splits(data, splits, on_bad=on_bad, **load_options)
    images, classes = collect_images(datasets)
    seconds["load"] = time.perf_counter() - started
    name = data if isinstance(data, str) else next(iter(datasets.values())).name or "data set"

    started = time.perf_counter()
    duplicates, rejected, unreadable = audit_duplicates(images, config, on_bad, workers, progress)
    seconds["duplicates"] = time.perf_counter() - started

    started = time.perf_counter()
    boxes = audit_boxes(images, classes, config)
    seconds["boxes"] = time.perf_counter() - started

    suspects = None
    if predictions is not None:
        started = time.perf_counter()
        suspects = audit_predictions(images, classes, predictions, config, prediction_classes, progress)
        seconds["suspects"] = time.perf_counter() - started

    split_sizes = Counter(split for image in images for split in image.splits)
    result = AuditResult(
        name=name,
        classes=classes,
        splits={split: split_sizes.get(split, 0) for split in datasets},
        num_images=len(images),
        num_boxes=sum(len(image.boxes) for image in images),
        duplicates=duplicates,
        rejected_candidates=rejected,
        shared_files=[_image_ref(image) for image in images if len(image.splits) > 1],
        suspects=suspects,
        unreadable=unreadable,
        config=config,
        seconds=seconds,
        **boxes,
    )
    result.seconds = {key: round(value, 3) for key, value in seconds.items()}
    if out_dir is not None:
        write_report(result, out_dir)
    return result


SUSPECT_COLUMNS = ("rank", "kind", "score", "image_id", "path", "splits", "label_class", "label_x1", "label_y1",
                   "label_x2", "label_y2", "det_class", "det_score", "det_x1", "det_y1", "det_x2", "det_y2",
                   "labelled_class_score")  # fmt: skip


def write_suspects_csv(suspects: list[Suspect], path: str | Path) -> Path:
    """``suspects`` as CSV, one row each in rank order (columns: :data:`SUSPECT_COLUMNS`; boxes as
    ``x1, y1, x2, y2`` pixels, empty where the suspect has no such box)."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUSPECT_COLUMNS)
        for s in suspects:
            label_box = s.label_box or [""] * 4
            det_box = s.det_box or [""] * 4
            writer.writerow(
                [
                    s.rank,
                    s.kind,
                    s.score,
                    s.image_id,
                    s.path,
                    "+".join(s.splits),
                    s.label_class or "",
                    *label_box,
                    s.det_class or "",
                    "" if s.det_score is None else s.det_score,
                    *det_box,
                    "" if s.labelled_class_score is None else s.labelled_class_score,
                ]
            )
    return path


def _table(header: list[str], rows: list[list], total: int | None = None) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows[:MAX_TABLE_ROWS]]
    total = len(rows) if total is None else total
    if total > MAX_TABLE_ROWS:
        lines.append(f"\n... and {total - MAX_TABLE_ROWS} more in audit.json.")
    return lines + [""]


def _name(path: str) -> str:
    return Path(path).name


def format_report(result: AuditResult) -> str:
    """``audit.md``: the summary, the counts, every finding (first 50 of each) and the settings."""
    sections = (
        _title_section,
        _counts_section,
        _duplicate_images_section,
        _rejected_candidates_section,
        _shared_files_section,
        _duplicate_boxes_section,
        _class_conflicts_section,
        _outliers_section,
        _empty_images_section,
        _classes_section,
        _suspects_section,
        _unreadable_section,
        _settings_section,
    )
    return "\n".join(line for section in sections for line in section(result))


def _title_section(result: AuditResult) -> list[str]:
    """The title, the one-line summary and the size of the data set."""
    return [
        f"# Data audit: {result.name}",
        "",
        f"**{result.summary()}**",
        "",
        f"{result.num_images} images, {result.num_boxes} boxes, {len(result.classes)} classes; splits: "
        + ", ".join(f"{split} {number}" for split, number in result.splits.items()),
        "",
    ]


def _counts_section(result: AuditResult) -> list[str]:
    return ["## Counts", ""] + _table(
        ["finding", "count"], [[key, value] for key, value in result.counts().items()]
    )


def _duplicate_images_section(result: AuditResult) -> list[str]:
    """The duplicate image pairs, leaks first."""
    lines = [
        "## Duplicate images",
        "",
        f"Perceptual hash within {result.config.hash_distance} bits of 64, then a pixel check (similarity >= "
        f"{result.config.pixel_similarity}). Contact sheet: `duplicates.png`.",
        "",
    ]
    if not result.duplicates:
        return lines + ["None found.", ""]
    return lines + _table(
        ["leak", "split", "image", "split", "image", "hash bits", "pixels"],
        [
            [
                "yes" if p.across_splits else "",
                "+".join(p.splits_a),
                _name(p.path_a),
                "+".join(p.splits_b),
                _name(p.path_b),
                p.hash_distance,
                f"{p.pixel_similarity:.3f}",
            ]
            for p in result.duplicates
        ],
    )


def _rejected_candidates_section(result: AuditResult) -> list[str]:
    """Under the duplicate images (no heading of its own): the closest calls the pixel check
    turned down, to judge its threshold by; nothing when there are none."""
    if not result.rejected_candidates:
        return []
    return ["Closest candidates the pixel check turned down:", ""] + _table(
        ["image", "image", "hash bits", "pixels"],
        [
            [_name(p.path_a), _name(p.path_b), p.hash_distance, f"{p.pixel_similarity:.3f}"]
            for p in result.rejected_candidates
        ],
    )


def _shared_files_section(result: AuditResult) -> list[str]:
    """Image files listed in several splits; no section when there are none."""
    if not result.shared_files:
        return []
    return ["## Images listed in several splits", ""] + _table(
        ["image", "splits"],
        [[_name(ref["path"]), "+".join(ref["splits"])] for ref in result.shared_files],
    )


def _duplicate_boxes_section(result: AuditResult) -> list[str]:
    heading = f"## Duplicate boxes (one class, IoU > {result.config.duplicate_iou})"
    return _box_pairs_section(heading, result.duplicate_boxes)


def _class_conflicts_section(result: AuditResult) -> list[str]:
    heading = f"## Boxes of two classes on one object (IoU > {result.config.duplicate_iou})"
    return _box_pairs_section(heading, result.class_conflicts)


def _box_pairs_section(heading: str, findings: list[BoxFinding]) -> list[str]:
    """A section of box pairs on one object (``findings``: duplicate boxes or class conflicts)."""
    if not findings:
        return [heading, "", "None found.", ""]
    return [heading, ""] + _table(
        ["image", "split", "box", "class", "other box", "other class", "IoU"],
        [
            [_name(f.path), "+".join(f.splits), f.box, f.label, f.other_box, f.other_label, f"{f.value:.3f}"]
            for f in findings
        ],
    )


def _outliers_section(result: AuditResult) -> list[str]:
    lines = [
        f"## Size and aspect outliers (|robust z| > {result.config.outlier_z} within the class)",
        "",
        "Size: sqrt(box area / image area); aspect: width / height; z on a log scale. Boxes cut by the image "
        "border are flagged only for being too large.",
        "",
    ]
    if not result.outliers:
        return lines + ["None found.", ""]
    return lines + _table(
        ["image", "split", "box", "class", "what", "value", "z"],
        [
            [
                _name(f.path),
                "+".join(f.splits),
                f.box,
                f.label,
                f.kind.removesuffix("_outlier"),
                f"{f.value:.3g}",
                f.z,
            ]
            for f in result.outliers
        ],
    )


def _empty_images_section(result: AuditResult) -> list[str]:
    if not result.empty_images:
        return ["## Images without objects", "", "None.", ""]
    return ["## Images without objects", ""] + _table(
        ["image", "split"], [[_name(ref["path"]), "+".join(ref["splits"])] for ref in result.empty_images]
    )


def _classes_section(result: AuditResult) -> list[str]:
    """The class-imbalance table: boxes of each class per split, in all, and against the largest."""
    if not result.class_table:
        return ["## Classes", ""]
    split_keys = [
        key for key in result.class_table[0] if key not in ("class", "total", "share", "vs_largest")
    ]
    return ["## Classes", ""] + _table(
        ["class", *split_keys, "total", "share", "largest / this"],
        [
            [
                row["class"],
                *(row[key] for key in split_keys),
                row["total"],
                f"{100 * row['share']:.1f}%",
                "-" if math.isinf(row["vs_largest"]) else f"{row['vs_largest']:.1f}",
            ]
            for row in result.class_table
        ],
    )


def _suspects_section(result: AuditResult) -> list[str]:
    """The top of the ranked label suspects; no section without predictions."""
    if result.suspects is None:
        return []
    lines = [
        "## Likely label mistakes (top of `suspects.csv`)",
        "",
        "Score: how strongly the model contradicts the label (see `docs/data.md`). Contact sheet: "
        "`suspects.png`.",
        "",
    ]
    return lines + _table(
        ["rank", "kind", "score", "image", "label", "label box", "model", "model box"],
        [
            [
                s.rank,
                s.kind,
                f"{s.score:.3f}",
                _name(s.path),
                s.label_class or "",
                s.label_box or "",
                f"{s.det_class} {s.det_score:.2f}" if s.det_class else "",
                s.det_box or "",
            ]
            for s in result.suspects
        ],
    )


def _unreadable_section(result: AuditResult) -> list[str]:
    if not result.unreadable:
        return []
    return ["## Unreadable images (skipped)", ""] + [f"- {item}" for item in result.unreadable] + [""]


def _settings_section(result: AuditResult) -> list[str]:
    """The thresholds the audit ran with and the seconds each part took."""
    return [
        "## Settings",
        "",
        "```",
        *(f"{key}: {value}" for key, value in asdict(result.config).items()),
        "```",
        "",
        "Seconds: " + ", ".join(f"{key} {value:.2f}" for key, value in result.seconds.items()),
        "",
    ]


def write_report(result: AuditResult, out_dir: str | Path) -> dict[str, str]:
    """Write ``audit.md``, ``audit.json``, ``suspects.csv`` (with predictions) and the contact sheets
    of ``result`` under ``out_dir``; returns (and records in ``result.files``) name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    limit = result.config.sheet_items
    sheets = {
        "duplicates.png": lambda path: audit_sheets.duplicate_sheet(result.duplicates, path, limit),
        "boxes.png": lambda path: audit_sheets.box_sheet(
            result.duplicate_boxes + result.class_conflicts + result.outliers, path, limit
        ),
        "suspects.png": lambda path: audit_sheets.suspect_sheet(result.suspects or [], path, limit),
    }
    for file_name, draw in sheets.items():
        if draw(out_dir / file_name) is not None:
            files[file_name] = str(out_dir / file_name)
    if result.suspects is not None:
        files["suspects.csv"] = str(write_suspects_csv(result.suspects, out_dir / "suspects.csv"))
    files["audit.md"] = str(out_dir / "audit.md")
    files["audit.json"] = str(out_dir / "audit.json")
    result.files = files
    (out_dir / "audit.md").write_text(format_report(result))
    (out_dir / "audit.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return files


def run_audit(
    data: str,
    out_dir: str | Path,
    splits: Iterable[str] | None = None,
    fail_on: Iterable[str] = (),
    predictions: Mapping | None = None,
    prediction_classes: list[str] | None = None,
    config: AuditConfig | None = None,
    on_bad: str = "error",
    **load_options,
) -> tuple[AuditResult, bool]:
    """What ``detlab data audit DATA --out DIR [--fail-on ...]`` does: audit with a progress bar,
    write the report, print where it is and the one-line summary last. Returns ``(result,
    failed)``; ``failed`` is :meth:`AuditResult.should_fail` for ``fail_on`` (the caller turns it
    into the exit code)."""
    fail_on = check_fail_on(fail_on)  # an unknown name fails now, not after the audit
    result = audit(
        data,
        predictions=predictions,
        out_dir=out_dir,
        splits=splits,
        config=config,
        prediction_classes=prediction_classes,
        on_bad=on_bad,
        progress=True,
        **load_options,
    )
    print(
        f"{result.name}: {result.num_images} images, {result.num_boxes} boxes audited in "
        f"{sum(result.seconds.values()):.1f} s; report in {Path(out_dir) / 'audit.md'}"
    )
    failed = result.should_fail(fail_on)
    if failed:
        found = ", ".join(name for name in fail_on if result.should_fail([name]))
        print(f"failing (--fail-on): found {found}")
    print(result.summary())
    return result, failed
