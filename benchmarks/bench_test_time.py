"""Test time per image of trained detectors, measured side by side: every test image is given to
each model in turn (the order rotating from image to image), one image at a time, for several
rounds after a warm-up, so drifts of the machine fall on all models alike. Reports each model's
median seconds an image and its ratio to the first checkpoint's. Models are loaded as ``detlab.load``
loads them for prediction (BatchNorm folded into the convolutions).

Usage (from the repository root, under the shared CPU lock), on checkpoints ``bench_yolo.py`` left:
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_test_time.py --data bccd \\
      --checkpoints /tmp/bench/yolo/bccd/faster_rcnn /tmp/bench/yolo/bccd/yolo /tmp/bench/yolo/bccd/yolov1 \\
      --results-name test_time_bccd
Results: ``benchmarks/results/<results-name>.{json,md}``.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from common import checkpoints_parser, header_lines, in_turn, stamp, write_results
from common import test_split as load_test_split

from detlab.engine.predict import Predictor


@torch.no_grad()
def interleaved_times(models: list, dataset, rounds: int, warmup: int = 3) -> list[list[float]]:
    """Per model, the seconds of each ``model([image])`` call over ``rounds`` passes of ``dataset``."""
    for index in range(min(warmup, len(dataset))):
        for model in models:
            model([dataset[index][0]])
    seconds: list[list[float]] = [[] for _ in models]
    images = [dataset[index][0] for index in range(len(dataset))]
    for round_index in range(rounds):
        for index, image in enumerate(images):
            for slot in in_turn(list(range(len(models))), index + round_index):
                started = time.perf_counter()
                models[slot]([image])
                seconds[slot].append(time.perf_counter() - started)
    return seconds


def markdown(report: dict) -> str:
    lines = [
        f"# Test time per image on {report['data']}, side by side",
        "",
        *header_lines(report),
        f"{report['test_images']} test images x {report['rounds']} rounds, one image a call, models "
        "interleaved image by image; median and 90th percentile of the calls.",
        "",
        "| checkpoint | model | median s/image | p90 s/image | median vs the first |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| `{row['checkpoint']}` | {row['model']} | {row['median_s']:.4f} | {row['p90_s']:.4f} | "
            f"{row['ratio_to_first']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = checkpoints_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_test_split(args.data)
    loaded = [Predictor.from_checkpoint(checkpoint, device="cpu") for checkpoint in args.checkpoints]
    seconds = interleaved_times([predictor.model for predictor in loaded], dataset, args.rounds)
    medians = [statistics.median(values) for values in seconds]
    rows = [
        {
            "checkpoint": checkpoint,
            "model": predictor.run_config.model_name,
            "median_s": round(median, 5),
            "p90_s": round(statistics.quantiles(values, n=10)[-1], 5),
            "ratio_to_first": round(median / medians[0], 4),
        }
        for checkpoint, predictor, values, median in zip(args.checkpoints, loaded, seconds, medians)
    ]
    report = {**stamp(), "data": args.data, "rounds": args.rounds, "test_images": len(dataset), "rows": rows}
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
