"""Benchmark: the one-stage detectors beside detlab's Faster R-CNN, same data, budget and evaluator.

Each model of ``--models`` (``yolo``, ``yolov1``, ``faster_rcnn``) trains from scratch through
``detlab train``'s path (``detlab.engine.run.train_run``) for ``--budget-s`` seconds, one after
the other on the same threads; then each checkpoint is scored on the test split (VOC07 11-point
mAP@0.5, COCO AP50 and AP, per-class AP@0.5) and timed one image at a time. With
``--ultralytics``, Ultralytics' YOLOv8n built from its model YAML (no weights) trains for the same
budget on the same data (exported in YOLO format) and is scored by the same evaluator; if it does
not install or run offline, the results say why.

Ultralytics is a benchmark-only dependency, not in any extra (its ``opencv-python`` would clash
with the ``opencv-contrib-python-headless`` the other benchmarks use); install it beside them with
  .venv/bin/pip install --no-deps ultralytics ultralytics-thop polars polars-runtime-32 psutil py-cpuinfo \
      requests certifi charset-normalizer idna urllib3
It runs offline (``YOLO_OFFLINE``) and trains on ``--threads`` threads (left alone it takes
``cpu_count - 1``).

For ``yolov1`` the results also count the test objects its grid cannot represent: a cell holds
one object, so of several objects whose centres fall in one cell only the largest is a target.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_yolo.py --data bccd --budget-s 1500
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_yolo.py --data synthetic --budget-s 300
Results: ``benchmarks/results/yolo_<data>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, header_lines, load_split, score, stamp, write_results  # noqa: E402
from common import test_split as load_test_split  # noqa: E402

from detlab.demo import train_data_parallel  # noqa: E402
from detlab.engine.predict import model_from_checkpoint  # noqa: E402
from detlab.engine.run import resolve_run_config, train_run  # noqa: E402

# Per model and data set: settings beyond the method's own defaults.
SETTINGS = {
    "yolo": {"bccd": {}, "synthetic": {"model": {"input_size": 256}}, "demo": {"model": {"input_size": 256}}},
    "yolov1": {"bccd": {}, "synthetic": {"model": {"input_size": 256}}, "demo": {"model": {"input_size": 256}}},
    # As benchmarks/bench_detectors.py trains it (mAP@0.5 0.895 in 1500 s there); on the demo's set,
    # the demo preset (make demo's Faster R-CNN).
    "faster_rcnn": {
        "bccd": {"model": {"min_size": 320, "max_size": 427}, "train": {"optimizer": "sgd", "lr": 0.02, "batch_size": 2}},
        "synthetic": {"model": {"min_size": 256, "max_size": 256}, "train": {"optimizer": "sgd", "lr": 0.02, "batch_size": 2}},
        "demo": {"preset": "demo"},
    },
}  # fmt: skip
LABELS = {"yolo": "yolo (anchor-free, csp + FPN/PAN)", "yolov1": "yolov1 (the paper's grid)",
          "faster_rcnn": "Faster R-CNN (compact + FPN)"}  # fmt: skip


def train(name: str, args, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    settings = SETTINGS[name][args.data]
    run_config = resolve_run_config(
        name,
        settings.get("preset"),
        data=DATA[args.data],
        model=settings.get("model", {}),
        train={
            "out_dir": str(out),
            "time_budget_s": args.budget_s,
            "epochs": 100_000,
            "eval_every": 0,
            "log_every": 100,
            "seed": 0,
            **settings.get("train", {}),
        },
        overrides=args.set if name != "faster_rcnn" else None,
    )
    started = time.perf_counter()
    if (
        args.processes > 1
    ):  # data-parallel, as make demo trains: torchrun, each process its share of the cores
        progress = train_data_parallel(run_config, args.processes)
        steps, elapsed = progress["step"], progress["elapsed_s"]
    else:
        result = train_run(run_config)
        steps, elapsed = result.state.step, result.state.elapsed_s
    return {
        "steps": steps,
        "training_s": round(elapsed, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "batch_size": run_config.train.batch_size * args.processes,
        "processes": args.processes,
    }


def objects_a_grid_loses(dataset, grid: int = 7) -> dict:
    """Per class: test objects, and those YOLO v1's grid cannot be trained to find (another,
    larger object's centre falls in the same cell)."""
    counts = {name: [0, 0] for name in dataset.classes}
    for record in dataset.records:
        cells: dict = {}
        for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
            column = min(int((box[0] + box[2]) / 2 / record.width * grid), grid - 1)
            row = min(int((box[1] + box[3]) / 2 / record.height * grid), grid - 1)
            cells.setdefault((row, column), []).append(label)
            counts[dataset.classes[label - 1]][0] += 1
        for labels in cells.values():
            for label in labels[1:]:  # all but one object of a crowded cell
                counts[dataset.classes[label - 1]][1] += 1
    return {
        name: {"objects": total, "lost": lost, "lost_share": round(lost / max(total, 1), 3)}
        for name, (total, lost) in counts.items()
    }


