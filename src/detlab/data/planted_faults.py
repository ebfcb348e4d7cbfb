"""Known faults planted into a copy of a VOC data set, to measure what an audit finds.

:func:`plant_faults` copies a VOC folder and plants, as issue 42 describes them: training images
copied into the test split (some byte for byte, some re-encoded at JPEG quality 70 and resized by
0.9, boxes scaled with them), boxes drawn twice (each side of the copy moved by at most 1 pixel,
keeping IoU > 0.9 with the original), classes swapped and boxes deleted. Every fault touches a different
object, and none touches an image that is copied or a copy. ``planted.json`` in the copy (and the
returned :class:`PlantedFaults`) says where each one is, so an audit's findings can be scored.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET
import numpy as np
from PIL import Image

from detlab.box_arrays import iou as pairwise_iou
from detlab.data.voc_files import find_image, read_split_ids

DUPLICATE_IOU = 0.9  # the audit's default: a twin must overlap its box more than this


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


def plant_faults(
    source: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    num_copies: int = 10,
    num_reencoded: int = 5,
    num_duplicate_boxes: int = 10,
    num_swapped: int = 20,
    num_deleted: int = 20,
    copy_from: str = "train",
    copy_to: str = "test",
    quality: int = 70,
    scale: float = 0.9,
    min_box_side: float = 20.0,
) -> PlantedFaults:
    """Copy the VOC folder ``source`` to ``out_dir`` (which must not exist) and plant faults in the
    copy (see the module doc): ``num_copies`` images of split ``copy_from`` added to ``copy_to`` (the
    first ``num_reencoded`` re-encoded at JPEG ``quality`` and resized by ``scale``),
    ``num_duplicate_boxes`` boxes drawn twice (chosen among boxes at least ``min_box_side`` pixels a
    side; each side moved by at most 1 pixel, keeping IoU > 0.9), ``num_swapped`` boxes given another class and
    ``num_deleted`` boxes removed (never an image's last box). Returns where they are; also written
    to ``out_dir/planted.json``."""
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; plant faults into a fresh folder")
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns("planted.json"))
    rng = np.random.default_rng(seed)
    planted = PlantedFaults()
    annotations = out_dir / "Annotations"

    train_ids = read_split_ids(out_dir, copy_from)
    chosen = [train_ids[i] for i in sorted(rng.choice(len(train_ids), size=num_copies, replace=False))]
    new_ids = []
    for position, image_id in enumerate(chosen):
        reencoded = position < num_reencoded
        copy_id = f"{image_id}_{'q' if reencoded else 'copy'}"
        tree = SafeET.parse(annotations / f"{image_id}.xml")
        root = tree.getroot()
        image_path = find_image(out_dir, image_id, root.findtext("filename"))
        if reencoded:
            with Image.open(image_path) as image:
                image = image.convert("RGB")
                size = (round(image.width * scale), round(image.height * scale))
                image.resize(size, Image.Resampling.BILINEAR).save(
                    out_dir / "JPEGImages" / f"{copy_id}.jpg", quality=quality
                )
            for node in root.iter("object"):
                # Rounding the image size may cut a fraction of a pixel: keep the boxes inside.
                scaled = np.clip(np.array(_box(node)) * scale, 0.0, [size[0], size[1]] * 2)
                _set_box(node, scaled.tolist())
            size_node = root.find("size")
            if size_node is not None:
                size_node.find("width").text, size_node.find("height").text = str(size[0]), str(size[1])
            file_name = f"{copy_id}.jpg"
        else:
            file_name = f"{copy_id}{image_path.suffix}"
            shutil.copyfile(image_path, out_dir / "JPEGImages" / file_name)
        if root.find("filename") is not None:
            root.find("filename").text = file_name
        tree.write(annotations / f"{copy_id}.xml")
        new_ids.append(copy_id)
        planted.copies.append({"source": image_id, "copy": copy_id, "reencoded": reencoded,
                               "scale": scale if reencoded else 1.0})  # fmt: skip
    with open(out_dir / "ImageSets" / "Main" / f"{copy_to}.txt", "a") as handle:
        handle.writelines(f"{image_id}\n" for image_id in new_ids)

    # Every object of every image that is neither copied nor a copy: (image id, object position).
    untouched = sorted(p.stem for p in annotations.glob("*.xml") if p.stem not in set(chosen) | set(new_ids))
    trees = {image_id: SafeET.parse(annotations / f"{image_id}.xml") for image_id in untouched}
    objects = [
        (image_id, index)
        for image_id in untouched
        for index, _ in enumerate(trees[image_id].getroot().iter("object"))
    ]
    classes = sorted(
        {node.findtext("name").strip() for tree in trees.values() for node in tree.getroot().iter("object")}
    )
    if num_swapped and len(classes) < 2:
        raise ValueError(f"{source}: one class only ({classes}); no class can be swapped (num_swapped=0)")
    order = rng.permutation(len(objects))
    taken: set[tuple[str, int]] = set()
    remaining = {image_id: len(list(tree.getroot().iter("object"))) for image_id, tree in trees.items()}

    def pick(count: int, accept) -> list[tuple[str, int]]:
        picked = []
        for position in order:
            if len(picked) == count:
                break
            item = objects[position]
            if item not in taken and accept(item):
                taken.add(item)
                picked.append(item)
        if len(picked) < count:
            raise ValueError(
                f"{source}: only {len(picked)} objects fit for planting {count} faults of one kind"
            )
        return picked

    def node_of(item):
        return list(trees[item[0]].getroot().iter("object"))[item[1]]

    def big_enough(item) -> bool:
        x1, y1, x2, y2 = _box(node_of(item))
        return min(x2 - x1, y2 - y1) >= min_box_side

    for item in pick(num_duplicate_boxes, big_enough):
        node = node_of(item)
        box = _box(node)
        size_node = trees[item[0]].getroot().find("size")
        # Kept inside the image, or the reader would clip it (a repair, and a different box).
        limits = (
            [float(size_node.findtext("width")), float(size_node.findtext("height"))] * 2
            if size_node is not None
            else [np.inf] * 4
        )
        for _attempt in range(20):
            moved = np.clip(np.array(box) + rng.integers(-1, 2, size=4), 0.0, limits)
            # Not an exact copy (too easy a case), and still one object: IoU above 0.9.
            if np.any(moved != box) and pairwise_iou(moved[None], np.array([box]))[0, 0] > DUPLICATE_IOU:
                break
        else:  # a small box: move one side by a pixel
            moved = np.array(box, dtype=float)
            moved[2] = moved[2] - 1
        twin = copy.deepcopy(node)
        _set_box(twin, moved.tolist())
        trees[item[0]].getroot().append(twin)
        planted.duplicate_boxes.append({"image_id": item[0], "box": box, "copy_box": _box(twin),
                                        "class": node.findtext("name").strip()})  # fmt: skip
    for item in pick(num_swapped, lambda item: True):
        node = node_of(item)
        true_class = node.findtext("name").strip()
        new_class = str(rng.choice([name for name in classes if name != true_class]))
        node.find("name").text = new_class
        planted.swapped.append({"image_id": item[0], "box": _box(node), "true_class": true_class,
                                "new_class": new_class})  # fmt: skip

    def deletable(item) -> bool:
        return remaining[item[0]] > 1

    deleted_nodes = []
    for item in pick(num_deleted, deletable):
        remaining[item[0]] -= 1
        node = node_of(item)
        deleted_nodes.append((item[0], node))
        planted.deleted.append(
            {"image_id": item[0], "box": _box(node), "class": node.findtext("name").strip()}
        )
    for image_id, node in deleted_nodes:  # removed last: the positions above index the original objects
        trees[image_id].getroot().remove(node)
    for image_id in {
        entry["image_id"]
        for kind in (planted.duplicate_boxes, planted.swapped, planted.deleted)
        for entry in kind
    }:
        trees[image_id].write(annotations / f"{image_id}.xml")
    (out_dir / "planted.json").write_text(json.dumps(asdict(planted), indent=2) + "\n")
    return planted


def read_planted(out_dir: str | Path) -> PlantedFaults:
    """The :class:`PlantedFaults` recorded in ``out_dir/planted.json``."""
    return PlantedFaults(**json.loads((Path(out_dir) / "planted.json").read_text()))
