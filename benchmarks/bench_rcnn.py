"""Benchmark: R-CNN against Fast R-CNN, the lecture's table, on the same data, proposals and backbone.

For one data set (``--data bccd`` or ``synthetic``) in one run, one after the other:

1. Selective Search (fast) proposals of the training images, computed once into a shared cache;
2. R-CNN (``detlab train rcnn``: pretrain and fine-tune the CNN for ``--budget-s``, then pool5
   features to disk, SVMs with hard-negative mining, box regressors) with the compact backbone,
   and again with the shallower ``small`` backbone (unless ``--no-second-backbone``);
3. Fast R-CNN (``detlab train fast_rcnn``) with the same compact backbone, the same proposals
   (attached by the data layer) and the same budget;
4. each model on the test images, one at a time: time per image with the proposals computed
   (Selective Search included) and given (precomputed), and mAP@0.5 (VOC07 11-point) and the COCO
   numbers; R-CNN also without box regression and with the fine-tuned network's softmax instead
   of the SVMs (the same trained model, test-time settings).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_rcnn.py --data bccd --budget-s 900
  (one --work-dir a data set: the proposal cache in it refuses proposals made at another size)
Writes benchmarks/results/rcnn_<data>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from detlab.engine.checkpoint import load_checkpoint  # noqa: E402
from detlab.engine.predict import model_from_checkpoint  # noqa: E402
from detlab.engine.run import resolve_run_config, train_run  # noqa: E402
from detlab.proposals import RecordProposals  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, RESULTS, machine, machine_line, score, write_results  # noqa: E402
from common import test_split as load_test_split  # noqa: E402


def shared_settings(args) -> dict:
    """Model fields every run shares: backbone width, input and proposal settings."""
    return {
        "proposal_method": "ss-fast",
        "max_proposals": 2000,
        "proposal_cache_dir": f"{args.work_dir}/proposals",
    }


def train(name: str, args, model: dict, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    run_config = resolve_run_config(
        name,
        data=DATA[args.data],
        model=model,
        train={
            "out_dir": out,
            "time_budget_s": args.budget_s,
            "epochs": 100_000,
            "log_every": 100,
            "seed": 0,
        },
    )
    started = time.perf_counter()
    result = train_run(run_config)
    wall = time.perf_counter() - started
    stages = {path.parent.name: load_checkpoint(path) for path in Path(out).glob("*/last.pt")}
    record = {"wall_s": round(wall, 1), "network_training_s": 0.0, "steps": 0}
    for stage, checkpoint in stages.items():
        record["network_training_s"] += checkpoint["progress"]["elapsed_s"]
        record["steps"] += checkpoint["progress"]["step"]
        if checkpoint.get("metrics") and not checkpoint.get("optimizer"):
            record[stage] = checkpoint["metrics"]  # a non-gradient step's outcome
    if name != "rcnn":
        record["network_training_s"] += result.state.elapsed_s
        record["steps"] += result.state.step
    record["network_training_s"] = round(record["network_training_s"], 1)
    record["training_s"] = round(
        record["network_training_s"]
        + sum(
            record.get(step, {}).get("seconds", 0.0)
            for step in ("step3_features", "step4_svms", "step5_box_regression")
        ),
        1,
    )
    return record


@torch.no_grad()
def test(out: str, args, overrides: list[str], given: dict, keys: list[str], dataset, timed: bool) -> dict:
    """Score a checkpoint on the test images (VOC07 and COCO) and, if ``timed``, time it: per image
    with the proposals computed and with the cached ones given. R-CNN is timed with its test-image
    feature cache off and scored with it on: the first scoring pass writes each image's features,
    the later variants of the same network (no box regression, softmax) read them."""
    record = {}
    if timed:
        uncached = ["model.cache_test_features=false"] if Path(out).name.startswith("rcnn") else []
        timing_model = model_from_checkpoint(out, overrides + uncached)[0]
        with_proposals, without = [], []
        for index in range(len(dataset)):
            image = dataset[index][0]
            started = time.perf_counter()
            timing_model([image])  # the proposal method runs inside
            with_proposals.append(time.perf_counter() - started)
            started = time.perf_counter()
            timing_model([image], proposals=[given[keys[index]]])
            without.append(time.perf_counter() - started)
        record = {
            "s_per_image_with_proposals": round(statistics.median(with_proposals), 4),
            "s_per_image_without_proposals": round(statistics.median(without), 4),
        }
    model = model_from_checkpoint(out, overrides)[0]
    started = time.perf_counter()
    scores = score(lambda index, image: model([image], proposals=[given[keys[index]]])[0], dataset)
    scores.pop("s_per_image")  # a pass that reads cached features: not R-CNN's test time
    return {**record, "scoring_s": round(time.perf_counter() - started, 1), **scores}


def test_proposals(args, dataset) -> tuple[dict, list[str], float]:
    """The test images' proposals, computed once (timed per image) for the 'without proposals' rows."""
    from detlab.models.fast_rcnn import proposal_source

    cache = RecordProposals(
        proposal_source("ss-fast", 2000, args.proposal_max_side, f"{args.work_dir}/proposals")[1]
    )
    keys = [cache.key(record) for record in dataset.records]
    given, seconds = {}, []
    for key, record in zip(keys, dataset.records):
        started = time.perf_counter()
        given[key] = cache(record)
        seconds.append(time.perf_counter() - started)
    return given, keys, statistics.median(seconds)


