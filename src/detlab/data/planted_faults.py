"""Known faults planted into a copy of a VOC data set, to measure what an audit finds.

:func:`plant_faults` copies a VOC folder and plants, as issue 42 describes them: training images
copied into the test split (some byte for byte, some re-encoded at JPEG quality 70 and resized by
0.9, boxes scaled with them), boxes drawn twice (each side of the copy moved by at most 1 pixel,
keeping IoU > 0.9 with the original), classes swapped and boxes deleted. How many of each, and the
splits, quality and scale, are a :class:`FaultPlan`. Every fault touches a different object, and
none touches an image that is copied or a copy. ``planted.json`` in the copy (and the returned
:class:`PlantedFaults`) says where each one is, so an audit's findings can be scored.

The faults depend on the seed alone: one generator makes every draw, in a fixed order (the images
to copy, one shuffle of the candidate objects, the moves of the duplicate boxes, the new classes).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET
import numpy as np
from PIL import Image

from detlab.box_arrays import iou as pairwise_iou
from detlab.data.voc_files import find_image, read_split_ids, split_file_path

DUPLICATE_IOU = 0.9  # the audit's default: a twin must overlap its box more than this

Item = tuple[str, int]  # an object: (image id, its position among the image's objects)


@dataclass(frozen=True)
class FaultPlan:
    """What :func:`plant_faults` plants: ``num_copies`` images of split ``copy_from`` added to
    ``copy_to`` (the first ``num_reencoded`` re-encoded at JPEG ``quality`` and resized by
    ``scale``), ``num_duplicate_boxes`` boxes drawn twice (chosen among boxes at least
    ``min_box_side`` pixels a side), ``num_swapped`` boxes given another class and ``num_deleted``
    boxes removed."""

    num_copies: int = 10
    num_reencoded: int = 5
    num_duplicate_boxes: int = 10
    num_swapped: int = 20
    num_deleted: int = 20
    copy_from: str = "train"
    copy_to: str = "test"
    quality: int = 70
    scale: float = 0.9
    min_box_side: float = 20.0


@dataclass
class PlantedFaults:
    """Where the faults are. ``copies``: ``{"source", "copy", "reencoded", "scale"}`` (image ids);
    ``duplicate_boxes``: ``{"image_id", "box", "copy_box", "class"}``; ``swapped``: ``{"image_id",
    "box", "true_class", "new_class"}``; ``deleted``: ``{"image_id", "box", "class"}``. Boxes are
    ``[x1, y1, x2, y2]`` as written in the annotation."""

    copies: list[dict] = field(default_factory=list)
    duplicate_boxes: list[dict] = field(default_factory=list)
    swapped: list[dict] = field(default_factory=list)
    deleted: list[dict] = field(default_factory=list)


def _box(node) -> list[float]:
    box_node = node.find("bndbox")
    return [float(box_node.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")]


def _set_box(node, box: list[float]) -> None:
    box_node = node.find("bndbox")
    for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
        box_node.find(key).text = f"{value:.1f}".removesuffix(".0")


def _class_of(node) -> str:
    return node.findtext("name").strip()


def plant_faults(
    source: str | Path, out_dir: str | Path, seed: int = 0, plan: FaultPlan = FaultPlan()
) -> PlantedFaults:
    """Copy the VOC folder ``source`` to ``out_dir`` (which must not exist) and plant the faults of
    ``plan`` in the copy (see the module doc), drawn with ``seed``: each duplicate box's sides moved
    by at most 1 pixel, keeping IoU > 0.9; deleted boxes taken only from images that had two boxes
    or more. Returns where the faults are; also written to ``out_dir/planted.json``."""
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; plant faults into a fresh folder")
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns("planted.json"))
    rng = np.random.default_rng(seed)
    copies = _copy_into_other_split(out_dir, plan, rng)
    copied = {entry["source"] for entry in copies} | {entry["copy"] for entry in copies}
    annotations = out_dir / "Annotations"
    untouched = sorted(path.stem for path in annotations.glob("*.xml") if path.stem not in copied)
    objects = _Objects(source, annotations, untouched)
    if plan.num_swapped and len(objects.classes) < 2:
        raise ValueError(
            f"{source}: one class only ({objects.classes}); no class can be swapped (num_swapped=0)"
        )
    objects.shuffle(rng)
    planted = PlantedFaults(
        copies=copies,
        duplicate_boxes=_plant_duplicate_boxes(objects, plan.num_duplicate_boxes, plan.min_box_side, rng),
        swapped=_swap_classes(objects, plan.num_swapped, rng),
        deleted=_delete_boxes(objects, plan.num_deleted),
    )
    _write_record(out_dir, objects, planted)
    return planted


def _copy_into_other_split(out_dir: Path, plan: FaultPlan, rng: np.random.Generator) -> list[dict]:
    """Copy ``plan.num_copies`` images of split ``plan.copy_from``, drawn at random, into split
    ``plan.copy_to`` under new ids; the entries of :attr:`PlantedFaults.copies`."""
    source_ids = read_split_ids(out_dir, plan.copy_from)
    drawn = sorted(rng.choice(len(source_ids), size=plan.num_copies, replace=False))
    copies = [
        _copy_image(out_dir, source_ids[index], position < plan.num_reencoded, plan)
        for position, index in enumerate(drawn)
    ]
    with open(split_file_path(out_dir, plan.copy_to), "a") as handle:
        handle.writelines(f"{entry['copy']}\n" for entry in copies)
    return copies


def _copy_image(out_dir: Path, image_id: str, reencoded: bool, plan: FaultPlan) -> dict:
    """Copy one image and its annotation under a new id: byte for byte, or re-encoded and resized
    (boxes and size scaled with it)."""
    copy_id = f"{image_id}_{'q' if reencoded else 'copy'}"
    annotations = out_dir / "Annotations"
    tree = SafeET.parse(annotations / f"{image_id}.xml")
    root = tree.getroot()
    image_path = find_image(out_dir, image_id, root.findtext("filename"))
    if reencoded:
        file_name = f"{copy_id}.jpg"
        _reencode(image_path, out_dir / "JPEGImages" / file_name, root, plan)
    else:
        file_name = f"{copy_id}{image_path.suffix}"
        shutil.copyfile(image_path, out_dir / "JPEGImages" / file_name)
    if root.find("filename") is not None:
        root.find("filename").text = file_name
    tree.write(annotations / f"{copy_id}.xml")
    return {
        "source": image_id,
        "copy": copy_id,
        "reencoded": reencoded,
        "scale": plan.scale if reencoded else 1.0,
    }


def _reencode(image_path: Path, copy_path: Path, root, plan: FaultPlan) -> None:
    """Save the image resized by ``plan.scale`` at JPEG ``plan.quality``, and scale the boxes and
    size of its annotation ``root`` to match."""
    with Image.open(image_path) as image:
        image = image.convert("RGB")
        size = (round(image.width * plan.scale), round(image.height * plan.scale))
        image.resize(size, Image.Resampling.BILINEAR).save(copy_path, quality=plan.quality)
    for node in root.iter("object"):
        # Rounding the image size may cut a fraction of a pixel: keep the boxes inside.
        scaled = np.clip(np.array(_box(node)) * plan.scale, 0.0, [size[0], size[1]] * 2)
        _set_box(node, scaled.tolist())
    size_node = root.find("size")
    if size_node is not None:
        size_node.find("width").text, size_node.find("height").text = str(size[0]), str(size[1])


class _Objects:
    """The objects faults may go to (every object of the images neither copied nor a copy), their
    annotations parsed once, and which of them a fault already took: each object gets one fault."""

    def __init__(self, source: Path, annotations: Path, image_ids: list[str]) -> None:
        self.source = source  # named in errors
        self.trees = {image_id: SafeET.parse(annotations / f"{image_id}.xml") for image_id in image_ids}
        # Counted once, as read: a box may be deleted only from an image that had two or more.
        self.counts = {image_id: len(self._nodes(image_id)) for image_id in image_ids}
        self.items = [(image_id, index) for image_id in image_ids for index in range(self.counts[image_id])]
        self.classes = sorted({_class_of(node) for image_id in image_ids for node in self._nodes(image_id)})
        self.order = np.arange(len(self.items))
        self.taken: set[Item] = set()

    def _nodes(self, image_id: str) -> list:
        return list(self.trees[image_id].getroot().iter("object"))

    def shuffle(self, rng: np.random.Generator) -> None:
        """Draw the one order in which every kind of fault looks for its objects."""
        self.order = rng.permutation(len(self.items))

    def node(self, item: Item):
        """The object's XML node. Positions count the objects as read: duplicate boxes are appended
        after them, and deleted ones are removed only once all are picked (:meth:`remove`)."""
        return self._nodes(item[0])[item[1]]

    def pick(self, count: int, accept: Callable[[Item], bool]) -> list[Item]:
        """The first ``count`` objects, in the shuffled order, not yet taken that ``accept``
        allows; they are taken."""
        picked = []
        for position in self.order:
            if len(picked) == count:
                break
            item = self.items[position]
            if item not in self.taken and accept(item):
                self.taken.add(item)
                picked.append(item)
        if len(picked) < count:
            raise ValueError(
                f"{self.source}: only {len(picked)} objects fit for planting {count} faults of one kind"
            )
        return picked

    def smallest_side(self, item: Item) -> float:
        x1, y1, x2, y2 = _box(self.node(item))
        return min(x2 - x1, y2 - y1)

    def leaves_a_box(self, item: Item) -> bool:
        """Whether deleting the object still leaves its image a box; if so, it is counted as
        deleted (``pick`` takes every object its ``accept`` allows)."""
        if self.counts[item[0]] <= 1:
            return False
        self.counts[item[0]] -= 1
        return True

    def image_limits(self, image_id: str) -> list[float]:
        """``[width, height, width, height]`` from the annotation's size, or no limit without one."""
        size_node = self.trees[image_id].getroot().find("size")
        if size_node is None:
            return [np.inf] * 4
        return [float(size_node.findtext("width")), float(size_node.findtext("height"))] * 2

    def remove(self, items: list[Item]) -> None:
        # All nodes found first: removing one would shift the positions of the others.
        nodes = [(image_id, self.node((image_id, index))) for image_id, index in items]
        for image_id, node in nodes:
            self.trees[image_id].getroot().remove(node)


