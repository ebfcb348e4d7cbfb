"""Benchmark: classification + localization, DeepPose keypoints and the OverFeat detector.

Parts (``--part``, run them one by one; each merges its numbers into the results file):
- ``headline``: the synthetic single-object set, one from-scratch run with a time budget
  (default 480 s), the issue's target being top-1 localization accuracy >= 0.90;
- ``grid``: 4-step vs joint x agnostic vs specific x conv vs fc on the synthetic single-object set,
  and 4-step vs joint x conv vs fc on raccoon (one class: agnostic and specific are the same
  there, and classification accuracy is trivially 1), each run with a short time budget;
- ``keypoints``: DeepPose on the synthetic stick figures, PCK and mean error after stage 1 and
  after the refinement stage;
- ``overfeat``: a localizer with a background class trained on windows of the synthetic
  multi-object training images, converted to the fully-convolutional detector, mAP@0.5 (VOC) on
  synthetic test images.

Usage (from the repository root, under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_localization.py --part headline
Writes benchmarks/results/localization.{json,md} (headline, grid, overfeat) and
benchmarks/results/keypoints.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from detlab.config import DataConfig, TrainConfig  # noqa: E402
from detlab.models.localizer_training import (  # noqa: E402
    LocalizerConfig,
    LocalizerModelConfig,
    load_window_data,
    train_localizer,
)

RESULTS = REPO / "benchmarks" / "results"
RACCOON = REPO.parent / "shared" / "data" / "raccoon"
METRICS = ("classification_accuracy", "mean_iou", "top1_localization", "top5_localization")


def machine() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def quiet(message: str) -> None:
    if "step" not in message or message.split("step ")[1].startswith(("100/", "200/")):
        print(message, flush=True)


def localizer_config(spec: str, root: str, budget_s: float, out_dir: str, **model) -> LocalizerConfig:
    synthetic = spec == "synthetic-single"  # shapes have no up and down; raccoons do
    data = DataConfig(spec=spec, root=root, train_split="trainval", test_split="test",
                      vertical_flip=synthetic, rotate90=synthetic)  # fmt: skip
    train = TrainConfig(out_dir=out_dir, epochs=1000, time_budget_s=budget_s, batch_size=32, optimizer="adamw",
                        lr=1e-3, warmup_steps=20, weight_decay=1e-4, log_every=100)  # fmt: skip
    return LocalizerConfig(model=LocalizerModelConfig(**model), data=data, train=train)


def run_localizer(config: LocalizerConfig, data, dataset_name: str) -> dict:
    try:
        results = train_localizer(config, log=quiet, data=data)
    except FloatingPointError as error:  # a diverged run is a result too; the grid goes on
        print(f"diverged: {error}", flush=True)
        return {"data": dataset_name, "recipe": config.model.recipe, "regression": config.model.regression,
                "attach": config.model.attach, "diverged": str(error)}  # fmt: skip
    row = {"data": dataset_name, "recipe": config.model.recipe, "regression": config.model.regression,
           "attach": config.model.attach, "training_s": round(results["training_seconds"], 1),
           "steps": sum(step["steps"] for step in results["history"].values()),
           "test_images": results["test"]["num_images"]}  # fmt: skip
    row.update({key: round(results["test"][key], 4) for key in METRICS})
    print(json.dumps(row), flush=True)
    return row


def part_headline(args) -> dict:
    config = localizer_config("synthetic-single", args.synthetic_root, args.headline_budget,
                              "runs/bench-localizer-headline", window_size=args.window_size,
                              synthetic_images=args.synthetic_images, recipe="joint", regression="agnostic",
                              attach=args.headline_attach)  # fmt: skip
    data = load_window_data(config)
    return {"headline": run_localizer(config, data, "synthetic-single")}


def part_grid(args) -> dict:
    rows = []
    base = localizer_config("synthetic-single", args.synthetic_root, args.grid_budget, "runs/bench-localizer-grid",
                            window_size=args.window_size, synthetic_images=args.synthetic_images)  # fmt: skip
    data = load_window_data(base)
    for recipe in ("4step", "joint"):
        for regression in ("agnostic", "specific"):
            for attach in ("conv", "fc"):
                config = dataclasses.replace(
                    base,
                    model=dataclasses.replace(
                        base.model, recipe=recipe, regression=regression, attach=attach
                    ),
                )
                rows.append(run_localizer(config, data, "synthetic-single"))
    if RACCOON.is_dir():
        base = localizer_config(f"voc:{RACCOON}", "", args.raccoon_budget, "runs/bench-localizer-raccoon",
                                window_size=args.window_size)  # fmt: skip
        data = load_window_data(base)
        for recipe in ("4step", "joint"):
            for attach in ("conv", "fc"):
                config = dataclasses.replace(
                    base, model=dataclasses.replace(base.model, recipe=recipe, attach=attach)
                )
                rows.append(run_localizer(config, data, "raccoon"))
    return {"grid": rows, "grid_budget_s": args.grid_budget, "raccoon_budget_s": args.raccoon_budget}


def part_keypoints(args) -> dict:
    from detlab.models.keypoints import KeypointConfig, KeypointModelConfig, train_keypoints

    config = KeypointConfig(
        model=KeypointModelConfig(stages=1, synthetic_images=args.keypoint_images),
        train=TrainConfig(out_dir="runs/bench-keypoints", epochs=1000, time_budget_s=args.keypoint_budget,
                          batch_size=32, optimizer="adamw", lr=1e-3, warmup_steps=20, log_every=100),
    )  # fmt: skip
    results = train_keypoints(config, log=quiet)
    return {"stages": results["stages"], "training_s": round(results["training_seconds"], 1),
            "num_train": results["num_train"], "num_test": results["num_test"],
            "stage_seconds": {k: round(v["seconds"], 1) for k, v in results["history"].items()}}  # fmt: skip


def part_overfeat(args) -> dict:
    from detlab.models.overfeat import DetectorConfig, OverFeatConfig, train_overfeat

    config = OverFeatConfig(
        model=LocalizerModelConfig(window_size=args.window_size, recipe="joint", regression="specific", attach="conv",
                                   synthetic_images=args.multi_images, padding=0),
        detector=DetectorConfig(scales=tuple(args.scales), score_threshold=args.score_threshold,
                                windows_per_image=args.windows_per_image, eval_images=args.overfeat_test_images),
        data=DataConfig(spec="synthetic", root=args.multi_root, vertical_flip=True, rotate90=True),
        train=TrainConfig(out_dir="runs/bench-overfeat", epochs=1000, time_budget_s=args.overfeat_budget,
                          batch_size=32, optimizer="adamw", lr=1e-3, warmup_steps=20, log_every=100),
    )  # fmt: skip
    results = train_overfeat(config, log=quiet)
    detection = results["detection"]
    row = {"scales": results["scales"], "score_threshold": args.score_threshold,
           "mAP@0.5": round(detection["mAP@0.5"], 4), "images": detection["images"],
           "seconds_per_image": round(detection["seconds_per_image"], 3),
           "per_class_AP": {name: round(value, 4) for name, value in detection["per_class_AP"].items()}}  # fmt: skip
    print(json.dumps(row), flush=True)
    return {"training_s": round(results["training_seconds"], 1), "train_windows": results["train_windows"],
            "window_test": {key: round(value, 4) for key, value in results["window_test"].items()},
            "detection": [row]}  # fmt: skip


def write_localization_markdown(report: dict) -> None:
    lines = ["# Classification + localization and OverFeat", ""]
    for part, entry in report.items():
        if part in ("headline", "grid", "overfeat"):
            lines.append(f"- `{part}`: `{entry['command']}` on {entry['date']} "
                         f"({entry['machine']['platform']}, {entry['machine']['cpu_count']} CPUs, torch "
                         f"{entry['machine']['torch']}, {entry['machine']['torch_threads']} threads)")  # fmt: skip
    header = ("| data | recipe | regression | attach | training s | steps | class acc | mean IoU | "
              "top-1 loc | top-5 loc |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip

    def row_line(row: dict) -> str:
        if "diverged" in row:
            return f"| {row['data']} | {row['recipe']} | {row['regression']} | {row['attach']} | diverged | | | | | |"
        return (f"| {row['data']} | {row['recipe']} | {row['regression']} | {row['attach']} | {row['training_s']} "
                f"| {row['steps']} | {row['classification_accuracy']:.3f} | {row['mean_iou']:.3f} | "
                f"{row['top1_localization']:.3f} | {row['top5_localization']:.3f} |")  # fmt: skip

    if "headline" in report:
        lines += ["", "## Headline: synthetic single-object set, from scratch", "", header,
                  row_line(report["headline"]["result"]["headline"])]  # fmt: skip
    if "grid" in report:
        grid = report["grid"]["result"]
        lines += ["", f"## Comparison grid ({grid['grid_budget_s']:.0f} s synthetic, "
                  f"{grid['raccoon_budget_s']:.0f} s raccoon per run)", "", header]  # fmt: skip
        lines += [row_line(row) for row in grid["grid"]]
    if "overfeat" in report:
        result = report["overfeat"]["result"]
        lines += ["", "## OverFeat detector on the synthetic multi-object set", "",
                  f"Localizer with a background class trained {result['training_s']} s on "
                  f"{result['train_windows']} windows; on held-out windows: "
                  f"class accuracy {result['window_test']['classification_accuracy']:.3f}, "
                  f"top-1 localization {result['window_test']['top1_localization']:.3f}.", "",
                  "| scales | score threshold | test images | mAP@0.5 (VOC) | s / image |", "|---|---|---|---|---|"]  # fmt: skip
        for row in result["detection"]:
            lines.append(f"| {', '.join(str(s) for s in row['scales'])} | {row['score_threshold']} | {row['images']} "
                         f"| {row['mAP@0.5']:.3f} | {row['seconds_per_image']} |")  # fmt: skip
    (RESULTS / "localization.md").write_text("\n".join(lines) + "\n")


def write_keypoint_markdown(entry: dict) -> None:
    result = entry["result"]
    lines = ["# DeepPose keypoints on synthetic stick figures", "",
             f"Command: `{entry['command']}`  ", f"Date: {entry['date']}  ",
             f"Machine: {entry['machine']['platform']}, {entry['machine']['cpu_count']} CPUs, torch "
             f"{entry['machine']['torch']} ({entry['machine']['torch_threads']} threads)", "",
             f"{result['num_train']} training / {result['num_test']} test figures, 7 joints, 96x96 images; "
             f"training time per stage (s): {result['stage_seconds']}.", "",
             "| after stage | PCK@0.05 | PCK@0.1 | PCK@0.2 | mean error (px) |", "|---|---|---|---|---|"]  # fmt: skip
    for stage in result["stages"]:
        name = "1 (whole image)" if stage["stage"] == 1 else f"{stage['stage']} (refinement)"
        lines.append(f"| {name} | {stage['pck@0.05']:.3f} | {stage['pck@0.1']:.3f} | {stage['pck@0.2']:.3f} | "
                     f"{stage['mean_error_px']:.2f} |")  # fmt: skip
    (RESULTS / "keypoints.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", required=True, choices=("headline", "grid", "keypoints", "overfeat"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window-size", type=int, default=64)
    parser.add_argument("--synthetic-root", default="data/localizer-single")
    parser.add_argument("--synthetic-images", type=int, default=6000)
    parser.add_argument("--headline-budget", type=float, default=585)
    parser.add_argument("--headline-attach", default="conv", choices=("conv", "fc"))
    parser.add_argument("--grid-budget", type=float, default=75)
    parser.add_argument("--raccoon-budget", type=float, default=60)
    parser.add_argument("--keypoint-images", type=int, default=3000)
    parser.add_argument("--keypoint-budget", type=float, default=180)
    parser.add_argument("--multi-root", default="data/synthetic")
    parser.add_argument("--multi-images", type=int, default=600)
    parser.add_argument("--windows-per-image", type=int, default=8)
    parser.add_argument("--overfeat-budget", type=float, default=240)
    parser.add_argument("--overfeat-test-images", type=int, default=60)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--score-threshold", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"headline": part_headline, "grid": part_grid, "keypoints": part_keypoints,
              "overfeat": part_overfeat}[args.part](args)  # fmt: skip
    entry = {
        "command": "flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_localization.py "
        + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "result": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part == "keypoints":
        (RESULTS / "keypoints.json").write_text(json.dumps(entry, indent=2))
        write_keypoint_markdown(entry)
        return 0
    path = RESULTS / "localization.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[args.part] = entry
    path.write_text(json.dumps(report, indent=2))
    write_localization_markdown(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
