"""Run proposal methods over a data set, time them, and score them with
:func:`detlab.eval.proposals.proposal_recall` (recall@n, AR, MABO). Used by ``detlab proposals
eval`` and ``benchmarks/bench_proposals.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from detlab.data.schema import DetectionDataset
from detlab.eval.plots import plot_recall_vs_iou, plot_recall_vs_proposals
from detlab.eval.proposals import DEFAULT_IOU_THRESHOLDS as IOU_THRESHOLDS
from detlab.eval.proposals import DEFAULT_NUM_PROPOSALS as NUM_PROPOSALS
from detlab.eval.proposals import proposal_recall
from detlab.proposals.cache import ProposalCache
from detlab.proposals.method import ProposalMethod, propose_files


def evaluate_method(
    method: ProposalMethod,
    dataset: DetectionDataset,
    num_proposals: Sequence[int] = NUM_PROPOSALS,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: ProposalCache | None = None,
    workers: int = 1,
) -> dict:
    """Proposals of ``method`` for the first ``limit`` records of ``dataset`` (all if ``None``).

    Only ``method.propose`` is timed, not decoding the image. Returns the
    :func:`proposal_recall` dict plus ``seconds_per_image_mean`` / ``_median`` (each image's own
    time, in whichever process computed it), ``wall_seconds`` (the whole run), ``workers`` and
    ``method`` (its settings). ``progress(done, total)`` is called after each image. With a
    ``cache``, cached images are read instead of computed (their time is the read's) and new ones
    are stored as they come, so an interrupted run resumes. ``workers > 1`` computes the images
    in that many processes (see :func:`detlab.proposals.method.propose_files`).
    """
    records = dataset.records[:limit] if limit else dataset.records
    if not records:
        raise ValueError(f"data set {dataset.name or ''} has no images to evaluate proposals on")
    proposals, seconds = [None] * len(records), [0.0] * len(records)
    done = 0
    started = time.perf_counter()

    def finished() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(records))

    todo = []
    for index, record in enumerate(records):
        if cache is not None and record.image_id in cache:
            start = time.perf_counter()
            proposals[index] = cache.get(record.image_id)
            seconds[index] = time.perf_counter() - start
            finished()
        else:
            todo.append(index)
    paths = [records[index].image_path for index in todo]
    for position, boxes, took in propose_files(method, paths, workers):
        index = todo[position]
        proposals[index], seconds[index] = boxes, took
        if cache is not None:
            cache.put(records[index].image_id, boxes)
        finished()
    result = proposal_recall(
        proposals,
        [record.boxes for record in records],
        [record.labels for record in records],
        num_proposals=num_proposals,
        iou_thresholds=IOU_THRESHOLDS,
        classes=dataset.classes,
    )
    result["seconds_per_image_mean"] = statistics.mean(seconds)
    result["seconds_per_image_median"] = statistics.median(seconds)
    result["wall_seconds"] = time.perf_counter() - started
    result["workers"] = max(1, min(int(workers), len(todo))) if todo else 0
    result["method"] = method.settings()
    return result


def summary_row(name: str, result: dict, num_proposals: Sequence[int] = NUM_PROPOSALS) -> list[str]:
    """One table row: name, recall@n at IoU 0.5 and 0.7, AR, MABO, seconds an image."""
    cells = [name]
    for threshold in IOU_THRESHOLDS:
        cells += [f"{result['recall'][f'{threshold}@{n}']:.3f}" for n in num_proposals]
    cells += [f"{result['ar']:.3f}", f"{result['mabo']:.3f}", f"{result['seconds_per_image_mean']:.2f}"]
    return cells


def summary_header(num_proposals: Sequence[int] = NUM_PROPOSALS) -> list[str]:
    """Column names matching :func:`summary_row`."""
    header = ["method"]
    for threshold in IOU_THRESHOLDS:
        header += [f"R@{n} IoU{threshold}" for n in num_proposals]
    return header + ["AR", "MABO", "s/img"]


def save_plots(results: dict[str, dict], out_dir: str | Path, prefix: str = "proposals") -> list[Path]:
    """Recall-vs-#proposals (IoU 0.5 and 0.7) and recall-vs-IoU plots of ``{name: result}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_recall_vs_proposals(
            results, out_dir / f"{prefix}_recall_vs_proposals_iou0.5.png", iou_threshold=0.5
        ),
        plot_recall_vs_proposals(
            results, out_dir / f"{prefix}_recall_vs_proposals_iou0.7.png", iou_threshold=0.7
        ),
        plot_recall_vs_iou(results, out_dir / f"{prefix}_recall_vs_iou.png"),
    ]
