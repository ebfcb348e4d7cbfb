"""The lecture's "extras" table for detlab's Faster R-CNN: what each test-time addition buys, on
the same checkpoints. Rows, each adding to the one before (as in the lecture's table): the
baseline; + box refinement (``model.box_refinement=true``: the box head applied again to its own
boxes, both sets merged); + multi-scale testing (``--test-scales``, detections merged); + an
ensemble (the detections of a second checkpoint merged in). Every row is one pass over the test
images, one image at a time, as ``detlab.load`` loads the models (BatchNorm folded): mAP@0.5
(VOC07), COCO's AP50 and mAP@[.5:.95], and the median test time an image.

Usage (from the repository root, under the shared CPU lock), on two BCCD runs of Faster R-CNN:
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_test_time_extras.py --data bccd \\
      --checkpoints /tmp/bench/data_defaults/bccd/new /tmp/bench/extras/bccd_seed1 --results-name extras_bccd
"""

from __future__ import annotations

import sys

import torch
from common import checkpoints_parser, header_lines, stamp, write_results
from common import test_split as load_test_split

from detlab.comparison import score_and_time
from detlab.engine.predict import Predictor

# The lecture's rows (ResNet-101 Faster R-CNN on COCO, mAP@0.5; He et al. 2016, table 9).
LECTURE = {
    "baseline": 48.4,
    "box refinement": 49.9,
    "context": 51.1,
    "multi-scale testing": 53.8,
    "ensemble": 59.0,
}


def rows_for(checkpoints: list[str], scales: list[float]) -> list[tuple[str, dict]]:
    """``(label, Predictor.from_checkpoint keywords)``, each row adding to the one before."""
    refine = ["model.box_refinement=true"]
    rows = [
        ("baseline", {}),
        ("+ box refinement", {"overrides": refine}),
        (
            f"+ multi-scale testing ({', '.join(f'{s:g}' for s in scales)})",
            {"overrides": refine, "test_scales": scales},
        ),
    ]
    if len(checkpoints) > 1:
        rows.append(
            (
                f"+ ensemble of {len(checkpoints)} checkpoints",
                {"overrides": refine, "test_scales": scales, "ensemble": checkpoints[1:]},
            )
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Test-time additions for Faster R-CNN on {report['data']}",
        "",
        *header_lines(report),
        f"Checkpoints: {', '.join(f'`{path}`' for path in report['checkpoints'])}. Each row adds to the one before; "
        f"{report['test_images']} test images, one at a time, BatchNorm folded.",
        "",
        "| row | mAP@0.5 (VOC07) | COCO AP50 | mAP@[.5:.95] | test s/image |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['label']} | {row['mAP50_voc07']:.3f} | {row['AP50_coco']:.3f} | {row['AP_coco']:.3f} | "
            f"{row['s_per_image_with_proposals']:.4f} |"
        )
    lines += [
        "",
        "The lecture's rows (ResNet-101 Faster R-CNN on COCO, mAP@0.5): "
        + ", ".join(f"{name} {value}" for name, value in LECTURE.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = checkpoints_parser(__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.8, 1.0, 1.2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_test_split(args.data)
    rows = []
    for label, options in rows_for(args.checkpoints, args.scales):
        predictor = Predictor.from_checkpoint(args.checkpoints[0], device="cpu", **options)
        measured = score_and_time(predictor.model, dataset, predictor.device)
        measured.pop("figure_outputs")
        rows.append({"label": label, **measured})
        print(
            f"{label}: mAP@0.5 {measured['mAP50_voc07']:.3f}, AP {measured['AP_coco']:.3f}, "
            f"{measured['s_per_image_with_proposals']:.4f} s an image",
            flush=True,
        )
    report = {
        **stamp(),
        "data": args.data,
        "checkpoints": args.checkpoints,
        "test_images": len(dataset),
        "rows": rows,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
