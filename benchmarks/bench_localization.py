"""Benchmark: classification + localization, DeepPose keypoints and the OverFeat detector.

Every run trains through ``detlab.engine.run.train_run`` (what ``detlab train`` runs) with a time
budget, afresh in its run folder under ``runs/``, and is scored by detlab's evaluators.

Parts (``--part``, run them one by one; each merges its numbers into the results file):
- ``headline``: the synthetic single-object set, one from-scratch run with a time budget
  (default 585 s), the target being top-1 localization accuracy >= 0.90;
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
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from detlab.engine.predict import evaluate_checkpoint  # noqa: E402
from detlab.engine.run import resolve_run_config, train_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_description, machine_line  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
RACCOON = REPO.parent / "shared" / "data" / "raccoon"
METRICS = ("classification_accuracy", "mean_iou", "top1_localization", "top5_localization")
# LocalizationEvaluator's keys, as this benchmark's tables name them
RENAMED = {"classification_top1": "classification_accuracy", "localization_top1": "top1_localization",
           "localization_top5": "top5_localization", "mean_iou": "mean_iou"}  # fmt: skip


def train_method(
    name: str,
    out_dir: str,
    budget_s: float,
    data: dict,
    recipe: str = "",
    overrides: list[str] | None = None,
    **model,
) -> tuple:
    """One run of ``detlab train NAME`` with a time budget, started afresh in ``out_dir``; returns
    ``(FitResult, resolved run config)``. Its last evaluation is on ``data["val_split"]``;
    ``overrides``: ``section.key=value`` settings, as ``detlab train --set`` takes them."""
    shutil.rmtree(out_dir, ignore_errors=True)
    run_config = resolve_run_config(
        name,
        data=data,
        model=model,
        train={
            "out_dir": out_dir,
            "epochs": 100_000,
            "time_budget_s": budget_s,
            "recipe": recipe,
            "log_every": 100,
        },
        overrides=overrides or [],
    )
    return train_run(run_config), run_config


def stage_totals(run_dir: str) -> tuple[float, int]:
    """Training seconds and steps of a run, summed over its stages (each keeps its own progress)."""
    from detlab.engine.checkpoint import load_checkpoint

    progress = [load_checkpoint(path)["progress"] for path in Path(run_dir).glob("**/last.pt")]
    return sum(p["elapsed_s"] for p in progress), sum(p["step"] for p in progress)


def localizer_row(data_name: str, result, run_config) -> dict:
    model = run_config.model
    seconds, steps = stage_totals(run_config.train.out_dir)
    row = {
        "data": data_name,
        "recipe": run_config.train.recipe or "joint",
        "regression": model.regression,
        "attach": model.attach,
        "training_s": round(seconds, 1),
        "steps": steps,
        "test_images": int(result.metrics["num_images"]),
    }
    row.update({RENAMED[key]: round(result.metrics[key], 4) for key in RENAMED})
    print(json.dumps(row), flush=True)
    return row


def synthetic_single(args) -> dict:
    # the localizer's defaults: trained on train + val, evaluated on test at the end
    return {
        "spec": "synthetic-single",
        "root": args.synthetic_root,
        "synthetic_images": args.synthetic_images,
    }


def part_headline(args) -> dict:
    result, run_config = train_method(
        "localizer",
        "runs/bench-localizer-headline",
        args.headline_budget,
        synthetic_single(args),
        window_size=args.window_size,
        attach=args.headline_attach,
    )
    return {"headline": localizer_row("synthetic-single", result, run_config)}


def part_grid(args) -> dict:
    rows = []
    for recipe in ("4step", "joint"):
        for regression in ("agnostic", "specific"):
            for attach in ("conv", "fc"):
                rows.append(
                    localizer_row(
                        "synthetic-single",
                        *train_method(
                            "localizer",
                            "runs/bench-localizer-grid",
                            args.grid_budget,
                            synthetic_single(args),
                            recipe,
                            regression=regression,
                            attach=attach,
                            window_size=args.window_size,
                        ),
                    )
                )
    if RACCOON.is_dir():
        # raccoons have an up and a down: no vertical flips or quarter turns; one class, so agnostic
        # and specific boxes are the same and classification is trivially right
        raccoon = {"spec": f"voc:{RACCOON}", "vertical_flip": False, "rotate90": False}
        for recipe in ("4step", "joint"):
            for attach in ("conv", "fc"):
                rows.append(
                    localizer_row(
                        "raccoon",
                        *train_method(
                            "localizer",
                            "runs/bench-localizer-raccoon",
                            args.raccoon_budget,
                            raccoon,
                            recipe,
                            attach=attach,
                            window_size=args.window_size,
                        ),
                    )
                )
    return {"grid": rows, "grid_budget_s": args.grid_budget, "raccoon_budget_s": args.raccoon_budget}


def part_keypoints(args) -> dict:
    data = {"root": "data/bench-pose", "synthetic_images": args.keypoint_images}
    result, run_config = train_method(
        "keypoints", "runs/bench-keypoints", args.keypoint_budget, data, stages=1
    )
    metrics = result.metrics
    stages = [
        {
            "stage": stage,
            **{
                name: round(metrics[f"stage{stage}/{name}"], 4)
                for name in ("pck@0.05", "pck@0.1", "pck@0.2", "mean_error_px")
            },
        }
        for stage in (1, 2)
    ]
    run = Path("runs/bench-keypoints")
    return {
        "stages": stages,
        "training_s": round(stage_totals(str(run))[0], 1),
        "num_test": int(metrics["num_images"]),
        "images": args.keypoint_images,
        "stage_seconds": {
            "stage1": round(stage_seconds(run, "stage1"), 1),
            "stage2": round(result.state.elapsed_s, 1),
        },
    }


def stage_seconds(run: Path, stage: str) -> float:
    from detlab.engine.checkpoint import load_checkpoint

    return float(load_checkpoint(run / stage / "last.pt")["progress"]["elapsed_s"])


def overfeat_variants(scales: list[float]) -> list[tuple[str, list[str]]]:
    """What each part of OverFeat's test pass contributes, on the same checkpoint: ``(label,
    --set overrides)``; the first row is the detector as trained."""
    few = [scale for scale in scales if scale in (0.5, 1.0, 2.0)] or scales[:3]
    return [
        ("full: regressed boxes, merged, all scales", []),
        ("window boxes instead of regressed ones", ["model.window_boxes=true"]),
        ("NMS instead of merging", ["model.combine=nms"]),
        (
            f"{len(few)} scales ({', '.join(f'{s:g}' for s in few)})",
            [f"model.scales=[{','.join(str(s) for s in few)}]"],
        ),
        ("1 scale (1.0)", ["model.scales=[1.0]"]),
    ]


def part_overfeat(args) -> dict:
    data = {
        "spec": "synthetic",
        "root": args.multi_root,
        "synthetic_images": args.multi_images,
        "val_split": "",
    }
    result, run_config = train_method(
        "overfeat",
        args.overfeat_run,
        args.overfeat_budget,
        data,
        overrides=args.set,
        window_size=args.window_size,
        scales=tuple(args.scales),
        score_threshold=args.score_threshold,
        hard_negative_pool=args.hard_negative_pool,
    )
    rows = []
    for label, overrides in overfeat_variants(args.scales)[: args.overfeat_variants]:
        started = time.perf_counter()
        report, _ = evaluate_checkpoint(
            f"{args.overfeat_run}/last.pt",
            "synthetic",
            "test",
            protocol="voc07",
            max_images=args.overfeat_test_images,
            data_root=args.multi_root,
            overrides=overrides,
        )
        seconds = time.perf_counter() - started
        rows.append(
            {
                "variant": label,
                "overrides": overrides,
                "score_threshold": args.score_threshold,
                "mAP@0.5": round(report["metrics"]["mAP@0.5"], 4),
                "images": report["num_images"],
                "seconds_per_image": round(seconds / report["num_images"], 3),
                "per_class_AP": {r["class"]: round(r["AP"], 4) for r in report["per_class"]},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "training_s": round(result.state.elapsed_s, 1),
        "steps": result.state.step,
        "windows_per_step": run_config.model.windows_per_image * run_config.train.batch_size,
        "positive_fraction": run_config.model.positive_fraction,
        "scales": list(args.scales),
        "hard_negative_pool": run_config.model.hard_negative_pool,
        "settings": args.set,
        "detection": rows,
    }


def write_localization_markdown(report: dict, path: Path) -> None:
    lines = ["# Classification + localization and OverFeat", ""]
    for part, entry in report.items():
        if part in ("headline", "grid", "overfeat"):
            lines.append(
                f"- `{part}`: `{entry['command']}` on {entry['date']} "
                f"({machine_description(entry['machine'])})"
            )
    header = (
        "| data | recipe | regression | attach | training s | steps | class acc | mean IoU | "
        "top-1 loc | top-5 loc |\n|---|---|---|---|---|---|---|---|---|---|"
    )

    def row_line(row: dict) -> str:
        if "diverged" in row:
            return f"| {row['data']} | {row['recipe']} | {row['regression']} | {row['attach']} | diverged | | | | | |"
        return (
            f"| {row['data']} | {row['recipe']} | {row['regression']} | {row['attach']} | {row['training_s']} "
            f"| {row['steps']} | {row['classification_accuracy']:.3f} | {row['mean_iou']:.3f} | "
            f"{row['top1_localization']:.3f} | {row['top5_localization']:.3f} |"
        )

    if "headline" in report:
        lines += [
            "",
            "## Headline: synthetic single-object set, from scratch",
            "",
            header,
            row_line(report["headline"]["result"]["headline"]),
        ]
    if "grid" in report:
        grid = report["grid"]["result"]
        lines += [
            "",
            f"## Comparison grid ({grid['grid_budget_s']:.0f} s synthetic, "
            f"{grid['raccoon_budget_s']:.0f} s raccoon per run)",
            "",
            header,
        ]
        lines += [row_line(row) for row in grid["grid"]]
    if "overfeat" in report:
        result = report["overfeat"]["result"]
        lines += [
            "",
            "## OverFeat detector on the synthetic multi-object set",
            "",
            f"Localizer with a background class trained {result['training_s']} s ({result['steps']} steps of "
            f"{result['windows_per_step']} windows cut afresh from the training images at each step).",
            "",
            f"Scales {', '.join(f'{s:g}' for s in result.get('scales', []))}; each row is a test-time variant of "
            "the same checkpoint.",
            "",
            *([f"Settings: `{' '.join(result['settings'])}`", ""] if result.get("settings") else []),
            "| test pass | score threshold | test images | mAP@0.5 (VOC07) | s / image |",
            "|---|---|---|---|---|",
        ]
        for row in result["detection"]:
            label = row.get("variant") or ", ".join(str(s) for s in row["scales"])
            lines.append(
                f"| {label} | {row['score_threshold']} | {row['images']} "
                f"| {row['mAP@0.5']:.3f} | {row['seconds_per_image']} |"
            )
    path.write_text("\n".join(lines) + "\n")


def write_keypoint_markdown(entry: dict) -> None:
    result = entry["result"]
    lines = [
        "# DeepPose keypoints on synthetic stick figures",
        "",
        f"Command: `{entry['command']}`  ",
        f"Date: {entry['date']}  ",
        machine_line(entry["machine"]),
        "",
        f"{result['images']} figures ({result['num_test']} of them for testing), 7 joints, 96x96 images; "
        f"training time per stage (s): {result['stage_seconds']}.",
        "",
        "| after stage | PCK@0.05 | PCK@0.1 | PCK@0.2 | mean error (px) |",
        "|---|---|---|---|---|",
    ]
    for stage in result["stages"]:
        name = "1 (whole image)" if stage["stage"] == 1 else f"{stage['stage']} (refinement)"
        lines.append(
            f"| {name} | {stage['pck@0.05']:.3f} | {stage['pck@0.1']:.3f} | {stage['pck@0.2']:.3f} | "
            f"{stage['mean_error_px']:.2f} |"
        )
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
    parser.add_argument("--overfeat-budget", type=float, default=240)
    parser.add_argument("--overfeat-test-images", type=int, default=60)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument(
        "--hard-negative-pool",
        type=int,
        default=1,
        help="OverFeat: background candidates drawn for each background window (1: no mining)",
    )
    parser.add_argument(
        "--overfeat-variants",
        type=int,
        default=5,
        help="OverFeat: score this many test-time variants (1: the detector as trained)",
    )
    parser.add_argument("--overfeat-run", default="runs/bench-overfeat", help="OverFeat's run directory")
    parser.add_argument(
        "--set", nargs="*", default=[], help="OverFeat: section.key=value settings of its run"
    )
    parser.add_argument(
        "--results-name",
        default="localization",
        help="results file name; other than the default, the file holds this run's part alone",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {
        "headline": part_headline,
        "grid": part_grid,
        "keypoints": part_keypoints,
        "overfeat": part_overfeat,
    }[args.part](args)
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
    path = RESULTS / f"{args.results_name}.json"
    report = json.loads(path.read_text()) if path.is_file() and args.results_name == "localization" else {}
    report[args.part] = entry
    path.write_text(json.dumps(report, indent=2))
    write_localization_markdown(report, path.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