def _plant_duplicate_boxes(
    objects: _Objects, count: int, min_box_side: float, rng: np.random.Generator
) -> list[dict]:
    """Draw ``count`` boxes (at least ``min_box_side`` a side) twice, the twin slightly moved."""
    planted = []
    for image_id, index in objects.pick(count, lambda item: objects.smallest_side(item) >= min_box_side):
        node = objects.node((image_id, index))
        box = _box(node)
        twin = copy.deepcopy(node)
        # Kept inside the image, or the reader would clip it (a repair, and a different box).
        _set_box(twin, _nudged_box(box, objects.image_limits(image_id), rng).tolist())
        objects.trees[image_id].getroot().append(twin)
        planted.append({"image_id": image_id, "box": box, "copy_box": _box(twin), "class": _class_of(node)})
    return planted


def _nudged_box(box: list[float], limits: list[float], rng: np.random.Generator) -> np.ndarray:
    """``box`` with each side moved by -1, 0 or 1 pixel at random, inside ``limits``, not ``box``
    itself and with IoU above :data:`DUPLICATE_IOU` with it; when 20 draws find none (a small box),
    ``box`` with its right side moved in by a pixel."""
    for _attempt in range(20):
        moved = np.clip(np.array(box) + rng.integers(-1, 2, size=4), 0.0, limits)
        # Not an exact copy (too easy a case), and still one object: IoU above 0.9.
        if np.any(moved != box) and pairwise_iou(moved[None], np.array([box]))[0, 0] > DUPLICATE_IOU:
            return moved
    moved = np.array(box, dtype=float)
    moved[2] = moved[2] - 1
    return moved


