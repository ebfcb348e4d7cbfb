"""``detlab demo`` (what ``make demo`` runs): the main job on the built-in synthetic data set.

It generates the set and shows it, then trains Faster R-CNN on it from scratch for a few minutes
(``--train-seconds``, preset ``demo``), evaluates the best checkpoint on the test
split with the COCO metrics, and writes the results (``results.json``/``results.md``),
precision-recall curves and annotated test images next to the run folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from detlab.data.loading import load_dataset
from detlab.data.stats import dataset_stats, format_stats
from detlab.visualize import show_dataset


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "synthetic"
    dataset = load_dataset("synthetic", root=data_root, num_synthetic=args.images)
    stats_text = format_stats(dataset_stats(dataset))
    print(stats_text)
    (out / "stats.md").write_text(stats_text + "\n")
    grid = show_dataset(load_dataset(f"voc:{data_root}", "train"), out / "samples.png", num=8)
    print(f"\nsynthetic data set in {data_root}; annotated samples in {grid}")
    if args.train_seconds > 0:
        detector_demo(out, data_root, args.train_seconds)
    return 0


def detector_demo(
    out: Path, data_root: Path, train_seconds: float, num_shown: int = 8, overrides: list[str] | None = None
) -> dict:
    """Train Faster R-CNN for ``train_seconds`` on the synthetic train split, choose the best
    checkpoint on val, evaluate it on test; returns the test summary (COCO numbers, per class).
    ``overrides``: ``section.field=value`` changes to the ``demo`` preset (benchmarks compare them)."""
    from detlab.engine.predict import Predictor, predict_dataset
    from detlab.engine.run import resolve_run_config, train_run
    from detlab.eval.coco import COCOEvaluator
    from detlab.eval.plots import plot_precision_recall
    from detlab.visualize import draw_detections, save_grid

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
    print(f"\ntraining Faster R-CNN for {train_seconds:.0f} s on {data_root} (run folder {run_dir})")
    fitted = train_run(run_config)
    predictor = Predictor.from_checkpoint(fitted.best_checkpoint or fitted.last_checkpoint)
    test = load_dataset(f"voc:{data_root}", "test")
    predictions, targets = predict_dataset(predictor, test)
    evaluator = COCOEvaluator(test.classes)
    evaluator.update(predictions, targets)
    result = evaluator.compute()
    per_class = result.per_class()
    for index, row in enumerate(per_class):
        recall, precision = result.pr_curve(index, 0.5)
        plot_precision_recall(
            recall, precision, out / f"pr_{row['class']}.png", f"{row['class']} (IoU 0.5)", row["AP50"]
        )
    shown = []
    for index, prediction in enumerate(predictions[:num_shown]):
        image = test[index][0]
        keep = prediction["scores"] >= 0.5
        shown.append(
            draw_detections(
                image,
                prediction["boxes"][keep],
                prediction["labels"][keep],
                test.classes,
                prediction["scores"][keep],
            )
        )
    save_grid(shown, out / "test_detections.png")
    summary = {
        "model": "faster_rcnn",
        "train_seconds": round(fitted.state.elapsed_s, 1),
        "steps": fitted.state.step,
        "epochs_completed": fitted.state.epoch,
        "test_images": len(test),
        "metrics": result.summary(),
        "per_class": per_class,
        "checkpoint": str(fitted.best_checkpoint or fitted.last_checkpoint),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"Faster R-CNN trained from scratch for {summary['train_seconds']} s ({summary['steps']} steps) on the synthetic "
        f"train split; test split ({len(test)} images):",
        "",
        "| class | AP@0.5 | AP@[.5:.95] | objects |",
        "|---|---|---|---|",
        *(f"| {row['class']} | {row['AP50']:.3f} | {row['AP']:.3f} | {row['num_gt']} |" for row in per_class),
        f"| **all (mAP)** | **{result.summary()['AP50']:.3f}** | **{result.summary()['AP']:.3f}** | |",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(
        f"\nPR curves {out}/pr_*.png, detections on test images {out / 'test_detections.png'}, run {run_dir}"
    )
    return summary


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="the main job on the built-in synthetic data set")
    demo.add_argument("--out", default="demo", help="output folder (default: demo)")
    demo.add_argument("--images", type=int, default=600, help="synthetic images to generate (default 600)")
    demo.add_argument(
        "--train-seconds",
        type=float,
        default=300,
        help="Faster R-CNN training time (default 300; 0 skips training)",
    )
    demo.set_defaults(handler=run_demo)