def grid_loss_lines(grid_losses: dict) -> list[str]:
    """The Markdown table of :func:`objects_a_grid_loses`'s counts."""
    lines = [
        "Test objects YOLO v1's 7x7 grid cannot represent (another object's centre in the same cell; a "
        "cell holds one object):",
        "",
        "| class | objects | lost | share |",
        "|---|---|---|---|",
    ]
    for name, row in grid_losses.items():
        lines.append(f"| {name} | {row['objects']} | {row['lost']} | {row['lost_share']:.1%} |")
    return lines


def run_ultralytics(args, work: Path, dataset) -> dict:
    """Ultralytics' YOLOv8n from its YAML (random weights), trained for the budget, scored by detlab."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update or hub checks
    try:
        from ultralytics import YOLO as UltralyticsYOLO
    except Exception as error:  # not installed, or it fails to import offline
        return {"model": "ultralytics YOLOv8n (scratch)", "error": f"cannot import ultralytics: {error}"}
    from detlab.data.yolo import write_yolo

    data = DATA[args.data]
    folder = work / "ultralytics_data"
    shutil.rmtree(folder, ignore_errors=True)
    splits = {"train": data["train_split"], "val": data["test_split"]}
    for split, source in splits.items():
        write_yolo(load_split(args.data, source), folder, split=split)
    names = "\n".join(f"  {index}: {name}" for index, name in enumerate(dataset.classes))
    (folder / "data.yaml").write_text(
        f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    size = SETTINGS["yolo"][args.data].get("model", {}).get("input_size", 416)
    try:
        import ultralytics.utils.torch_utils as ultralytics_torch

        ultralytics_torch.NUM_THREADS = args.threads  # it would set cpu_count - 1 threads for CPU training
        model = UltralyticsYOLO("yolov8n.yaml")
        started = time.perf_counter()
        model.train(
            data=str(folder / "data.yaml"),
            time=args.budget_s / 3600,
            epochs=10_000,
            imgsz=size,
            batch=8,
            device="cpu",
            workers=0,
            plots=False,
            val=False,
            amp=False,
            project=str(work),
            name="ultralytics",
            exist_ok=True,
            pretrained=False,
            verbose=False,
        )
        training_s = time.perf_counter() - started
        epochs = model.trainer.epoch + 1
        torch.set_num_threads(args.threads)

        def predict(index, image):
            array = (
                (image.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype("uint8")
            )  # BGR, as it expects
            found = model.predict(array, imgsz=size, conf=0.001, iou=0.6, max_det=300, verbose=False)[0].boxes
            return {
                "boxes": found.xyxy.cpu(),
                "scores": found.conf.cpu(),
                "labels": found.cls.cpu().long() + 1,
            }

        return {
            "model": "ultralytics YOLOv8n (scratch)",
            "training_s": round(training_s, 1),
            "epochs": epochs,
            "batch_size": 8,
            **score(predict, dataset),
        }
    except Exception as error:
        return {"model": "ultralytics YOLOv8n (scratch)", "error": f"{type(error).__name__}: {error}"}


def markdown(report: dict) -> str:
    lines = [
        f"# One-stage detectors on {report['data']}, from scratch, {report['budget_s']:.0f} s each",
        "",
        *header_lines(report),
        "Each model trained in turn on the same threads for the same wall-clock budget"
        + (
            f" (detlab's in {report['processes']} data-parallel processes, each with its share of the cores)"
            if report.get("processes", 1) > 1
            else ""
        )
        + "; scored on the "
        f"{report['test_images']} test images with detlab's evaluators; test time is the median over those images, one "
        "at a time, at the model's own input size."
        + (
            f" One-stage models' settings beyond their defaults: `{' '.join(report['settings'])}`."
            if report.get("settings")
            else ""
        ),
        "",
        "| model | steps (batch) | mAP@0.5 (VOC07) | COCO AP50 | COCO AP | test s/image |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | not run: {row['error']} | | | | |")
            continue
        batch = (
            row["batch_size"]
            if row.get("processes", 1) == 1
            else f"{row['processes']} x {row['batch_size'] // row['processes']}"
        )
        steps = f"{row['steps']} ({batch})" if "steps" in row else f"{row['epochs']} epochs ({batch})"
        lines.append(
            f"| {row['model']} | {steps} | {row['mAP50_voc07']:.3f} | {row['AP50_coco']:.3f} | "
            f"{row['AP_coco']:.3f} | {row['s_per_image']} |"
        )
    scored = [row for row in report["rows"] if "error" not in row]
    classes = list(scored[0]["per_class_AP50_voc07"]) if scored else []
    lines += [
        "",
        "Per-class AP@0.5 (VOC07):",
        "",
        "| model | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for row in scored:
        lines.append(
            f"| {row['model']} | "
            + " | ".join(f"{v:.3f}" for v in row["per_class_AP50_voc07"].values())
            + " |"
        )
    if "grid_losses" in report:
        lines += ["", *grid_loss_lines(report["grid_losses"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=tuple(DATA), default="bccd")
    parser.add_argument("--budget-s", type=float, default=1500.0, help="training time of each model")
    parser.add_argument("--models", default="yolo,yolov1,faster_rcnn")
    parser.add_argument("--ultralytics", action="store_true", help="also Ultralytics' YOLOv8n, from scratch")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of this process (scoring, and training alone)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="train detlab's models in this many data-parallel processes (torchrun), each with "
        "its share of the cores; --set train.batch_size is then per process",
    )
    parser.add_argument("--work-dir", default="runs/bench-yolo")
    parser.add_argument(
        "--set", nargs="*", default=[], help="section.key=value settings of the one-stage models"
    )
    parser.add_argument("--results-name", help="results file name (default yolo_<data>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir) / args.data
    dataset = load_test_split(args.data)
    rows = []
    for name in filter(None, args.models.split(",")):
        trained = train(name, args, work / name)
        model = model_from_checkpoint(str(work / name), [])[0]
        row = {
            "model": LABELS[name],
            "name": name,
            **trained,
            **score(lambda index, image, m=model: m([image])[0], dataset),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.ultralytics:
        rows.append(run_ultralytics(args, work, dataset))
        print(json.dumps(rows[-1]), flush=True)
    report = {
        **stamp(),
        "data": args.data,
        "budget_s": args.budget_s,
        "settings": args.set,
        "processes": args.processes,
        "test_images": len(dataset),
        "rows": rows,
    }
    if "yolov1" in args.models.split(","):
        report["grid_losses"] = objects_a_grid_loses(dataset)
    write_results(args.results_name or f"yolo_{args.data}", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
