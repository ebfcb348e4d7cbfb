"""Settings chosen from the training data before a run starts: the input size and the anchors.

A field set to ``"auto"`` (Faster R-CNN's ``min_size``, ``anchor_sizes`` and ``aspect_ratios``, yolo's ``input_size``
by default) is replaced by a value measured on the training split, and the run's resolved config
(``config.yaml``, every checkpoint) stores the value, so the run is reproducible and a resumed
run reuses it. Built without data (``MODELS[...]`` in Python), ``"auto"`` falls back to the fixed
defaults of :class:`~detlab.models.rpn.RPNConfig` and :class:`~detlab.models.transform.InputSizeConfig`.

- **Input size** (:func:`choose_min_size`): the short side at which the smaller objects (the
  10th percentile of box sides) keep ``SMALL_OBJECT_STRIDES`` finest-stride cells, within
  ``MIN_SIZE_BOUNDS`` (a CPU's budget) and never above the images' own median short side (no
  blowing up); ``max_size`` keeps the fallback's 4:3. A one-stage detector's ``input_size`` (the
  longer side) follows the same rule within ``INPUT_SIZE_BOUNDS``.
- **Anchors** (:func:`anchor_candidates`): after that resize, sizes at evenly spaced quantiles of
  the box sides (the square root of the area), or in geometric steps over their 2nd-98th
  percentile range, spread smallest-first over the feature levels; aspect ratios (height /
  width) at the 1/6, 1/2 and 5/6 quantiles of the boxes' ratios. The candidate that covers the
  classes best (the mean over classes of the boxes' mean best IoU, so a rare small class counts
  as much as a common one) is used if it beats the fixed defaults.
- **Coverage** (:func:`anchor_coverage`): for every training box after the resize, the best IoU
  with the anchors the RPN will lay on that image (the very grid, strides and padding): the
  share reaching the RPN's positive threshold (best possible recall) and the mean.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torchvision.ops import box_iou

from detlab.config import is_auto
from detlab.models.contract import FitGeometry, Method
from detlab.models.rpn import AnchorGenerator, RPNConfig, split_anchor_sizes
from detlab.models.transform import InputSizeConfig, batcher_from_config, max_size_for

SMALL_OBJECT_STRIDES = 2.5  # finest-stride cells the 10th-percentile box side should span
MIN_SIZE_BOUNDS = (320, 512)  # the short sides auto may choose (CPU budget); multiples of 32
# The longer sides a one-stage detector's input_size auto may choose: from its fixed 416 (where
# yolo was measured on BCCD) up for small objects, down only to images' own smaller size.
INPUT_SIZE_BOUNDS = (416, 640)
POOR_MEAN_IOU = 0.6  # coverage below this is worth a warning when the anchors were set by hand
MAX_IMAGES = 400  # images measured for coverage (a seeded sample of larger sets)


def concrete(config, fallbacks: dict | None = None):
    """``config`` with every ``"auto"`` field fitted to data replaced by its fallback:
    ``fallbacks[name]``, else the fixed default of the base config that declares the field
    (:class:`RPNConfig`, :class:`InputSizeConfig`), ``max_size`` following ``min_size``; unchanged
    when nothing is ``"auto"``. The one place an ``"auto"`` setting becomes a value without data:
    every build function of a method with ``"auto"`` fields calls it first. An ``"auto"`` of a
    field without a fallback is not fitted to data and is kept (R-CNN's ``proposal_cache_dir``:
    the user cache folder, found where the cache is opened)."""
    fallbacks = {
        **dataclasses.asdict(RPNConfig()),
        **dataclasses.asdict(InputSizeConfig()),
        **(fallbacks or {}),
    }
    values = dataclasses.asdict(config)
    changes = {}
    for name, value in values.items():
        if name in fallbacks and isinstance(value, str) and not is_auto(value):
            raise ValueError(f"model.{name}={value!r}: expected a number (or numbers) or auto")
        if is_auto(value) and name in fallbacks and name != "max_size":  # max_size follows min_size below
            changes[name] = fallbacks[name]
    if is_auto(values.get("max_size")):
        changes["max_size"] = max_size_for(changes.get("min_size", values.get("min_size")))
    return dataclasses.replace(config, **changes) if changes else config


def _sample(records, seed: int = 0) -> list:
    if len(records) <= MAX_IMAGES:
        return list(records)
    chosen = np.random.default_rng(seed).choice(len(records), MAX_IMAGES, replace=False)
    return [records[index] for index in sorted(chosen)]


def box_table(records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes float64 [N, 4] xyxy, image index [N], image sizes [I, 2] as (height, width))``."""
    boxes, owners, sizes = [], [], []
    for index, record in enumerate(records):
        record_boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        boxes.append(record_boxes)
        owners.append(np.full(len(record_boxes), index))
        sizes.append((record.height, record.width))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros((0, 2))
    return np.concatenate(boxes), np.concatenate(owners), np.asarray(sizes, dtype=np.float64)


