"""Plots of evaluation results, written as PNG files with matplotlib's Agg backend (no display needed).

Every function takes the plain dicts the evaluators return, so a JSON report read back from disk
can be plotted again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from detlab import plotting


def _pyplot():
    return plotting.pyplot()


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_recall_vs_proposals(
    results: Mapping[str, dict], path: str | Path, iou_threshold: float = 0.7, title: str | None = None
) -> Path:
    """Recall at ``iou_threshold`` against the number of proposals (log x axis), one line per method.

    ``results``: ``{method name: proposal_recall(...) dict}``. Returns the PNG path.
    """
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5, 4))
    for name, result in results.items():
        curve = result["recall_vs_proposals"]
        key = str(iou_threshold)
        if key not in curve["recall"]:
            raise ValueError(f"{name}: no recall curve at IoU {iou_threshold}; have {list(curve['recall'])}")
        axes.plot(curve["num_proposals"], curve["recall"][key], marker=".", label=name)
    axes.set_xscale("log")
    axes.set_xlabel("number of proposals")
    axes.set_ylabel(f"recall at IoU {iou_threshold}")
    axes.set_ylim(0, 1)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(title or f"Recall vs proposals (IoU {iou_threshold})")
    return _save(figure, path)


def plot_recall_vs_iou(
    results: Mapping[str, dict], path: str | Path, num_proposals: int | None = None, title: str | None = None
) -> Path:
    """Recall against the IoU threshold (0.5 to 1) for the top ``num_proposals`` boxes, one line per method.

    ``num_proposals`` defaults to the largest ``n`` each result was computed with; the legend shows
    each method's average recall (the area under its curve, times 2). Returns the PNG path.
    """
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5, 4))
    for name, result in results.items():
        curve = result["recall_vs_iou"]
        key = str(num_proposals) if num_proposals is not None else max(curve["recall"], key=int)
        if key not in curve["recall"]:
            raise ValueError(
                f"{name}: no recall-vs-IoU curve for {num_proposals} proposals; have {list(curve['recall'])}"
            )
        label = f"{name} (AR {result['average_recall'][key]:.3f})"
        axes.plot(curve["iou_thresholds"], curve["recall"][key], label=label)
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("recall")
    axes.set_xlim(0.5, 1)
    axes.set_ylim(0, 1)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(title or "Recall vs IoU" + (f" ({num_proposals} proposals)" if num_proposals else ""))
    return _save(figure, path)


def plot_precision_recall(
    recall: list[float],
    precision: list[float],
    path: str | Path,
    title: str,
    average_precision: float | None = None,
    metric_name: str = "AP",
) -> Path:
    """One class's precision-recall curve; ``average_precision`` (if given) goes in the legend as
    ``"<metric_name> 0.xxx"``."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(5, 4))
    label = f"{metric_name} {average_precision:.3f}" if average_precision is not None else None
    axes.plot(recall, precision, drawstyle="steps-post", label=label)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(True, alpha=0.3)
    if label:
        axes.legend(loc="lower left")
    axes.set_title(title)
    return _save(figure, path)
