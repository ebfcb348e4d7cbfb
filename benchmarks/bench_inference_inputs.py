"""Inference where users' images are: tiled inference for small objects, batched prediction, video.

Parts (each rewrites its own section of ``benchmarks/results/inference_inputs.json`` with its
command, date and machine; the Markdown is written from the whole file):

- ``small``: on ``synthetic-small`` (1024-pixel images, 20-60 shapes of 8-32 px and 0-2 large
  ones), a method trained on whole images and run on them, against the same method trained on a
  tiled copy for the same time and run with tiled inference (and with the full image added);
  COCO AP, AP50, AP_small/medium/large and seconds an image on the test split;
- ``bccd``: tiled inference with BCCD checkpoints, whose objects are large for their images;
- ``batch``: images a second at batch sizes 1, 4 and 8 (PyTorch and the exported ONNX file),
  and the largest difference from one image at a time;
- ``video``: a clip assembled from synthetic test images, predicted as a file and as a folder of
  its decoded frames: detections per frame, and frames a second against images a second.

The trainings it reads (one at a time, under the shared CPU lock; ``detlab`` is
``PYTHONPATH=src .venv/bin/python -m detlab``)::

  detlab data synth --small --out data/synthetic-small --images 600
  detlab convert synthetic-small voc:data/synthetic-small-tiles256 --split train --tile 256 --overlap 0.2
  detlab convert synthetic-small voc:data/synthetic-small-tiles256 --split val --tile 256 --overlap 0.2
  detlab train yolo --data synthetic-small --set data.vertical_flip=true --set data.rotate90=true \\
      --time-budget 720 --out runs/small-whole
  detlab train yolo --data voc:data/synthetic-small-tiles256 --set data.vertical_flip=true \\
      --set data.rotate90=true --time-budget 720 --out runs/small-tiles
  detlab train yolo --data voc:../shared/data/bccd --set data.train_split=trainval --set data.val_split= \\
      --set data.test_split=test --set data.vertical_flip=true --time-budget 480 --out runs/bccd-yolo
  detlab train faster_rcnn --preset bccd --data voc:../shared/data/bccd --set data.vertical_flip=true \\
      --time-budget 480 --out runs/bccd-faster_rcnn

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_inference_inputs.py \\
      --part small --whole runs/small-whole --tiles runs/small-tiles
  ... --part bccd --checkpoints runs/bccd-yolo runs/bccd-faster_rcnn
  ... --part batch --checkpoints runs/bccd-faster_rcnn runs/bccd-yolo
  ... --part video --checkpoints runs/small-tiles
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, header_lines, in_turn, stamp, write_results
from common import test_split as load_test_split

from detlab.data.images import save_image
from detlab.data.loading import load_dataset
from detlab.engine import checkpoint as checkpoints
from detlab.engine.predict import Predictor, predict_files
from detlab.engine.predict_video import predict_video
from detlab.eval.coco import COCOEvaluator
from detlab.tiles import Tiling
from detlab.video_files import VideoReader, VideoWriter

NAME = "inference_inputs"
METRICS = ("AP", "AP50", "APs", "APm", "APl")


def trained_steps(run: str) -> dict:
    """The training a run folder's last checkpoint records: steps, seconds, method."""
    last = Path(run) / "last.pt"
    stored = checkpoints.load_checkpoint(last if last.is_file() else run)
    progress = stored.get("progress", {"step": 0, "elapsed_s": 0.0})
    return {
        "run": str(run),
        "method": stored["config"]["model_name"],
        "data": stored["config"]["data"]["spec"],
        "steps": int(progress["step"]),
        "train_s": round(float(progress["elapsed_s"]), 1),
        "batch_size": int(stored["config"]["train"]["batch_size"]),
    }


@torch.no_grad()
def scored(predictor: Predictor, dataset, tiling: Tiling | None) -> dict:
    """COCO metrics of ``predictor`` (with ``tiling``) on ``dataset``, each image predicted alone
    and timed: the median seconds an image."""
    evaluator, seconds = COCOEvaluator(dataset.classes), []
    for index in range(len(dataset)):
        image, target = dataset[index]
        started = time.perf_counter()
        found = predictor.predict(image, score_threshold=None, tiling=tiling)
        seconds.append(time.perf_counter() - started)
        evaluator.update([found], [target])
    summary = evaluator.compute().summary()
    return {
        **{name: round(summary[name], 4) for name in METRICS},
        "s_per_image": round(statistics.median(seconds), 4),
    }