def choose_side(
    records, finest_stride: float, which: str = "short", bounds: tuple[int, int] = MIN_SIZE_BOUNDS
) -> tuple[int, dict]:
    """The image side (``which``: ``"short"`` for ``min_size``, ``"long"`` for a one-stage
    detector's ``input_size``) for these training records (see the module docstring), and the
    numbers it came from."""
    boxes, _, sizes = box_table(_sample(records))
    if not len(sizes):
        raise ValueError("no training images to choose the input size from")
    native = float(np.median(sizes.min(1) if which == "short" else sizes.max(1)))
    sides = np.sqrt(
        np.clip(boxes[:, 2] - boxes[:, 0], 1e-6, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1e-6, None)
    )
    small = float(np.quantile(sides, 0.1)) if len(sides) else native
    wanted = native * SMALL_OBJECT_STRIDES * finest_stride / max(small, 1e-6)
    low, high = bounds
    high = min(high, max(low, native))  # no blowing up beyond the images' own size
    side = int(np.clip(round(wanted / 32) * 32, low, high))
    if native < low:
        side = int(max(32, round(native / 32) * 32))  # small images stay as they are
    return side, {
        f"median_{which}_side": native,
        "box_side_p10": small,
        "wanted_side": wanted,
        "bounds": [low, high],
        "side": side,
        "which": which,
    }


def choose_min_size(records, finest_stride: float) -> tuple[int, dict]:
    """The short side ``min_size`` for these training records (:func:`choose_side`)."""
    return choose_side(records, finest_stride, "short", MIN_SIZE_BOUNDS)


def resized_boxes(records, batcher) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Per image: ``((padded height, padded width), boxes [N, 4])`` after ``batcher``'s resize."""
    divisor = batcher.size_divisible
    result = []
    for record in records:
        scale = batcher.scale_for(record.height, record.width)
        height, width = round(record.height * scale), round(record.width * scale)
        padded = (int(np.ceil(height / divisor) * divisor), int(np.ceil(width / divisor) * divisor))
        result.append((padded, np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4) * scale))
    return result