@torch.no_grad()
def window_timing(args, work: Path, dataset, given: dict, keys: list[str]) -> list[dict]:
    """Test time an image without proposals of R-CNN (compact) at each of ``--window-timing``'s
    window sizes, beside the trained Fast R-CNN, on the first ``--timing-images`` test images.
    R-CNN is built untrained: its time does not depend on the weights (its SVM and box regression
    are one matrix product each on top of the CNN passes)."""
    from detlab.models.rcnn import RCNNConfig, build_rcnn

    images = [dataset[index][0] for index in range(min(args.timing_images, len(dataset)))]
    fast_rcnn = model_from_checkpoint(str(work / "fast_rcnn"), [])[0]

    def median_seconds(model) -> float:
        seconds = []
        for index, image in enumerate(images):
            started = time.perf_counter()
            model([image], proposals=[given[keys[index]]])
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    fast = median_seconds(fast_rcnn)
    rows = []
    for window in args.window_timing:
        rcnn = build_rcnn(RCNNConfig(window_size=window, proposal_cache_dir=""), len(dataset.classes)).eval()
        seconds = median_seconds(rcnn)
        rows.append(
            {
                "window": window,
                "rcnn_s_per_image": round(seconds, 4),
                "fast_rcnn_s_per_image": round(fast, 4),
                "speedup": round(seconds / fast, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        f"# R-CNN vs Fast R-CNN on {report['data']}, from scratch, same proposals and backbone",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        machine_line(report["machine"]),
        "",
        f"Each network trained for {report['budget_s']:.0f} s (R-CNN: pre-training on object windows then fine-tuning "
        f"on proposals; Fast R-CNN: one stage); Selective Search (fast) proposals, up to 2000 an image, computed at a "
        f"longer side of {report['proposal_max_side']} px and shared; R-CNN warps each to {report.get('rcnn_window', 64)} px; test times are medians over the "
        f"{report['test_images']} test images, one image at a time.",
        "",
        "| model | backbone | training s (network + features + SVMs + regressors) | test s/image without proposals | "
        "with proposals | mAP@0.5 (VOC07) | COCO AP50 | COCO AP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['backbone']} | {row.get('training', '')} | {row.get('s_per_image_without_proposals', 'as above')} | "
            f"{row.get('s_per_image_with_proposals', 'as above')} | {row['mAP50_voc07']:.3f} | {row['AP50_coco']:.3f} | {row['AP_coco']:.3f} |"
        )
    lines += [
        "",
        f"Feature cache (pool5, float16) of the {report['train_images']} training images: "
        f"{report['feature_cache_mb']:.0f} MB, written in {report['feature_seconds']:.0f} s."
        + (
            f" Of the {report['test_images']} test images: {report['test_feature_cache_mb']:.0f} MB, written by the first "
            f"scoring pass in {report['test_feature_seconds']:.0f} s; the later variants of the same network read them "
            "(scoring in " + ", ".join(f"{row['scoring_s']:.0f} s" for row in rows[1:3]) + ")."
            if "test_feature_cache_mb" in report
            else ""
        ),
        f"Selective Search at test time: {rows[-1]['s_per_image_with_proposals'] - rows[-1]['s_per_image_without_proposals']:.2f} s "
        "an image (Fast R-CNN's median with proposals less its median without).",
        "",
        "Speed-ups of Fast R-CNN over R-CNN (compact backbone): "
        f"{report['speedup_without_proposals']:.0f}x without proposals, "
        f"{report['speedup_with_proposals']:.1f}x with them.",
        "",
    ]
    if report.get("window_timing"):
        timing = report["window_timing"]
        lines += [
            f"Test time without proposals against R-CNN's window size (timing only: `{timing['command']}`, "
            f"{timing['date']}; medians over the first {timing['images']} test images; R-CNN untrained, "
            "compact backbone, as its time does not depend on the weights; the original warps to 227):",
            "",
            "| R-CNN window | R-CNN s/image | Fast R-CNN s/image | Fast R-CNN speed-up |",
            "|---|---|---|---|",
        ]
        for row in timing["rows"]:
            lines.append(
                f"| {row['window']} | {row['rcnn_s_per_image']} | {row['fast_rcnn_s_per_image']} | {row['speedup']}x |"
            )
        lines.append("")
    lines += [
        "Per-class AP@0.5 (VOC07):",
        "",
        "| model | " + " | ".join(rows[0]["per_class_AP50_voc07"]) + " |",
        "|---|" + "---|" * len(rows[0]["per_class_AP50_voc07"]),
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} ({row['backbone']}) | "
            + " | ".join(f"{v:.3f}" for v in row["per_class_AP50_voc07"].values())
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=tuple(DATA), default="bccd")
    parser.add_argument("--budget-s", type=float, default=900.0, help="training time of each network")
    parser.add_argument(
        "--proposal-max-side", type=int, help="Selective Search's longer image side (427 BCCD, 256 synthetic)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default="runs/bench-rcnn")
    parser.add_argument("--test-images", type=int, default=0, help="the first N test images (0: all)")
    parser.add_argument(
        "--window-timing",
        type=lambda text: [int(v) for v in text.split(",")],
        help="only time R-CNN at these window sizes (e.g. 64,128,227) beside the Fast R-CNN of an "
        "earlier run in --work-dir, and add the table to that run's results",
    )
    parser.add_argument("--timing-images", type=int, default=10, help="test images --window-timing times")
    parser.add_argument(
        "--rcnn-window",
        type=int,
        default=64,
        help="R-CNN's warp size (model.window_size; the original's 227)",
    )
    parser.add_argument(
        "--no-second-backbone", action="store_true", help="skip R-CNN with the shallower 'small' net"
    )
    args = parser.parse_args()
    args.proposal_max_side = args.proposal_max_side or (427 if args.data == "bccd" else 256)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir) / args.data
    shared = {**shared_settings(args), "proposal_max_side": args.proposal_max_side}
    rcnn_only = {"window_size": args.rcnn_window}
    # Fast R-CNN proposes at its max_size: the same longer side as R-CNN, so they share the proposals
    size = {"min_size": 320 if args.data == "bccd" else 256, "max_size": args.proposal_max_side}
    runs = {
        "rcnn_compact": (
            "rcnn",
            {**shared, **rcnn_only, "backbone": "compact", "feature_cache_dir": f"{args.work_dir}/features"},
        ),
        "rcnn_small": (
            "rcnn",
            {**shared, **rcnn_only, "backbone": "small", "feature_cache_dir": f"{args.work_dir}/features"},
        ),
        "fast_rcnn": ("fast_rcnn", {k: v for k, v in shared.items() if k != "proposal_max_side"} | size),
    }
    if args.window_timing:
        return add_window_timing(args, work)
    if args.no_second_backbone:
        del runs["rcnn_small"]
    trained = {name: train(kind, args, model, str(work / name)) for name, (kind, model) in runs.items()}
    test_set = load_test_split(args.data, args.test_images)
    given, keys, proposal_seconds = test_proposals(args, test_set)
    variants = [
        ("R-CNN: SVMs + box regression", "rcnn_compact", []),
        ("R-CNN: SVMs, no box regression", "rcnn_compact", ["model.box_regression=false"]),
        ("R-CNN: fine-tuned softmax + box regression", "rcnn_compact", ["model.classifier=softmax"]),
        ("R-CNN: SVMs + box regression", "rcnn_small", []),
        ("Fast R-CNN", "fast_rcnn", []),
    ]
    rows = []
    timed = set()
    for label, run, overrides in [variant for variant in variants if variant[1] in runs]:
        row = {
            "model": label,
            "backbone": runs[run][1]["backbone"] if "backbone" in runs[run][1] else "compact",
            "training": trained[run]["training_s"],
            **test(str(work / run), args, overrides, given, keys, test_set, timed=run not in timed),
        }
        timed.add(run)
        print(json.dumps(row), flush=True)
        rows.append(row)
    features = trained["rcnn_compact"].get("step3_features", {})
    report = {
        "command": f"PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_rcnn.py {' '.join(sys.argv[1:])}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "data": args.data,
        "budget_s": args.budget_s,
        "rcnn_window": args.rcnn_window,
        "proposal_max_side": args.proposal_max_side,
        "test_images": len(test_set),
        "train_images": features.get("images", 0),
        "feature_cache_mb": features.get("cache_bytes", 0) / 1e6,
        "feature_seconds": features.get("seconds", 0.0),
        "proposal_s_per_image": proposal_seconds,
        "test_feature_cache_mb": sum(
            path.stat().st_size for path in Path(features["cache"]).glob("test-*.npz")
        )
        / 1e6,
        "test_feature_seconds": rows[0]["scoring_s"],
        "speedup_without_proposals": rows[0]["s_per_image_without_proposals"]
        / rows[-1]["s_per_image_without_proposals"],
        "speedup_with_proposals": rows[0]["s_per_image_with_proposals"]
        / rows[-1]["s_per_image_with_proposals"],
        "trained": trained,
        "rows": rows,
    }
    write_results(results_name(args), report, markdown(report))
    print(markdown(report))
    return 0


def results_name(args) -> str:
    """``rcnn_<data>``, with ``_w<size>`` for a warp other than the default 64."""
    return f"rcnn_{args.data}" + (f"_w{args.rcnn_window}" if args.rcnn_window != 64 else "")


def add_window_timing(args, work: Path) -> int:
    """``--window-timing``: the timing table added to the results of the run in ``--work-dir``."""
    path = RESULTS / f"{results_name(args)}.json"
    report = json.loads(path.read_text())
    dataset = load_test_split(args.data, args.test_images)
    given, keys, _ = test_proposals(args, dataset)
    rows = window_timing(args, work, dataset, given, keys)
    report["window_timing"] = {
        "command": f"PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_rcnn.py {' '.join(sys.argv[1:])}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "images": min(args.timing_images, len(dataset)),
        "rows": rows,
    }
    write_results(results_name(args), report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