def run_small(args) -> dict:
    """Whole images against tiles on synthetic-small's test split."""
    dataset = load_dataset("synthetic-small", "test", num_synthetic=args.small_images)
    if args.max_images:
        dataset = dataset.subset(range(args.max_images))
    whole = Predictor.from_checkpoint(args.whole, device="cpu")
    tiles = Predictor.from_checkpoint(args.tiles, device="cpu")
    tile = Tiling(args.tile, args.overlap)
    variants = [
        ("trained on whole images, run on whole images", whole, None),
        (
            f"trained on whole images, tiled inference ({args.whole_tile} px)",
            whole,
            Tiling(args.whole_tile, args.overlap),
        ),
        (f"trained on {args.tile} px tiles, tiled inference", tiles, tile),
        (
            f"trained on {args.tile} px tiles, tiled inference + full image",
            tiles,
            Tiling(args.tile, args.overlap, True),
        ),
    ]
    rows = []
    for label, predictor, tiling in variants:
        print(f"scoring: {label}", file=sys.stderr)
        rows.append(
            {"variant": label, "tiling": tiling and vars_of(tiling), **scored(predictor, dataset, tiling)}
        )
    return {
        "test_images": len(dataset),
        "objects": int(sum(len(record.boxes) for record in dataset.records)),
        "training": {"whole": trained_steps(args.whole), "tiles": trained_steps(args.tiles)},
        "rows": rows,
    }


def vars_of(tiling: Tiling) -> dict:
    return {
        "size": tiling.size,
        "overlap": tiling.overlap,
        "full_image": tiling.full_image,
        "merge": tiling.merge,
    }


def run_bccd(args) -> dict:
    """Tiled inference on BCCD's test split, where cells are large for the images."""
    dataset = load_test_split("bccd", args.max_images)
    rows = []
    for run in args.checkpoints:
        predictor = Predictor.from_checkpoint(run, device="cpu")
        for tiling in (
            None,
            Tiling(args.bccd_tile, args.overlap),
            Tiling(args.bccd_tile, args.overlap, True),
        ):
            label = (
                "whole image"
                if tiling is None
                else f"{tiling.size} px tiles" + (" + full image" if tiling.full_image else "")
            )
            print(f"scoring {run}: {label}", file=sys.stderr)
            rows.append(
                {"training": trained_steps(run), "variant": label, **scored(predictor, dataset, tiling)}
            )
    return {"test_images": len(dataset), "rows": rows}


def batch_rates(predict, images: list, sizes: tuple[int, ...], rounds: int) -> dict[int, float]:
    """Images a second of ``predict(list)`` at each batch size: the median of ``rounds`` passes
    over ``images``, the sizes interleaved round by round."""
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    predict(images[: max(sizes)])  # warm-up
    for round_index in range(rounds):
        for size in in_turn(list(sizes), round_index):
            started = time.perf_counter()
            for start in range(0, len(images), size):
                predict(images[start : start + size])
            rates[size].append(len(images) / (time.perf_counter() - started))
    return {size: round(statistics.median(values), 2) for size, values in rates.items()}


def largest_differences(one_by_one: list[dict], batched: list[dict]) -> dict:
    """Over the images: whether the counts and labels agree, and the largest box and score difference."""
    same, box, score = True, 0.0, 0.0
    for first, second in zip(one_by_one, batched):
        labels = [np.asarray(result["labels"]).tolist() for result in (first, second)]
        if labels[0] != labels[1]:
            same = False
            continue
        if labels[0]:
            box = max(box, float(np.abs(np.asarray(first["boxes"]) - np.asarray(second["boxes"])).max()))
            score = max(
                score, float(np.abs(np.asarray(first["scores"]) - np.asarray(second["scores"])).max())
            )
    return {"same_detections": same, "max_box_diff_px": round(box, 5), "max_score_diff": round(score, 6)}