def anchor_coverage(records, generator, strides, batcher, positive_iou: float = 0.7) -> dict:
    """How well ``generator``'s anchors on ``strides`` cover the boxes of ``records`` after
    ``batcher``'s resize: ``{"boxes", "best_possible_recall", "mean_best_iou", "best_iou_p10"}``.
    Best possible recall is the share of boxes whose best anchor reaches ``positive_iou``."""
    best, labels = [], []
    sample = _sample(records)
    for record, (padded, boxes) in zip(sample, resized_boxes(sample, batcher)):
        if not len(boxes):
            continue
        feature_sizes = [(int(padded[0] // stride), int(padded[1] // stride)) for stride in strides]
        anchors = torch.cat(generator.forward(feature_sizes, list(strides)))
        best.append(box_iou(torch.as_tensor(boxes, dtype=torch.float32), anchors).max(1).values.numpy())
        labels.append(np.asarray(record.labels, dtype=np.int64).reshape(-1))
    values = np.concatenate(best) if best else np.zeros(0)
    if not len(values):
        return {
            "boxes": 0,
            "best_possible_recall": float("nan"),
            "mean_best_iou": float("nan"),
            "class_mean_best_iou": float("nan"),
            "best_iou_p10": float("nan"),
            "positive_iou": positive_iou,
        }
    labels = np.concatenate(labels)
    per_class = [float(values[labels == label].mean()) for label in np.unique(labels)]
    return {
        "boxes": int(len(values)),
        "best_possible_recall": float((values >= positive_iou).mean()),
        "mean_best_iou": float(values.mean()),
        "class_mean_best_iou": float(np.mean(per_class)),
        "best_iou_p10": float(np.quantile(values, 0.1)),
        "positive_iou": positive_iou,
    }


def anchor_candidates(records, batcher, num_levels: int, sizes_per_level: int, num_ratios: int = 3) -> list:
    """Candidate ``(anchor_sizes, aspect_ratios)`` pairs from the boxes after ``batcher``'s resize:
    sizes at evenly spaced quantiles of the box sides (dense where most boxes are), and sizes in
    geometric steps from the 2nd to the 98th percentile (the whole range, rare classes too); the
    ratios at evenly spaced quantiles of height / width."""
    pieces = [boxes for _, boxes in resized_boxes(_sample(records), batcher) if len(boxes)]
    if not pieces:
        raise ValueError("no training boxes to fit the anchors to")
    boxes = np.concatenate(pieces)
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 1.0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 1.0, None)
    count = num_levels * sizes_per_level
    log_sides = np.log(np.sqrt(widths * heights))
    by_quantile = np.exp(np.quantile(log_sides, (np.arange(count) + 0.5) / count))
    low, high = np.quantile(log_sides, (0.02, 0.98))
    by_range = np.exp(np.linspace(low, high, count))
    ratios = np.exp(np.quantile(np.log(heights / widths), (np.arange(num_ratios) + 0.5) / num_ratios))
    ratios = tuple(sorted({float(round(value, 2)) for value in ratios}))
    return [
        (tuple(float(round(value, 1)) for value in np.maximum.accumulate(sizes)), ratios)
        for sizes in (by_quantile, by_range)
    ]


def fit_to_data(run_config, records, method: Method, num_classes: int) -> tuple[object, dict]:
    """``run_config`` with its model's ``"auto"`` fields chosen from the training ``records``,
    and a report (the choices, and the anchor coverage of what the run will use). ``method``
    builds the model for ``num_classes`` classes, whose :meth:`~detlab.models.contract.Detector.fit_geometry`
    says what can be fitted (its strides, and whether it has anchors)."""
    config = run_config.model
    values = dataclasses.asdict(config)
    report: dict = {}
    auto_input = is_auto(values.get("min_size"))
    if (
        not auto_input
        and "anchor_sizes" not in values
        and not any(is_auto(value) for value in values.values())
    ):
        return run_config, report
    geometry = method(config, num_classes).fit_geometry()
    if geometry is None:
        return dataclasses.replace(run_config, model=concrete(config)), report
    strides = list(geometry.strides)
    if is_auto(values.get("input_size")):  # a one-stage detector's longer side
        input_size, report["input_size"] = choose_side(records, min(strides), "long", INPUT_SIZE_BOUNDS)
        config = dataclasses.replace(config, input_size=input_size)
    if auto_input:
        min_size, report["input_size"] = choose_min_size(records, min(strides))
        max_size = max_size_for(min_size) if is_auto(config.max_size) else max(int(config.max_size), min_size)
        config = dataclasses.replace(config, min_size=min_size, max_size=max_size)
    config = concrete(config)
    if geometry.anchor_positive_iou is not None and "anchor_sizes" in values:
        config = fit_anchors(run_config.model, config, records, geometry, report)
    report["resolved"] = {
        key: (list(value) if isinstance(value, tuple) else value)
        for key, value in dataclasses.asdict(config).items()
        if key in ("min_size", "max_size", "input_size", "anchor_sizes", "aspect_ratios")
    }
    return dataclasses.replace(run_config, model=config), report


def fit_anchors(requested, config, records, geometry: FitGeometry, report: dict):
    """``config`` with anchors chosen for ``records`` where ``requested`` (the model settings
    as written) says ``"auto"``; the fixed, fitted and chosen anchor sets' coverage go to
    ``report``."""
    strides = list(geometry.strides)
    batcher = batcher_from_config(config, strides)
    positive_iou = geometry.anchor_positive_iou
    fixed = concrete(requested)
    num_levels = len(strides)

    measured_before: dict = {}

    def coverage(sizes, ratios) -> dict:
        """Measured once per anchor set: the chosen set's numbers are reused for the report."""
        key = (tuple(sizes), tuple(ratios))
        if key not in measured_before:
            generator = AnchorGenerator(split_anchor_sizes(sizes, num_levels), ratios)
            measured_before[key] = anchor_coverage(records, generator, strides, batcher, positive_iou)
        return measured_before[key]

    auto_sizes, auto_ratios = is_auto(requested.anchor_sizes), is_auto(requested.aspect_ratios)
    sizes, ratios = fixed.anchor_sizes, fixed.aspect_ratios
    report["anchors_fixed"] = {
        "anchor_sizes": list(sizes),
        "aspect_ratios": list(ratios),
        **coverage(sizes, ratios),
    }
    if auto_sizes or auto_ratios:
        # The candidate that covers every class best (mean over classes of the mean best IoU),
        # if it beats the fixed defaults.
        best_score = report["anchors_fixed"]["class_mean_best_iou"]
        report["anchors_fitted"] = []
        per_level = len(fixed.anchor_sizes) // num_levels
        for candidate_sizes, candidate_ratios in anchor_candidates(records, batcher, num_levels, per_level):
            candidate = (
                candidate_sizes if auto_sizes else sizes,
                candidate_ratios if auto_ratios else ratios,
            )
            measured = coverage(*candidate)
            report["anchors_fitted"].append(
                {"anchor_sizes": list(candidate[0]), "aspect_ratios": list(candidate[1]), **measured}
            )
            if measured["class_mean_best_iou"] > best_score:
                best_score, chosen = measured["class_mean_best_iou"], candidate
        if best_score > report["anchors_fixed"]["class_mean_best_iou"]:
            sizes, ratios = chosen
    config = dataclasses.replace(config, anchor_sizes=tuple(sizes), aspect_ratios=tuple(ratios))
    used = coverage(sizes, ratios)
    report["anchors"] = {
        "anchor_sizes": list(sizes),
        "aspect_ratios": list(ratios),
        "chosen": "fitted"
        if (auto_sizes or auto_ratios) and (sizes, ratios) != (fixed.anchor_sizes, fixed.aspect_ratios)
        else "fixed",
        **used,
    }
    if not (auto_sizes or auto_ratios) and used["mean_best_iou"] < POOR_MEAN_IOU:
        warnings.warn(
            f"the anchors cover the training boxes poorly (mean best IoU {used['mean_best_iou']:.2f}, "
            f"{100 * used['best_possible_recall']:.0f}% of boxes reach IoU {positive_iou}); "
            "model.anchor_sizes=auto and model.aspect_ratios=auto fit them to the data",
            stacklevel=3,
        )
    return config


def describe(report: dict) -> str:
    """One or two lines for the run's log."""
    lines = []
    if "input_size" in report:
        size = report["input_size"]
        which = size.get("which", "short")
        lines.append(
            f"input size from the data: {which} side {size['side']} (images' median {which} side "
            f"{size[f'median_{which}_side']:.0f}, 10th-percentile box side {size['box_side_p10']:.0f} px)"
        )
    if "anchors" in report:
        anchors = report["anchors"]
        sizes = ", ".join(f"{value:g}" for value in anchors["anchor_sizes"])
        ratios = ", ".join(f"{value:g}" for value in anchors["aspect_ratios"])
        lines.append(
            f"anchors ({anchors['chosen']}): sizes {sizes}; ratios {ratios}; cover "
            f"{100 * anchors['best_possible_recall']:.1f}% of the training boxes at IoU "
            f">= {anchors['positive_iou']} (mean best IoU {anchors['mean_best_iou']:.3f})"
        )
        if anchors["chosen"] == "fitted":
            fixed = report["anchors_fixed"]
            lines[-1] += (
                f"; the fixed defaults: {100 * fixed['best_possible_recall']:.1f}%, "
                f"{fixed['mean_best_iou']:.3f}"
            )
        elif anchors["mean_best_iou"] < POOR_MEAN_IOU:
            lines[-1] += "; poor: model.anchor_sizes=auto would fit them to the data"
    return "\n".join(lines)


def detector_fit_summary(records, run_config, method: Method, num_classes: int) -> dict:
    """What a run of ``run_config`` (e.g. Faster R-CNN's defaults) would choose for ``records``:
    the input size, the box sides in pixels after that resize (percentiles, and COCO's size
    bins), and the anchor coverage of the fixed and the fitted anchors (``detlab data stats``).
    ``method``, ``num_classes`` as for :func:`fit_to_data`."""
    fitted, report = fit_to_data(run_config, records, method, num_classes)
    strides = list(method(fitted.model, num_classes).fit_geometry().strides)
    batcher = batcher_from_config(fitted.model, strides)
    pieces = [boxes for _, boxes in resized_boxes(_sample(records), batcher) if len(boxes)]
    boxes = np.concatenate(pieces) if pieces else np.zeros((0, 4))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sides = np.sqrt(np.clip(areas, 0, None))
    percentiles = (5, 25, 50, 75, 95)
    return {
        **report,
        "resized_box_side_percentiles": {f"p{q}": float(np.percentile(sides, q)) for q in percentiles}
        if len(sides)
        else {},
        "resized_box_sizes": {
            "small": int((areas < 32**2).sum()),
            "medium": int(((areas >= 32**2) & (areas < 96**2)).sum()),
            "large": int((areas >= 96**2).sum()),
        },
    }


def format_fit_summary(summary: dict) -> str:
    """Markdown lines of :func:`detector_fit_summary`."""
    resolved = summary.get("resolved", {})
    lines = [
        "",
        f"### With Faster R-CNN's defaults (short side {resolved.get('min_size')}, long side at most "
        f"{resolved.get('max_size')})",
        "",
    ]
    percentiles = summary.get("resized_box_side_percentiles")
    if percentiles:
        lines.append(
            "box side after the resize, pixels (sqrt of the area): "
            + ", ".join(f"{key} {value:.0f}" for key, value in percentiles.items())
        )
        sizes = summary["resized_box_sizes"]
        lines.append(
            f"after the resize: {sizes['small']} small, {sizes['medium']} medium, {sizes['large']} large boxes"
        )
    for key, title in (("anchors_fixed", "fixed anchors"), ("anchors", "anchors train would use")):
        if key in summary:
            item = summary[key]
            lines.append(
                f"{title}: sizes {', '.join(f'{v:g}' for v in item['anchor_sizes'])}; ratios "
                f"{', '.join(f'{v:g}' for v in item['aspect_ratios'])}: {100 * item['best_possible_recall']:.1f}% "
                f"of boxes reach IoU {item['positive_iou']}, mean best IoU {item['mean_best_iou']:.3f}"
            )
    return "\n".join(lines)