def _swap_classes(objects: _Objects, count: int, rng: np.random.Generator) -> list[dict]:
    """Give ``count`` boxes another class, drawn among the data set's other classes."""
    planted = []
    for item in objects.pick(count, lambda item: True):
        node = objects.node(item)
        true_class = _class_of(node)
        new_class = str(rng.choice([name for name in objects.classes if name != true_class]))
        node.find("name").text = new_class
        planted.append(
            {"image_id": item[0], "box": _box(node), "true_class": true_class, "new_class": new_class}
        )
    return planted


def _delete_boxes(objects: _Objects, count: int) -> list[dict]:
    """Remove ``count`` boxes, never an image's last one."""
    picked = objects.pick(count, objects.leaves_a_box)
    nodes = [(item[0], objects.node(item)) for item in picked]
    planted = [
        {"image_id": image_id, "box": _box(node), "class": _class_of(node)} for image_id, node in nodes
    ]
    objects.remove(picked)
    return planted


def _write_record(out_dir: Path, objects: _Objects, planted: PlantedFaults) -> None:
    """Write the annotations the faults changed, and ``planted.json``."""
    changed = {
        entry["image_id"]
        for kind in (planted.duplicate_boxes, planted.swapped, planted.deleted)
        for entry in kind
    }
    for image_id in changed:
        objects.trees[image_id].write(out_dir / "Annotations" / f"{image_id}.xml")
    (out_dir / "planted.json").write_text(json.dumps(asdict(planted), indent=2) + "\n")


def read_planted(out_dir: str | Path) -> PlantedFaults:
    """The :class:`PlantedFaults` recorded in ``out_dir/planted.json``."""
    return PlantedFaults(**json.loads((Path(out_dir) / "planted.json").read_text()))
