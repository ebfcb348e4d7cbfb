"""Data set statistics, in the spirit of the classic PASCAL VOC / ImageNet / COCO comparison tables.

Object sizes follow COCO's definition by box area: small < 32^2, medium < 96^2, large otherwise
(COCO measures segment area; for boxes this is the usual stand-in).
"""

from __future__ import annotations

from collections import Counter

from detlab.boxes import area
from detlab.data.schema import DetectionDataset

SMALL_AREA, MEDIUM_AREA = 32**2, 96**2


def dataset_stats(dataset: DetectionDataset) -> dict:
    """Counts and distributions as a plain dict (JSON-ready)."""
    per_class = Counter()
    sizes = Counter()
    objects_per_image = []
    widths, heights = [], []
    num_difficult = num_crowd = 0
    for record in dataset.records:
        objects_per_image.append(len(record.labels))
        widths.append(record.width)
        heights.append(record.height)
        for label in record.labels.tolist():
            per_class[dataset.classes[label - 1]] += 1
        for value in area(record.boxes).tolist():
            sizes["small" if value < SMALL_AREA else "medium" if value < MEDIUM_AREA else "large"] += 1
        num_difficult += int(record.difficult.sum())
        num_crowd += int(record.iscrowd.sum())
    num_images, num_objects = len(dataset.records), sum(objects_per_image)
    problems = getattr(dataset, "problems", None)
    return {
        "name": dataset.name,
        "classes": len(dataset.classes),
        "images": num_images,
        "objects": num_objects,
        "objects_per_image_mean": num_objects / num_images if num_images else 0.0,
        "objects_per_image_max": max(objects_per_image, default=0),
        "images_without_objects": sum(1 for n in objects_per_image if n == 0),
        "objects_per_class": {name: per_class.get(name, 0) for name in dataset.classes},
        "box_sizes": {key: sizes.get(key, 0) for key in ("small", "medium", "large")},
        "difficult": num_difficult,
        "crowd": num_crowd,
        "image_width_range": [min(widths, default=0), max(widths, default=0)],
        "image_height_range": [min(heights, default=0), max(heights, default=0)],
        "skipped": list(problems.skipped) if problems else [],
        "fixed": list(problems.fixed) if problems else [],
    }


def format_stats(stats: dict) -> str:
    """A Markdown table (readable in a terminal too) of :func:`dataset_stats`' output."""
    num_objects = max(stats["objects"], 1)
    rows = [
        ("classes", stats["classes"]),
        ("images", stats["images"]),
        ("objects", stats["objects"]),
        ("objects per image (mean)", f"{stats['objects_per_image_mean']:.2f}"),
        ("objects per image (max)", stats["objects_per_image_max"]),
        ("images without objects", stats["images_without_objects"]),
        ("difficult / crowd objects", f"{stats['difficult']} / {stats['crowd']}"),
        ("image width range", "{} - {}".format(*stats["image_width_range"])),
        ("image height range", "{} - {}".format(*stats["image_height_range"])),
    ]
    for size, count in stats["box_sizes"].items():
        bound = {"small": "area < 32^2", "medium": "32^2 <= area < 96^2", "large": "area >= 96^2"}[size]
        rows.append((f"{size} boxes ({bound})", f"{count} ({100 * count / num_objects:.1f}%)"))
    for name, count in stats["objects_per_class"].items():
        rows.append((f"class {name}", f"{count} ({100 * count / num_objects:.1f}%)"))
    label_width = max(len(label) for label, _ in rows)
    value_width = max(len(str(value)) for _, value in rows)
    lines = [
        f"## {stats['name']}",
        "",
        f"| {'':<{label_width}} | {'value':<{value_width}} |",
        f"|{'-' * (label_width + 2)}|{'-' * (value_width + 2)}|",
    ]
    lines += [f"| {label:<{label_width}} | {value!s:<{value_width}} |" for label, value in rows]
    if stats["fixed"] or stats["skipped"]:
        lines += ["", f"Repaired ({len(stats['fixed'])}):"] + [f"- {item}" for item in stats["fixed"]]
        if stats["skipped"]:
            lines += [f"Skipped ({len(stats['skipped'])}):"] + [f"- {item}" for item in stats["skipped"]]
    return "\n".join(lines)
