"""``detlab demo`` (what ``make demo`` runs): the main job on the built-in synthetic data set.

It generates the set (2,000 images) and shows it, then trains Faster R-CNN on it from scratch for a
few minutes (``--train-seconds``, preset ``demo``; ``--processes``: data-parallel through torchrun,
by default 2 processes on a CPU with 2 or more cores), evaluates the best checkpoint on the test
split with the COCO metrics, and writes the results (``results.json``/``results.md``),
precision-recall curves and annotated test images next to the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from detlab.data.drawing import show_dataset
from detlab.data.loading import load_dataset
from detlab.data.stats import dataset_stats, format_stats
from detlab.machine import usable_cpus

# The demo as measured for the README (`benchmarks/results/make_demo.md`): its steps in its
# default budget on that machine, its mAP@0.5, and (when measured) the mAP@0.5 of half the steps.
MEASURED_DEMO = {"seconds": 300, "steps": 1231, "AP50": 0.820, "half_steps_AP50": 0.599}


def run_demo(
    out: str | Path, images: int = 2000, train_seconds: float = 300, processes: int = 1
) -> dict | None:
    """The whole demo in ``out``: the synthetic set (``images`` of them) generated and shown, then,
    unless ``train_seconds`` is 0, the detector trained and scored on its test split (the summary
    of :func:`detector_demo`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "synthetic"
    dataset = load_dataset("synthetic", root=data_root, num_synthetic=images)
    stats_text = format_stats(dataset_stats(dataset))
    print(stats_text)
    (out / "stats.md").write_text(stats_text + "\n")
    grid = show_dataset(load_dataset(f"voc:{data_root}", "train"), out / "samples.png", num=8)
    print(f"\nsynthetic data set in {data_root}; annotated samples in {grid}")
    if train_seconds <= 0:
        return None
    return detector_demo(out, data_root, train_seconds, processes=processes)


def default_processes() -> int:
    """Training processes for the demo: 2 data-parallel processes on a CPU with at least 2 cores
    (measured faster than one process using both cores), else 1 (a GPU, or a 1-core CPU)."""
    import torch

    return 1 if torch.cuda.is_available() or usable_cpus() < 2 else 2


def threads_per_process(processes: int) -> int:
    """Each data-parallel process's share of the cores (its ``OMP_NUM_THREADS``)."""
    return max(1, usable_cpus() // processes)


def train_data_parallel(run_config, processes: int) -> dict:
    """Train ``run_config`` (a resolved :class:`~detlab.engine.run.RunConfig`) in ``processes``
    data-parallel processes through ``torchrun --standalone --nproc_per_node N -m detlab train``
    (gloo on CPUs, each process with its share of the cores), the config handed over as a preset
    file beside the run folder; returns the run's progress (``step``, ``epoch``, ``elapsed_s``)
    from its last checkpoint."""
    from detlab import config as config_io
    from detlab.engine import checkpoint as checkpoints

    run_dir = Path(run_config.train.out_dir)
    preset = run_dir.with_name(f"{run_dir.name}_config.yaml")
    config_io.save(run_config, preset)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "detlab",
        "train",
        run_config.model_name,
        "--preset",
        str(preset),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads_per_process(processes)))
    print(" ".join(command), flush=True)
    completed = subprocess.run(command, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(
            f"data-parallel training exited with code {completed.returncode}; see the output above"
        )
    return checkpoints.load_checkpoint(run_dir / "last.pt")["progress"]


def detector_demo(
    out: Path,
    data_root: Path,
    train_seconds: float,
    num_shown: int = 8,
    overrides: list[str] | None = None,
    processes: int = 1,
) -> dict:
    """Train Faster R-CNN for ``train_seconds`` on the synthetic train split, choose the best
    checkpoint on val, evaluate it on test; returns the test summary (COCO numbers, per class).
    ``overrides``: ``section.field=value`` changes to the ``demo`` preset (benchmarks compare them).
    ``processes`` > 1 trains data-parallel (:func:`train_data_parallel`); the batch size is per process."""
    progress, run_dir = train_demo_detector(out, data_root, train_seconds, overrides, processes)
    best = run_dir / "best.pt"
    checkpoint = best if best.exists() else run_dir / "last.pt"
    result, test, predictions = score_on_test(checkpoint, data_root)
    draw_demo_figures(out, result, test, predictions, num_shown)
    summary = {
        "model": "faster_rcnn",
        "train_seconds": round(progress["elapsed_s"], 1),
        "steps": progress["step"],
        "epochs_completed": progress["epoch"],
        "processes": processes,
        "test_images": len(test),
        "metrics": result.summary(),
        "per_class": result.per_class(),
        "checkpoint": str(checkpoint),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = results_table(summary)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    note = speed_note(summary, train_seconds)
    if note:
        print("\n" + note)
    print(
        f"\nPR curves {out}/pr_*.png, detections on test images {out / 'test_detections.png'}, run {run_dir}"
    )
    return summary


def train_demo_detector(out: Path, data_root: Path, train_seconds: float, overrides, processes: int):
    """The demo preset's Faster R-CNN trained afresh in ``out/faster_rcnn``; returns its progress
    (``step``, ``epoch``, ``elapsed_s``) and run folder."""
    from detlab.engine.run import resolve_run_config, train_run

    run_dir = out / "faster_rcnn"
    if run_dir.exists():  # the demo always starts afresh; its folder is its own
        shutil.rmtree(run_dir)
    run_config = resolve_run_config(
        "faster_rcnn",
        preset="demo",
        data={"spec": f"voc:{data_root}"},
        train={"out_dir": str(run_dir), "time_budget_s": train_seconds},
        overrides=overrides,
    )
    print(
        f"\ntraining Faster R-CNN for {train_seconds:.0f} s on {data_root} in {processes} "
        f"process{'es' if processes > 1 else ''} (run folder {run_dir})"
    )
    if processes > 1:
        return train_data_parallel(run_config, processes), run_dir
    state = train_run(run_config).state
    return {"step": state.step, "epoch": state.epoch, "elapsed_s": state.elapsed_s}, run_dir


def score_on_test(checkpoint: Path, data_root: Path):
    """COCO metrics of ``checkpoint`` on the synthetic test split (``detlab.engine.evaluate``);
    returns ``(result, test set, per-image predictions)``."""
    import torch

    from detlab.engine.predict import Predictor
    from detlab.engine.sampling import make_loader
    from detlab.engine.train import evaluate
    from detlab.eval.coco import COCOEvaluator

    predictor = Predictor.from_checkpoint(checkpoint)
    test = load_dataset(f"voc:{data_root}", "test")
    evaluator = COCOEvaluator(test.classes)
    loader = make_loader(test, 4, torch.utils.data.SequentialSampler(test))
    result = evaluate(predictor.model, loader, evaluator, predictor.device)
    return result, test, evaluator.predictions


def draw_demo_figures(out: Path, result, test, predictions: list[dict], num_shown: int) -> None:
    """Precision-recall curves per class and the first test images with their detections."""
    from detlab.data.drawing import draw_detections, save_grid
    from detlab.eval.plots import plot_precision_recall

    for index, row in enumerate(result.per_class()):
        recall, precision = result.pr_curve(index, 0.5)
        plot_precision_recall(
            recall, precision, out / f"pr_{row['class']}.png", f"{row['class']} (IoU 0.5)", row["AP50"]
        )
    shown = []
    for index, prediction in enumerate(predictions[:num_shown]):
        keep = prediction["scores"] >= 0.5
        shown.append(
            draw_detections(
                test[index][0],
                prediction["boxes"][keep],
                prediction["labels"][keep],
                test.classes,
                prediction["scores"][keep],
            )
        )
    save_grid(shown, out / "test_detections.png")


def speed_note(summary: dict, budget_s: float) -> str | None:
    """A line when this machine made clearly fewer steps in ``budget_s`` than the machine the
    README's demo numbers were measured on (:data:`MEASURED_DEMO`), saying what that costs; None
    otherwise (or for a budget other than the measured one, or a run a step cap ended early, whose
    steps say nothing of the machine)."""
    measured = MEASURED_DEMO
    if abs(budget_s - measured["seconds"]) > 1 or summary["steps"] >= 0.9 * measured["steps"]:
        return None
    if summary.get("train_seconds", budget_s) < 0.95 * budget_s:  # a step cap ended it, not the clock
        return None
    half = measured["half_steps_AP50"]
    return (
        f"This machine made {summary['steps']} steps in {budget_s:g} s; the README's machine made "
        f"{measured['steps']} (mAP@0.5 {measured['AP50']:.3f})"
        + (f", and half of them give {half:.3f}" if half is not None else "")
        + ": a slower CPU trains fewer steps in the same time. Give it more with --train-seconds."
    )


def results_table(summary: dict) -> list[str]:
    processes, metrics = summary["processes"], summary["metrics"]
    return [
        f"Faster R-CNN trained from scratch for {summary['train_seconds']} s ({summary['steps']} steps, {processes} "
        f"process{'es' if processes > 1 else ''}) on the synthetic train split; test split "
        f"({summary['test_images']} images):",
        "",
        "| class | AP@0.5 | AP@[.5:.95] | objects |",
        "|---|---|---|---|",
        *(
            f"| {row['class']} | {row['AP50']:.3f} | {row['AP']:.3f} | {row['num_gt']} |"
            for row in summary["per_class"]
        ),
        f"| **all (mAP)** | **{metrics['AP50']:.3f}** | **{metrics['AP']:.3f}** | |",
    ]
