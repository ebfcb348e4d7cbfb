"""The error report of a detector: what :mod:`detlab.eval.errors` found, as files a person reads.

:func:`write_error_report` writes into one folder:

- ``errors.json``: TIDE's dAP and error counts overall, per class and per object size, the operating
  point (best-F1 confidence, per-class precision/recall/F1 there) and the confusion matrix;
- ``errors.md``: the same as tables;
- ``errors.png``: TIDE-style bars, the dAP of the six error types and of the two special ones;
- ``confusion_matrix.png`` and ``f1_confidence.png``;
- ``gallery_<type>.jpg`` (given the images): the worst examples of each error type, the
  highest-scoring false positives of the type and the largest missed objects, each cropped around
  the example with the image's ground truth drawn.

Only numpy, matplotlib and PIL are used (no torch), so a results file is analysed without loading it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detlab import plotting
from detlab.eval.errors import (
    CLASSIFICATION,
    DUPLICATE,
    ERROR_TYPES,
    LOCALIZATION,
    MISSED,
    SIZE_RANGES,
    SPECIAL_ERROR_TYPES,
    TIDE_NAMES,
    ConfusionMatrix,
    ErrorAnalysis,
    F1Curves,
    analyze_errors,
    confusion_matrix,
    f1_curves,
)
from detlab.eval.problem import DetectionProblem

# TIDE's figure colours, one per error type, so our bars read like the paper's.
TYPE_COLOURS = {
    "classification": "#d62728",
    "localization": "#ff7f0e",
    "both": "#bcbd22",
    "duplicate": "#2ca02c",
    "background": "#1f77b4",
    "missed": "#9467bd",
    "false_positive": "#7f7f7f",
    "false_negative": "#8c564b",
}
# the six error types and the two special ones, in the order of the report's columns
_ALL_ERROR_TYPES = (*ERROR_TYPES, *SPECIAL_ERROR_TYPES)
GT_COLOUR, DETECTION_COLOUR, TARGET_COLOUR = (40, 200, 60), (230, 30, 30), (250, 210, 0)
# a problem this large shows a progress bar unless told otherwise
PROGRESS_IMAGES = 1000


def write_error_report(
    problem: DetectionProblem,
    out_dir: str | Path,
    image_paths: Mapping | None = None,
    foreground_iou: float = 0.5,
    background_iou: float = 0.1,
    max_detections: int | None = 100,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
    gallery_size: int = 12,
    progress: bool | None = None,
) -> dict:
    """Analyse ``problem`` and write the report files (see the module doc) into ``out_dir``.

    ``image_paths``: ``{image id: path}`` for the problem's ``image_ids``; without it no gallery is
    drawn. ``foreground_iou`` / ``background_iou`` / ``max_detections``: TIDE's settings
    (:func:`~detlab.eval.errors.analyze_errors`). ``score_threshold`` / ``iou_threshold``: the confusion
    matrix's (None: the best-F1 confidence). ``gallery_size``: examples per gallery. ``progress``: a
    tqdm bar (None: on from 1,000 images).

    Returns the report dict written to ``errors.json``, with ``"files"``: ``{name: path}``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = len(problem.image_ids) >= PROGRESS_IMAGES
    steps = 5 + (len(ERROR_TYPES) * gallery_size if image_paths is not None else 0)
    with tqdm(total=steps, desc="error report", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        analysis, curves, matrix = study_errors(
            problem, foreground_iou, background_iou, max_detections, score_threshold, iou_threshold
        )
        bar.update(3)
        report = build_error_report(problem, analysis, curves, matrix)
        files = {
            "errors_png": plot_error_bars(analysis, out_dir / "errors.png"),
            "confusion_matrix_png": plot_confusion_matrix(matrix, out_dir / "confusion_matrix.png"),
            "f1_confidence_png": plot_f1_curves(curves, problem.class_names, out_dir / "f1_confidence.png"),
        }
        bar.update()
        galleries = {}
        if image_paths is not None:
            examples = _gallery_examples(problem, analysis, gallery_size)
            for kind, chosen in examples.items():
                path = out_dir / f"gallery_{kind}.jpg"
                galleries[kind] = draw_gallery(problem, analysis, kind, chosen, image_paths, path, bar)
                bar.update(gallery_size - len(chosen))
                if galleries[kind]["examples"]:
                    files[f"gallery_{kind}"] = path
        report["galleries"] = galleries
        report["files"] = {name: path.name for name, path in files.items()}
        report["files"].update(errors_json="errors.json", errors_md="errors.md")
        (out_dir / "errors.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "errors.md").write_text(format_error_markdown(report))
        bar.update()
    files.update(errors_json=out_dir / "errors.json", errors_md=out_dir / "errors.md")
    return {**report, "files": files}


def study_errors(
    problem: DetectionProblem,
    foreground_iou: float = 0.5,
    background_iou: float = 0.1,
    max_detections: int | None = 100,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
) -> tuple[ErrorAnalysis, F1Curves, ConfusionMatrix]:
    """TIDE's analysis, the F1 curves and the confusion matrix of ``problem`` (settings as
    :func:`write_error_report`'s; the matrix at the best-F1 confidence when ``score_threshold`` is None)."""
    analysis = analyze_errors(problem, foreground_iou, background_iou, max_detections)
    curves = f1_curves(problem, iou_threshold)
    if score_threshold is None:
        score_threshold = curves.best_confidence
    return analysis, curves, confusion_matrix(problem, score_threshold, iou_threshold)


def format_error_console(report: dict) -> str:
    """Two lines for a terminal: the dAP of each error type and the best-F1 operating point."""
    daps = "  ".join(f"{TIDE_NAMES[kind]} {_number(report['dap'][kind], 3)}" for kind in ERROR_TYPES)
    special = "  ".join(
        f"{TIDE_NAMES[kind]} {_number(report['dap'][kind], 3)}" for kind in SPECIAL_ERROR_TYPES
    )
    point = report["operating_point"]
    return (
        f"errors (TIDE dAP: AP{round(100 * report['settings']['foreground_iou'])} gained if fixed; "
        f"AP {_number(report['ap'], 3)}): {daps} | {special}\n"
        f"best mean F1 {point['best_f1']:.3f} at score {point['best_confidence']:.3f}"
    )


def build_error_report(
    problem: DetectionProblem, analysis: ErrorAnalysis, curves: F1Curves, matrix: ConfusionMatrix
) -> dict:
    """The JSON-ready report: the analysis summary plus problem sizes, per-class object and
    detection counts, the operating point and the confusion matrix."""
    report = analysis.summary()
    num_gt = np.bincount(problem.gt_category, minlength=problem.num_classes)
    num_detections = np.bincount(problem.det_category, minlength=problem.num_classes)
    for k, row in enumerate(report["per_class"]):
        row["num_gt"], row["num_detections"] = int(num_gt[k]), int(num_detections[k])
    gt_size = np.searchsorted([high for _, high in SIZE_RANGES.values()], problem.gt_area, side="left")
    for size_index, size in enumerate(SIZE_RANGES):
        report["per_size"][size]["num_gt"] = int((gt_size == size_index).sum())
    return {
        "num_images": len(problem.image_ids),
        "num_gt": int(len(problem.gt_category)),
        "num_detections": int(len(problem.det_category)),
        **report,
        "operating_point": curves.summary(problem.class_names),
        "confusion_matrix": matrix.summary(),
        "source": dict(problem.source),
    }


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_error_markdown(report: dict) -> str:
    """``errors.md``: the dAP tables, the operating point, the confusion matrix and the galleries."""
    sections = [
        _markdown_introduction(report),
        _markdown_overall(report),
        _markdown_by_size(report),
        _markdown_by_class(report),
        _markdown_operating_point(report["operating_point"]),
        _markdown_confusion_matrix(report["confusion_matrix"]),
    ]
    galleries = {kind: entry for kind, entry in report.get("galleries", {}).items() if entry["examples"]}
    if galleries:
        sections.append(_markdown_galleries(galleries))
    # sections are separated by one empty line
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _markdown_introduction(report: dict) -> list[str]:
    """The title, the problem's size and AP, and what each error type means."""
    settings = report["settings"]
    return [
        "# Error analysis (TIDE)",
        "",
        f"{report['num_images']} images, {report['num_gt']} objects, {report['num_detections']} detections. "
        f"AP at IoU {settings['foreground_iou']:g} (101 recall points, at most {settings['max_detections']} "
        f"detections an image): **{_number(report['ap'])}**.",
        "",
        "dAP: the AP gained if that error alone were fixed (Bolya et al., ECCV 2020). Cls: right box, wrong "
        "class; Loc: right class, IoU between the background "
        f"({settings['background_iou']:g}) and foreground ({settings['foreground_iou']:g}) thresholds; Both: "
        "wrong class and poor box; Dupe: a second detection of an object already found; Bkg: on background; "
        "Miss: objects nothing found. FalsePos / FalseNeg: all false positives / all false negatives fixed. "
        "Values are fractions of 1 (TIDE prints them x100); counts are errors of each type.",
    ]


def _markdown_overall(report: dict) -> list[str]:
    """The dAP and count of every error type, and the detections left out of the AP."""
    return [
        "## Overall",
        "",
        *_table(
            ["", *[TIDE_NAMES[kind] for kind in _ALL_ERROR_TYPES]],
            [
                ["dAP", *[_number(report["dap"][kind]) for kind in _ALL_ERROR_TYPES]],
                # the special errors are no errors of their own: no count
                ["count", *[str(report["counts"][kind]) for kind in ERROR_TYPES], "", ""],
            ],
        ),
        "",
        f"Detections inside crowd regions (typed, not in the AP): {report['ignored_detections']}; beyond the "
        f"per-image limit: {report['not_evaluated_detections']}.",
    ]


def _markdown_by_size(report: dict) -> list[str]:
    """The dAP of the six error types with only the errors of one object size fixed."""
    return [
        "## By object size",
        "",
        "Only the errors on objects of that size fixed (the object's size for Cls, Loc and Miss, the detection's "
        "for the others; small <= 32^2 < medium <= 96^2 < large, in pixels of area).",
        "",
        *_table(
            ["size", "objects", *[TIDE_NAMES[kind] for kind in ERROR_TYPES], "errors"],
            [
                [
                    size,
                    str(entry["num_gt"]),
                    *[_number(entry["dap"][kind]) for kind in ERROR_TYPES],
                    str(sum(entry["counts"].values())),
                ]
                for size, entry in report["per_size"].items()
            ],
        ),
    ]


def _markdown_by_class(report: dict) -> list[str]:
    """Each class's AP and its own gain when the errors of each type are fixed."""
    return [
        "## By class",
        "",
        "The class's own AP and its gain when the errors of each type are fixed.",
        "",
        *_table(
            ["class", "objects", "detections", "AP", *[TIDE_NAMES[kind] for kind in _ALL_ERROR_TYPES]],
            [
                [
                    str(row["class"]),
                    str(row["num_gt"]),
                    str(row["num_detections"]),
                    _number(row["ap"]),
                    *[_number(row["dap"][kind]) for kind in _ALL_ERROR_TYPES],
                ]
                for row in report["per_class"]
            ],
        ),
    ]


def _markdown_operating_point(point: dict) -> list[str]:
    """The best-F1 confidence (``report["operating_point"]``) and each class's numbers there."""
    return [
        "## Operating point",
        "",
        f"Best mean F1 {point['best_f1']:.4f} at confidence **{point['best_confidence']:.3f}** (IoU "
        f"{point['iou_threshold']:g}, COCO's matching); each class there, and its own best:",
        "",
        *_table(
            ["class", "precision", "recall", "F1", "own best confidence", "own best F1"],
            [
                [
                    str(row["class"]),
                    _number(row["precision"]),
                    _number(row["recall"]),
                    _number(row["f1"]),
                    _number(row["own_best_confidence"], 3),
                    _number(row["own_best_f1"]),
                ]
                for row in point["per_class"]
            ],
        ),
    ]


def _markdown_confusion_matrix(confusion: dict) -> list[str]:
    """The confusion matrix (``report["confusion_matrix"]``) as a table, true class by row."""
    labels = confusion["labels"]
    return [
        "## Confusion matrix",
        "",
        f"Detections scoring at least {confusion['score_threshold']:.3f}, IoU {confusion['iou_threshold']:g}. "
        "Rows: true class; columns: predicted class; the background row holds detections that found "
        "nothing, the background column objects nothing found.",
        "",
        *_table(
            ["true \\ predicted", *labels],
            [[label, *[str(value) for value in row]] for label, row in zip(labels, confusion["matrix"])],
        ),
    ]


def _markdown_galleries(galleries: dict) -> list[str]:
    """A link to each non-empty gallery (``{kind: {"file", "examples"}}``), under its type's name."""
    lines = ["## Worst examples", ""]
    for kind, entry in galleries.items():
        lines += [f"### {TIDE_NAMES[kind]} ({kind})", "", f"![{kind}]({entry['file']})", ""]
    return lines


def _pyplot():
    return plotting.pyplot()


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_error_bars(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """TIDE's summary bars: the dAP of the six error types, and of FalsePos and FalseNeg beside them."""
    pyplot = _pyplot()
    figure, (main_axes, special_axes) = pyplot.subplots(
        1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [3, 1]}
    )
    for axes, kinds in ((main_axes, ERROR_TYPES), (special_axes, SPECIAL_ERROR_TYPES)):
        values = [analysis.dap[kind] * 100 for kind in kinds]
        axes.bar([TIDE_NAMES[kind] for kind in kinds], values, color=[TYPE_COLOURS[kind] for kind in kinds])
        for position, value in enumerate(values):
            axes.text(position, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        axes.set_ylim(0, max(max(values) * 1.2, 1.0))
        axes.grid(True, axis="y", alpha=0.3)
    main_axes.set_ylabel("dAP (AP points)")
    main_axes.set_title(f"Main errors (AP{analysis.foreground_iou * 100:g} = {analysis.ap * 100:.1f})")
    special_axes.set_title("Special errors")
    return _save(figure, Path(path))


def plot_confusion_matrix(matrix: ConfusionMatrix, path: str | Path) -> Path:
    """The confusion matrix as a picture, coloured by each row's share (a row is the true class);
    the counts are written in the cells when there are at most 30 classes."""
    pyplot = _pyplot()
    counts = matrix.matrix
    size = len(matrix.labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    side = min(4 + 0.45 * size, 24)
    figure, axes = pyplot.subplots(figsize=(side, side * 0.85))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the row")
    axes.set_xticks(range(size), matrix.labels, rotation=90 if size > 8 else 45, ha="right")
    axes.set_yticks(range(size), matrix.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if size <= 31:
        for row in range(size):
            for column in range(size):
                if counts[row, column]:
                    colour = "white" if shares[row, column] > 0.5 else "black"
                    axes.text(
                        column,
                        row,
                        str(counts[row, column]),
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=7,
                    )
    axes.set_title(f"Confusion matrix (score >= {matrix.score_threshold:.3f}, IoU {matrix.iou_threshold:g})")
    return _save(figure, Path(path))


def plot_f1_curves(curves: F1Curves, class_names: list[str], path: str | Path) -> Path:
    """F1 against the confidence threshold: one thin line a class, the mean thick, its best marked."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 4))
    show_legend = len(class_names) <= 12
    for k, name in enumerate(class_names):
        if curves.class_has_gt[k]:
            axes.plot(
                curves.confidences,
                curves.class_f1[k],
                linewidth=0.8,
                alpha=0.6,
                label=name if show_legend else None,
            )
    axes.plot(
        curves.confidences,
        curves.f1,
        color="black",
        linewidth=2.5,
        label=f"mean {curves.best_f1:.3f} at {curves.best_confidence:.3f}",
    )
    axes.axvline(curves.best_confidence, color="black", linestyle=":", linewidth=1)
    axes.set_xlabel("confidence threshold")
    axes.set_ylabel("F1")
    axes.set_ylim(0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=7)
    axes.set_title(f"F1 against confidence (IoU {curves.iou_threshold:g})")
    return _save(figure, Path(path))


def _gallery_examples(problem: DetectionProblem, analysis: ErrorAnalysis, size: int) -> dict[str, np.ndarray]:
    """``{type: indices}``: the ``size`` worst examples of each type, detections by decreasing score
    (those in crowd regions left out: they cost no AP) and missed objects by decreasing area."""
    examples = {}
    for code, kind in enumerate(ERROR_TYPES):
        if code == MISSED:
            chosen = np.flatnonzero(analysis.gt_error == MISSED)
            order = np.argsort(-problem.gt_area[chosen], kind="stable")
        else:
            chosen = np.flatnonzero((analysis.det_error == code) & ~analysis.det_ignored)
            order = np.argsort(-problem.det_scores[chosen], kind="stable")
        examples[kind] = chosen[order[:size]]
    return examples


def _xyxy(box: np.ndarray) -> tuple[float, float, float, float]:
    return float(box[0]), float(box[1]), float(box[0] + box[2]), float(box[1] + box[3])


def _tile(problem, analysis, kind, index, image, tile_size: int):
    """One gallery tile: the image cropped around the example, the image's objects in green, the
    detection in red and the object its error points at in yellow; and its caption."""
    from PIL import ImageDraw

    names = problem.class_names
    if kind == "missed":
        image_index, focus = problem.gt_image[index], problem.gt_boxes[index]
        target, detection = index, None
        caption = f"{names[problem.gt_category[index]]}, area {problem.gt_area[index]:.0f}"
    else:
        image_index, focus = problem.det_image[index], problem.det_boxes[index]
        target = (
            analysis.det_gt[index]
            if analysis.det_error[index] in (CLASSIFICATION, LOCALIZATION, DUPLICATE)
            else -1
        )
        detection = index
        caption = f"{names[problem.det_category[index]]} {problem.det_scores[index]:.2f}"
        if kind == "classification":
            caption += f", is {names[problem.gt_category[target]]}"
        elif target >= 0:
            caption += f", IoU {analysis.det_iou[index]:.2f}"
    x1, y1, x2, y2 = _xyxy(focus)
    # context around the example: its own size on each side, at least 32 px
    margin_x, margin_y = max(x2 - x1, 32.0), max(y2 - y1, 32.0)
    left, top = max(0.0, x1 - margin_x), max(0.0, y1 - margin_y)
    right, bottom = min(float(image.width), x2 + margin_x), min(float(image.height), y2 + margin_y)
    if right - left < 2 or bottom - top < 2:  # a box outside the image: show the whole image
        left, top, right, bottom = 0.0, 0.0, float(image.width), float(image.height)
    crop = image.crop((int(left), int(top), int(np.ceil(right)), int(np.ceil(bottom))))
    scale = tile_size / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    draw = ImageDraw.Draw(crop)

    def rectangle(box, colour, width):
        bx1, by1, bx2, by2 = _xyxy(box)
        draw.rectangle(
            [
                (bx1 - int(left)) * scale,
                (by1 - int(top)) * scale,
                (bx2 - int(left)) * scale,
                (by2 - int(top)) * scale,
            ],
            outline=colour,
            width=width,
        )

    for gt in np.flatnonzero(problem.gt_image == image_index):
        rectangle(problem.gt_boxes[gt], GT_COLOUR, 1)
    if target >= 0:
        rectangle(problem.gt_boxes[target], TARGET_COLOUR, 3)
    if detection is not None:
        rectangle(problem.det_boxes[detection], DETECTION_COLOUR, 2)
    return crop, f"{problem.image_ids[image_index]}: {caption}"


def draw_gallery(
    problem: DetectionProblem,
    analysis: ErrorAnalysis,
    kind: str,
    examples: np.ndarray,
    image_paths: Mapping,
    path: str | Path,
    bar=None,
    tile_size: int = 220,
    columns: int = 4,
) -> dict:
    """Draw the ``examples`` (detection indices, or object indices for ``missed``) of error type
    ``kind`` as a grid of captioned tiles into the JPEG ``path``. Returns ``{"file", "examples"}``,
    each example's image id, index, score or area, and box ``[x, y, width, height]``."""
    from PIL import Image, ImageDraw

    path = Path(path)
    described = []
    tiles = []
    for index in examples:
        index = int(index)
        image_index = problem.gt_image[index] if kind == "missed" else problem.det_image[index]
        image_id = problem.image_ids[image_index]
        if image_id not in image_paths:
            raise ValueError(
                f"image_paths has no path for image id {image_id!r}; give one for every image of the problem "
                "(or image_paths=None for no galleries)"
            )
        file = Path(image_paths[image_id])
        if not file.is_file():
            raise FileNotFoundError(f"{file}: image of id {image_id!r} not found")
        with Image.open(file) as opened:
            image = opened.convert("RGB")
        tiles.append(_tile(problem, analysis, kind, index, image, tile_size))
        if kind == "missed":
            described.append({"image_id": image_id, "gt_index": index, "area": float(problem.gt_area[index]),
                              "box": problem.gt_boxes[index].tolist()})  # fmt: skip
        else:
            described.append({"image_id": image_id, "detection_index": index, "score": float(problem.det_scores[index]),
                              "box": problem.det_boxes[index].tolist(), "gt_index": int(analysis.det_gt[index])})  # fmt: skip
        if bar is not None:
            bar.update()
    if not tiles:
        return {"file": None, "examples": []}
    caption_height = 14
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    cell_width, cell_height = tile_size + 6, tile_size + caption_height + 6
    sheet = Image.new("RGB", (columns * cell_width, rows * cell_height + 18), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (4, 3),
        f"{TIDE_NAMES[kind]} ({kind}): green ground truth, red detection, yellow its object",
        fill="black",
    )
    for position, (tile, caption) in enumerate(tiles):
        column, row = position % columns, position // columns
        x, y = column * cell_width + 3, 18 + row * cell_height + 3
        sheet.paste(tile, (x, y))
        draw.text((x, y + tile.height + 1), caption[:40], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=90)
    return {"file": path.name, "examples": described}
