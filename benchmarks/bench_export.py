"""ONNX export of trained checkpoints: parity with PyTorch and time per image, one run.

For each checkpoint: export it (``detlab.export.onnx_export.export_onnx``), then on every test
image compare
- the raw outputs of the exported graph (onnxruntime) with the same wrapper run by PyTorch on the
  same input tensor (max absolute difference, and whether they lie within rtol 1e-3 / atol 1e-5);
- the final detections of ``detlab.load(checkpoint)`` and ``detlab.load("model.onnx")`` from the
  image file: matched one to one (same class, the assignment of highest total IoU), the share of
  matches with IoU > 0.99 and score difference < 1e-3 (both as :mod:`detlab.export.parity` defines);
and time both predictors, a pass over all images each in turn (the order alternating from round to
round), for several rounds after a warm-up: median seconds an image from the decoded image to the
detections, on the same number of threads (torch's intra-op threads = onnxruntime's). The PyTorch
side is ``detlab.load(checkpoint)`` as users get it (BatchNorm folded into the convolutions).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_export.py --data bccd \\
      --checkpoints /tmp/bench/yolo/bccd/faster_rcnn /tmp/bench/yolo/bccd/yolo /tmp/bench/yolo/bccd/yolov1 \\
      --results-name export_bccd
Results: ``benchmarks/results/<results-name>.{json,md}``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import checkpoints_parser, header_lines, stamp, write_results
from common import test_split as load_test_split

import detlab
from detlab.export import parity, runtime
from detlab.export.onnx_export import export_onnx, export_plan


def measure(checkpoint: str, images: list, rounds: int, threads: int, folder: Path) -> dict:
    onnx_file = folder / f"{Path(checkpoint).resolve().parent.name}-{Path(checkpoint).stem}.onnx"
    started = time.perf_counter()
    metadata = export_onnx(checkpoint, onnx_file)
    export_s = time.perf_counter() - started
    torch_predictor = detlab.load(checkpoint, device="cpu")
    onnx_predictor = runtime.OnnxPredictor(onnx_file, threads=threads)
    graph, *_ = export_plan(torch_predictor.model, metadata["method"])
    good = total = unpaired = 0
    least_iou, worst_score, worst_raw, all_close = 1.0, 0.0, 0.0, True
    for pixels in images:
        raw = parity.raw_output_differences(*parity.raw_outputs(graph, onnx_predictor, pixels))
        worst_raw, all_close = max(worst_raw, raw["max_abs_diff"]), all_close and raw["within_tolerance"]
        unpaired += raw["unpaired_rows"]
        counts = parity.matched_detections(torch_predictor.predict(pixels), onnx_predictor.predict(pixels))
        good, total = good + counts["good"], total + max(counts["expected"], counts["found"])
        least_iou, worst_score = (
            min(least_iou, counts["least_iou"]),
            max(worst_score, counts["largest_score_diff"]),
        )
    predictors = [torch_predictor, onnx_predictor]
    for pixels in images[:3]:  # warm-up
        for predictor in predictors:
            predictor.predict(pixels)
    seconds: list[list[float]] = [[], []]
    for round_index in range(rounds):
        # a whole pass over the images each, in turn: alternating image by image would put the two
        # runtimes' thread pools (OpenMP's spinning ones and onnxruntime's) in each other's way
        for slot in (0, 1) if round_index % 2 == 0 else (1, 0):
            for pixels in images:
                started = time.perf_counter()
                predictors[slot].predict(pixels)
                seconds[slot].append(time.perf_counter() - started)
    torch_s, onnx_s = statistics.median(seconds[0]), statistics.median(seconds[1])
    return {
        "checkpoint": checkpoint,
        "model": metadata["method"],
        "export_s": round(export_s, 2),
        "onnx_mb": round(onnx_file.stat().st_size / 2**20, 2),
        "raw_max_abs_diff": worst_raw,
        "raw_within_tolerance": all_close,
        "unpaired_proposals": unpaired,
        "detections": total,
        "matched": good,
        "least_match_iou": round(least_iou, 6),
        "largest_score_diff": worst_score,
        "torch_median_s": round(torch_s, 5),
        "onnx_median_s": round(onnx_s, 5),
        "onnx_vs_torch": round(onnx_s / torch_s, 3),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# ONNX export on {report['data']}: parity with PyTorch and time per image",
        "",
        *header_lines(report),
        f"{report['test_images']} test images; timing: {report['rounds']} rounds, a pass over the images each, PyTorch "
        f"and onnxruntime in turn, {report['threads']} threads each (median of the calls, decoded image to "
        "detections). Raw outputs: the exported graph and the same PyTorch wrapper on the same input tensor. "
        "Detections: from the image through each whole path, matched one to one by class and IoU.",
        "",
        "Raw differences of coordinates are in units of the input's longer side (see detlab.export.parity); "
        "unpaired: Faster R-CNN proposals of one side with no equal on the other.",
        "",
        "| model | raw max abs diff | raw within rtol 1e-3/atol 1e-5 | unpaired proposals | detections matched (IoU > 0.99, score diff "
        "< 1e-3) | least IoU | largest score diff | PyTorch s/img | onnxruntime s/img | onnx / torch | file MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['raw_max_abs_diff']:.2e} | {'yes' if row['raw_within_tolerance'] else 'NO'} | {row['unpaired_proposals']} | "
            f"{row['matched']} / {row['detections']} | {row['least_match_iou']:.5f} | {row['largest_score_diff']:.1e} | "
            f"{row['torch_median_s']:.4f} | {row['onnx_median_s']:.4f} | {row['onnx_vs_torch']:.2f} | {row['onnx_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = checkpoints_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=0, help="the first this many test images (0 = all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_test_split(args.data, args.images)
    images = [
        (dataset[index][0] * 255 + 0.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()
        for index in range(len(dataset))
    ]
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            measure(checkpoint, images, args.rounds, args.threads, Path(folder))
            for checkpoint in args.checkpoints
        ]
    report = {
        **stamp(),
        "data": args.data,
        "rounds": args.rounds,
        "threads": args.threads,
        "test_images": len(images),
        "rows": rows,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
