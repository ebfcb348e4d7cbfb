"""Evaluation reports: one JSON-ready dict, a console table, a Markdown table and PR-curve PNGs.

A report is a plain dict (so it can be saved, read back and compared):
``{"protocol", "settings", "num_images", "num_gt", "num_detections", "metrics": {name: value},
"per_class": [{"class", "num_gt", "num_detections", "AP", ...}], "curves": {class: {"recall",
"precision"}}, "source"}``. Undefined values (a class without ground truth) are ``None`` in JSON.
A report of a model scored on a data set (``detlab eval --checkpoint``) also says which images
were left out under ``--on-bad skip``: ``"skipped": [{"path", "line", "reason"}]``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from detlab.eval.coco import CocoResult
from detlab.eval.problem import DetectionProblem
from detlab.eval.voc import VocResult


def _clean(value):
    """NaN and the COCO API's -1 (undefined) become None; numpy scalars become floats."""
    if isinstance(value, float) and (math.isnan(value) or value == -1.0):
        return None
    return value


def build_report(result: CocoResult | VocResult, problem: DetectionProblem, settings: dict) -> dict:
    """The report dict of a COCO or VOC result on ``problem`` (see the module doc)."""
    per_class = [{key: _clean(value) for key, value in row.items()} for row in result.per_class()]
    if isinstance(result, CocoResult):
        protocol = "coco"
        metrics = {name: _clean(value) for name, value in result.summary().items()}
        curves = {name: result.pr_curve(index, 0.5) for index, name in enumerate(result.class_names)}
        curve_note = "COCO interpolated precision at 101 recall points, IoU 0.5, all areas"
    else:
        protocol = result.protocol
        metrics = {name: _clean(value) for name, value in result.summary().items()}
        curves = {name: result.pr_curve(index) for index, name in enumerate(result.class_names)}
        curve_note = f"raw precision/recall over detections ranked by score, IoU {result.iou_threshold:g}"
    return {
        "protocol": protocol,
        "settings": dict(settings),
        "num_images": len(problem.image_ids),
        "num_gt": int(len(problem.gt_category)),
        "num_detections": int(len(problem.det_category)),
        "metrics": metrics,
        "per_class": per_class,
        "curves": {
            name: {"recall": recall, "precision": precision} for name, (recall, precision) in curves.items()
        },
        "curve_note": curve_note,
        "source": dict(problem.source),
    }


def _table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    value_keys = [
        key for key in ("AP", "AP50", "AP75", "AR") if any(key in row for row in report["per_class"])
    ]
    header = ["class", "gt", "detections", *value_keys]
    rows = []
    for row in report["per_class"]:
        values = ["-" if row.get(key) is None else f"{row[key]:.4f}" for key in value_keys]
        rows.append([str(row["class"]), str(row["num_gt"]), str(row["num_detections"]), *values])
    return header, rows


def _headline(report: dict) -> str:
    parts = [
        f"{name} {'-' if value is None else f'{value:.4f}'}" for name, value in report["metrics"].items()
    ]
    return ", ".join(parts)


MAX_SKIPPED_SHOWN = 20  # in the console; the JSON and Markdown list them all


def skipped_lines(report: dict, limit: int | None = None) -> list[str]:
    """``skipped N images (bad input):`` and a line for each (its path, line and reason)."""
    skipped = report.get("skipped") or []
    if not skipped:
        return []
    shown = skipped if limit is None else skipped[:limit]
    lines = [f"skipped {len(skipped)} image{'' if len(skipped) == 1 else 's'} (bad input, --on-bad skip):"]
    lines += [
        f"  {item['path']}{'' if item.get('line') is None else ':' + str(item['line'])}: {item['reason']}"
        for item in shown
    ]
    if len(shown) < len(skipped):
        lines.append(f"  ... and {len(skipped) - len(shown)} more (all in report.json)")
    return lines


def format_console_table(report: dict) -> str:
    """A fixed-width per-class table (when the report has one) followed by the summary metrics
    and the images skipped as bad input (the first ``MAX_SKIPPED_SHOWN``)."""
    header, rows = _table_rows(report)
    summary = f"{report['protocol']}: {report['num_images']} images, {report['num_gt']} ground-truth boxes, {report['num_detections']} detections"
    skipped = skipped_lines(report, MAX_SKIPPED_SHOWN)
    if not rows:
        return "\n".join([summary, _headline(report), *skipped])
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths))
        )
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([summary, *lines, _headline(report), *skipped])


def format_markdown_table(report: dict) -> str:
    """The per-class table and the metrics as Markdown."""
    header, rows = _table_rows(report)
    lines = []
    if rows:  # the localizer's and DeepPose's reports have no per-class table
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    metric_lines = ["| metric | value |", "|---|---:|"] + [
        f"| {name} | {'-' if value is None else f'{value:.4f}'} |"
        for name, value in report["metrics"].items()
    ]
    intro = (
        f"Protocol `{report['protocol']}`, {report['num_images']} images, {report['num_gt']} ground-truth boxes, "
        f"{report['num_detections']} detections."
    )
    skipped = skipped_lines(report)
    if skipped:  # as a list: each a path and a reason
        skipped = [skipped[0], "", *(f"- `{line.strip()}`" for line in skipped[1:]), ""]
    return "\n".join([intro, "", *metric_lines, "", *lines, "", *skipped])


def _file_name(class_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("_") or "class"


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (with ``plots``) ``pr_curves/<class>.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    with open(written["json"], "w") as handle:
        json.dump(report, handle, indent=1)
    written["markdown"].write_text(format_markdown_table(report))
    if plots:
        from detlab.eval.plots import plot_precision_recall

        for row in report["per_class"]:
            name = row["class"]
            curve = report["curves"][name]
            path = out_dir / "pr_curves" / f"{_file_name(str(name))}.png"
            if report["protocol"] == "coco":
                title, value, metric = f"{name} (COCO, IoU 0.5)", row.get("AP50"), "AP50"
            else:
                iou = report["settings"]["iou_threshold"]
                title, value, metric = f"{name} ({report['protocol']}, IoU {iou:g})", row.get("AP"), "AP"
            written[f"pr_{name}"] = plot_precision_recall(
                curve["recall"], curve["precision"], path, title, value, metric
            )
    return written
