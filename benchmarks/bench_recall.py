"""Where trained detectors lose objects: per class, the share of test objects that some detection
of the same class overlaps by at least IoU 0.1, 0.3, 0.5 and 0.7 (at any score, among what the
model keeps). High recall at 0.1-0.3 but low at 0.5 means the objects are found but the boxes
are loose; low recall at 0.1 means they are not found at all. For one-stage grids it also counts
the objects a 7 x 7 grid cannot hold (``bench_yolo.objects_a_grid_loses``).

Usage (from the repository root, under the shared CPU lock), on checkpoints ``bench_yolo.py`` left:
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_recall.py --data bccd \\
      --checkpoints /tmp/bench/yolo/bccd/yolov1 /tmp/bench/yolo/bccd/yolo --results-name yolo_bccd_recall
Results: ``benchmarks/results/<results-name>.{json,md}``.
"""

from __future__ import annotations

import sys

import torch
from bench_yolo import grid_loss_lines, objects_a_grid_loses
from common import checkpoints_parser, header_lines, stamp, write_results
from common import test_split as load_test_split

from detlab.boxes import iou
from detlab.engine.predict import model_from_checkpoint

THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


@torch.no_grad()
def recall_by_class(model, dataset) -> dict:
    """``{class: {"objects": n, "recall@t": share, ...}}`` over ``dataset``."""
    found = {name: [0] * (1 + len(THRESHOLDS)) for name in dataset.classes}
    for index in range(len(dataset)):
        image, target = dataset[index]
        output = model([image])[0]
        for label in target["labels"].unique().tolist():
            truth = target["boxes"][target["labels"] == label]
            detected = output["boxes"][output["labels"] == label]
            counts = found[dataset.classes[label - 1]]
            counts[0] += len(truth)
            if len(detected):
                best = iou(truth, detected.float()).amax(1)
                for slot, threshold in enumerate(THRESHOLDS, 1):
                    counts[slot] += int((best >= threshold).sum())
    return {
        name: {
            "objects": counts[0],
            **{f"recall@{t}": round(c / max(counts[0], 1), 3) for t, c in zip(THRESHOLDS, counts[1:])},
        }
        for name, counts in found.items()
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Recall by class and IoU on {report['data']}'s test split",
        "",
        *header_lines(report),
        "Share of test objects overlapped by a detection of their class (any score) at each IoU.",
        "",
        "| checkpoint | class | objects | " + " | ".join(f"IoU {t}" for t in THRESHOLDS) + " |",
        "|---|---|---|" + "---|" * len(THRESHOLDS),
    ]
    for row in report["rows"]:
        for name, values in row["classes"].items():
            shares = " | ".join(f"{values[f'recall@{t}']:.3f}" for t in THRESHOLDS)
            lines.append(f"| {row['model']} | {name} | {values['objects']} | {shares} |")
    lines += ["", *grid_loss_lines(report["grid_losses"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = checkpoints_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_test_split(args.data)
    rows = []
    for checkpoint in args.checkpoints:
        model, _, run_config = model_from_checkpoint(checkpoint, [])
        rows.append(
            {
                "model": run_config.model_name,
                "checkpoint": checkpoint,
                "classes": recall_by_class(model, dataset),
            }
        )
    report = {**stamp(), "data": args.data, "rows": rows, "grid_losses": objects_a_grid_loses(dataset)}
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