def run_batch(args) -> dict:
    """Images a second at batch sizes 1, 4 and 8, PyTorch and ONNX; detections against batch 1."""
    from detlab.export.onnx_export import export_onnx
    from detlab.export.runtime import OnnxPredictor

    dataset = load_test_split("bccd", args.max_images)
    images = [dataset[index][0] for index in range(len(dataset))]
    pixels = [(image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for image in images]
    rows = []
    for run in args.checkpoints:
        predictor = Predictor.from_checkpoint(run, device="cpu")
        with tempfile.TemporaryDirectory() as folder:
            export_onnx(run, Path(folder) / "model.onnx")
            onnx = OnnxPredictor(Path(folder) / "model.onnx")
            for runtime, predict, inputs in (
                ("PyTorch", lambda batch, model=predictor: model.predict_batch(batch, 0.05), images),
                ("onnxruntime", lambda batch, model=onnx: model.predict_batch(batch, 0.05), pixels),
            ):
                print(f"{run}: {runtime}", file=sys.stderr)
                alone = [predict([item])[0] for item in inputs]
                batched = [
                    found
                    for start in range(0, len(inputs), 8)
                    for found in predict(inputs[start : start + 8])
                ]
                rates = batch_rates(predict, inputs, (1, 4, 8), args.rounds)
                rows.append(
                    {
                        "training": trained_steps(run),
                        "runtime": runtime,
                        "images_per_s": {str(size): rate for size, rate in rates.items()},
                        **largest_differences(alone, batched),
                    }
                )
    return {"images": len(images), "image_size": list(images[0].shape[-2:]), "rows": rows}


def run_video(args) -> dict:
    """A clip of synthetic test images: file prediction against its decoded frames as a folder."""
    from detlab.data.synthetic import render_image

    predictor = Predictor.from_checkpoint(args.checkpoints[0], device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clip = folder / "synthetic.mp4"
        with VideoWriter(clip, 10.0, quality=18) as writer:
            for index in range(args.frames):  # the synthetic set's test split starts at 510 of 600
                writer.write(np.asarray(render_image(0, 510 + index % 90)[0]))
        frames = folder / "frames"
        frames.mkdir()
        with VideoReader(clip) as reader:
            for frame in reader:  # the decoded frames: what the video run predicts
                save_image(torch.from_numpy(frame.pixels).permute(2, 0, 1), frames / f"{frame.index:05d}.png")
        seconds = {"video": [], "folder": []}
        runs = {
            "video": lambda: predict_video(
                predictor, clip, folder / "out-video", draw_threshold=0.3, batch_size=1
            ),
            "folder": lambda: predict_files(
                predictor, frames, folder / "out-folder", draw_threshold=0.3, batch_size=1
            ),
        }
        runs["video"](), runs["folder"]()  # warm-up
        for round_index in range(args.rounds):
            for name in in_turn(list(runs), round_index):
                started = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - started)
        same = same_video_and_folder_detections(
            folder / "out-video" / "detections.jsonl", folder / "out-folder"
        )
    rates = {name: args.frames / statistics.median(values) for name, values in seconds.items()}
    return {
        "checkpoint": trained_steps(args.checkpoints[0]),
        "frames": args.frames,
        "frame_size": [256, 256],
        "video_frames_per_s": round(rates["video"], 2),
        "folder_images_per_s": round(rates["folder"], 2),
        "ratio": round(rates["video"] / rates["folder"], 3),
        **same,
    }


def same_video_and_folder_detections(lines_file: Path, folder_out: Path) -> dict:
    """Whether every frame's line holds the detections the folder run wrote for that frame."""
    lines = [json.loads(line) for line in lines_file.read_text().splitlines()]
    entries = json.loads((folder_out / "detections.json").read_text())
    by_image: dict[int, list] = {}
    for entry in entries:
        by_image.setdefault(entry["image_id"], []).append(entry)
    largest, same = 0.0, True
    for line in lines:
        folder_found = by_image.get(line["frame"] + 1, [])
        if [d["category_id"] for d in line["detections"]] != [d["category_id"] for d in folder_found]:
            same = False
            continue
        for video_entry, folder_entry in zip(line["detections"], folder_found):
            largest = max(largest, *(abs(a - b) for a, b in zip(video_entry["bbox"], folder_entry["bbox"])))
    return {"same_detections": same, "frames_compared": len(lines), "max_bbox_diff_px": round(largest, 3)}


def markdown(report: dict) -> str:
    lines = ["# Inference where users' images are: tiled inference, batched prediction, video", ""]
    if "small" in report:
        lines += small_markdown(report["small"])
    if "bccd" in report:
        lines += bccd_markdown(report["bccd"])
    if "batch" in report:
        lines += batch_markdown(report["batch"])
    if "video" in report:
        lines += video_markdown(report["video"])
    return "\n".join(lines) + "\n"


def metric_cells(row: dict) -> str:
    return " | ".join(f"{row[name]:.3f}" if row[name] >= 0 else "-" for name in METRICS)


def small_markdown(part: dict) -> list[str]:
    whole, tiles = part["training"]["whole"], part["training"]["tiles"]
    lines = [
        "## Small objects: synthetic-small, whole images against tiles",
        "",
        *header_lines(part),
        f"{part['test_images']} test images (1024 x 1024, {part['objects']} objects), each predicted alone; "
        f"COCO metrics (APs: area under 32², APl: over 96²). Same method ({whole['method']}), same budget: "
        f"whole images {whole['steps']} steps of {whole['batch_size']} in {whole['train_s']:.0f} s, tiles "
        f"{tiles['steps']} steps of {tiles['batch_size']} in {tiles['train_s']:.0f} s.",
        "",
        "| variant | AP | AP50 | AP_small | AP_medium | AP_large | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in part["rows"]:
        lines.append(f"| {row['variant']} | {metric_cells(row)} | {row['s_per_image']:.3f} |")
    return lines + [""]


def bccd_markdown(part: dict) -> list[str]:
    lines = [
        "## Large objects: BCCD, whole images against tiles",
        "",
        *header_lines(part),
        f"{part['test_images']} test images (640 x 480), each predicted alone; COCO metrics.",
        "",
        "| checkpoint | steps (s) | variant | AP | AP50 | AP_small | AP_medium | AP_large | s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in part["rows"]:
        training = row["training"]
        lines.append(
            f"| {training['method']} | {training['steps']} ({training['train_s']:.0f}) | {row['variant']} | "
            f"{metric_cells(row)} | {row['s_per_image']:.3f} |"
        )
    return lines + [""]


def batch_markdown(part: dict) -> list[str]:
    height, width = part["image_size"]
    lines = [
        "## Batched prediction",
        "",
        *header_lines(part),
        f"{part['images']} BCCD test images ({width} x {height}), N a call; images a second (median of the "
        "rounds); detections of batches of 8 against one image at a time.",
        "",
        "| checkpoint | runtime | N = 1 | N = 4 | N = 8 | same detections | max box diff (px) | max score diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in part["rows"]:
        rates = row["images_per_s"]
        lines.append(
            f"| {row['training']['method']} | {row['runtime']} | {rates['1']:.1f} | {rates['4']:.1f} | "
            f"{rates['8']:.1f} | {'yes' if row['same_detections'] else 'no'} | {row['max_box_diff_px']:g} | "
            f"{row['max_score_diff']:g} |"
        )
    return lines + [""]


def video_markdown(part: dict) -> list[str]:
    return [
        "## Video",
        "",
        *header_lines(part),
        f"A clip of {part['frames']} synthetic test images ({part['frame_size'][0]} x {part['frame_size'][1]}, "
        f"H.264), predicted with {part['checkpoint']['method']} ({part['checkpoint']['run']}) as a video file "
        "(`detlab predict --input clip.mp4`) and as a folder of its decoded frames (PNG), one image a pass, "
        "annotated output written by both; median of the rounds.",
        "",
        "| video frames/s | folder images/s | ratio | every frame's detections = its image's | max bbox diff (px) |",
        "|---|---|---|---|---|",
        f"| {part['video_frames_per_s']:.1f} | {part['folder_images_per_s']:.1f} | {part['ratio']:.2f} | "
        f"{'yes' if part['same_detections'] else 'no'} ({part['frames_compared']} frames) | "
        f"{part['max_bbox_diff_px']:g} |",
        "",
    ]


PARTS = {"small": run_small, "bccd": run_bccd, "batch": run_batch, "video": run_video}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=tuple(PARTS), required=True)
    parser.add_argument("--whole", help="small: the run trained on whole images")
    parser.add_argument("--tiles", help="small: the run trained on tiles")
    parser.add_argument("--checkpoints", nargs="+", default=[], help="bccd, batch, video: runs")
    parser.add_argument("--tile", type=int, default=256, help="small: the tiles the tile run trained on")
    parser.add_argument("--whole-tile", type=int, default=512, help="small: tiles for the whole-image run")
    parser.add_argument("--bccd-tile", type=int, default=320)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--small-images", type=int, default=600, help="the synthetic-small set's size")
    parser.add_argument("--max-images", type=int, default=0, help="the first N test images (0: all)")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{NAME}.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[args.part] = {**stamp(), **PARTS[args.part](args)}
    write_results(NAME, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
