"""Benchmark: detlab Faster R-CNN / Fast R-CNN against torchvision's Faster R-CNN on BCCD.

Usage (from the repository root, under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_detectors.py --part all

``--part peer`` runs only the peer (``../shared/anchors/torchvision_frcnn.py``) and stores its JSON
line in ``benchmarks/results/detectors_peer.json``; ``--part detlab`` runs detlab and merges with a
stored peer result; ``--part all`` does both. Results go to ``benchmarks/results/detectors.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PEER_SCRIPT = REPO.parent / "shared" / "anchors" / "torchvision_frcnn.py"
DATA = REPO.parent / "shared" / "data" / "bccd"


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def peer_command(budget_s: float, min_size: int) -> list[str]:
    return [
        sys.executable,
        str(PEER_SCRIPT),
        "--data",
        str(DATA),
        "--train",
        "trainval",
        "--test",
        "test",
        "--budget-s",
        str(budget_s),
        "--min-size",
        str(min_size),
    ]


def start_peer(budget_s: float, min_size: int, threads: int, log_path: Path) -> subprocess.Popen:
    """Start the peer in a subprocess limited to ``threads`` threads (it reads OMP_NUM_THREADS)."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(
        peer_command(budget_s, min_size),
        stdout=subprocess.PIPE,
        stderr=open(log_path, "w"),  # noqa: SIM115 - closed with the process
        text=True,
        env=environment,
    )


def finish_peer(process: subprocess.Popen, budget_s: float, min_size: int, threads: int) -> dict:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the peer failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result.update(command=" ".join(peer_command(budget_s, min_size)), threads=threads)
    return result


def load_split(split: str, classes: list[str] | None = None):
    """BCCD ``split`` through detlab's VOC reader (the 2 zero-size boxes are dropped with a warning)."""
    from detlab.data import read_voc

    return read_voc(DATA, split=split, classes=classes, on_bad="skip")


def decoded(dataset) -> list:
    """Test images decoded once (uint8, full size) so timing measures the model, not JPEG decoding."""
    items = []
    for image, target in dataset:
        items.append(((image * 255).round().to(torch.uint8), target))
    return items


def training_transforms(min_size: int, max_size: int):
    """Resize once to the model's input size (so its internal resize is a no-op), then flips:
    horizontal and vertical, both label-preserving for microscope images."""
    from torchvision.transforms import v2

    from detlab.data.transforms import DetectionTransform

    return DetectionTransform(
        v2.Compose(
            [
                v2.Resize(size=min_size, max_size=max_size, antialias=True),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomVerticalFlip(0.5),
                v2.ToDtype(torch.float32, scale=False),
            ]
        )
    )


def coco_score(predictions: list[dict], items, classes: list[str]) -> dict:
    """mAP@0.5, mAP@[.5:.95] and AP@0.5 per class with pycocotools, exactly as the peer scores."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    }
    detections = []
    for index, ((image, target), prediction) in enumerate(zip(items, predictions)):
        gt["images"].append({"id": index, "width": image.shape[-1], "height": image.shape[-2]})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            width, height = box[2] - box[0], box[3] - box[1]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": index,
                    "category_id": label,
                    "iscrowd": 0,
                    "bbox": [box[0], box[1], width, height],
                    "area": width * height,
                }
            )
        for box, score, label in zip(
            prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["labels"].tolist()
        ):
            detections.append(
                {
                    "image_id": index,
                    "category_id": label,
                    "score": score,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    if not detections:
        return {"mAP50": 0.0, "mAP": 0.0}
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    precision = evaluation.eval["precision"][0, :, :, 0, 2]
    per_class = {}
    for index, name in enumerate(classes):
        values = precision[:, index]
        per_class[name] = round(float(values[values > -1].mean()), 4) if (values > -1).any() else 0.0
    return {
        "mAP50": round(float(evaluation.stats[1]), 4),
        "mAP": round(float(evaluation.stats[0]), 4),
        "AP50_per_class": per_class,
    }


def predict_timed(model, items, proposals: list[Tensor] | None = None) -> tuple[list[dict], float]:
    """Run ``model`` image by image on full-size float images; returns predictions and s/image."""
    model.eval()
    predictions, total = [], 0.0
    with torch.no_grad():
        for index, (image, _) in enumerate(items):
            image = image.float() / 255
            started = time.perf_counter()
            if proposals is None:
                output = model([image])[0]
            else:
                output = model([image], proposals=[proposals[index]])[0]
            total += time.perf_counter() - started
            predictions.append(output)
    return predictions, total / len(items)


def run_detlab(args) -> dict:
    """Train detlab's Faster R-CNN through ``detlab.engine.fit`` for the budget, then time and score
    it and, on the same trained backbone and head, Fast R-CNN with Selective Search proposals."""
    from detlab.config import TrainConfig, merge, parse_overrides, preset_path, read_yaml
    from detlab.engine.train import fit
    from detlab.models.fast_rcnn import FastRCNN, default_proposal_method
    from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = FasterRCNNConfig()
    if args.preset:
        config = merge(config, read_yaml(preset_path(args.preset)).get("model", {}))
    config = merge(config, parse_overrides(args.set).get("model", {}))
    train_dataset = load_split(args.train_split)
    classes = train_dataset.classes
    test_items = decoded(load_split(args.test_split, classes))
    model = build_faster_rcnn(config, len(classes))
    train_config = TrainConfig(
        out_dir=args.run_dir,
        epochs=10_000,
        time_budget_s=args.budget_s,
        batch_size=2,
        optimizer="sgd",
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        schedule="cosine",
        eval_every=0,
        seed=args.seed,
        device="cpu",
        log_every=50,
    )
    started = time.time()
    fitted = fit(
        model,
        train_dataset.with_transforms(training_transforms(config.min_size, config.max_size)),
        train_config,
        args.run_dir,
        classes=classes,
        model_name="faster_rcnn",
    )
    training = {"iterations": fitted.state.step, "train_s": round(time.time() - started, 1)}
    predictions, seconds = predict_timed(model, test_items)
    faster = {
        "model": "detlab faster_rcnn (scratch)",
        "config": dataclasses.asdict(config),
        "lr": args.lr,
        **training,
        "infer_s_per_image": round(seconds, 4),
        **coco_score(predictions, test_items, classes),
    }
    result = {"faster_rcnn": faster}
    if args.fast_rcnn_images:
        # Fast R-CNN = the same trained backbone and head, fed Selective Search proposals computed
        # per image at test time instead of the RPN's (the head was trained on RPN proposals).
        fast = FastRCNN(
            model.backbone, model.roi_head, model.batcher, default_proposal_method("selective_search", 2000)
        )
        subset = test_items[: args.fast_rcnn_images]
        fast_predictions, fast_seconds = predict_timed(fast, subset)
        faster_subset, faster_seconds = predict_timed(model, subset)
        result["fast_rcnn"] = {
            "model": "detlab fast_rcnn (Selective Search fast, 2000 proposals; Faster R-CNN's trained weights)",
            "images": len(subset),
            "infer_s_per_image": round(fast_seconds, 4),
            "faster_rcnn_infer_s_per_image_same_images": round(faster_seconds, 4),
            **coco_score(fast_predictions, subset, classes),
            "faster_rcnn_same_images": coco_score(faster_subset, subset, classes),
        }
    return result


def write_markdown(report: dict, path: Path) -> None:
    faster, peer = report["detlab"]["faster_rcnn"], report.get("peer")
    lines = [
        "# Detectors on BCCD (train on trainval, test on test, from scratch)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date_utc']}  ",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
        f"torch {report['machine']['torch']}  ",
        f"Setup: {report['setup']}",
        "",
        "| model | training budget | iterations (batch 2) | mAP@0.5 | mAP@[.5:.95] | AP@0.5 WBC | AP@0.5 RBC | "
        "AP@0.5 Platelets | inference s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, result: dict) -> str:
        per_class = result.get("AP50_per_class", {})
        return (
            f"| {name} | {report['budget_s']:.0f} s | {result['iterations']} | {result['mAP50']:.3f} | "
            f"{result['mAP']:.3f} | {per_class.get('WBC', 0):.3f} | {per_class.get('RBC', 0):.3f} | "
            f"{per_class.get('Platelets', 0):.3f} | {result['infer_s_per_image']:.3f} |"
        )

    lines.append(row("detlab Faster R-CNN (compact CNN + FPN)", faster))
    if peer:
        lines.append(row("peer: torchvision Faster R-CNN MobileNetV3-FPN", peer))
    fast = report["detlab"].get("fast_rcnn")
    if fast:
        lines += [
            "",
            f"Test time per image including proposals, on the first {fast['images']} test images:",
            "",
            "| model | proposals | s/image | mAP@0.5 on these images |",
            "|---|---|---|---|",
            f"| detlab Fast R-CNN | Selective Search (fast), up to 2000 | {fast['infer_s_per_image']:.3f} | "
            f"{fast['mAP50']:.3f} |",
            f"| detlab Faster R-CNN | RPN, {faster['config']['rpn_post_nms_top_n_test']} | "
            f"{fast['faster_rcnn_infer_s_per_image_same_images']:.3f} | "
            f"{fast['faster_rcnn_same_images']['mAP50']:.3f} |",
            "",
            "Fast R-CNN here reuses the Faster R-CNN's trained backbone and head (trained on RPN "
            "proposals), fed Selective Search boxes computed at test time.",
        ]
    path.write_text("\n".join(lines) + "\n")


def recorded_command() -> str:
    """The command line as run, with the environment variables that change the result (the thread
    count of each process, where detlab is imported from) when they are set."""
    variables = [f"{name}={os.environ[name]}" for name in ("PYTHONPATH", "OMP_NUM_THREADS") if name in os.environ]
    return " ".join([*variables, ".venv/bin/python", *sys.argv])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("peer", "detlab", "all"), default="all")
    parser.add_argument("--budget-s", type=float, default=1500.0)
    parser.add_argument("--peer-min-size", type=int, default=480)
    parser.add_argument("--preset", default="bccd")
    parser.add_argument("--set", nargs="*", default=[], help="model.key=value overrides")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--train-split", default="trainval")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads for detlab and for the peer")
    parser.add_argument("--out", default="", help="write the detlab result JSON here (tuning runs)")
    parser.add_argument("--run-dir", default="runs/bench_faster_rcnn")
    parser.add_argument(
        "--fast-rcnn-images", type=int, default=0, help="time Fast R-CNN on this many test images"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    peer_process = None
    if args.part in ("peer", "all"):
        # Run side by side, each limited to the same number of threads, so both see the same
        # machine load (this CPU is shared with other work); the peer is a separate process.
        peer_process = start_peer(
            args.budget_s, args.peer_min_size, args.threads, RESULTS / "detectors_peer.log"
        )
    detlab = None
    if args.part in ("detlab", "all"):
        detlab = run_detlab(args)
        if args.out:
            Path(args.out).write_text(json.dumps(detlab, indent=2) + "\n")
        print(json.dumps(detlab))
    peer = (
        finish_peer(peer_process, args.budget_s, args.peer_min_size, args.threads) if peer_process else None
    )
    if peer:
        print(json.dumps(peer))
    if args.part == "all":
        report = {
            "command": recorded_command(),
            "date_utc": started,
            "machine": machine(),
            "budget_s": args.budget_s,
            "setup": (
                f"detlab and the peer trained at the same time, {args.threads} thread(s) each, "
                f"for the same wall-clock budget; both scored with pycocotools on full-size test images"
            ),
            "detlab": detlab,
            "peer": peer,
        }
        (RESULTS / "detectors.json").write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, RESULTS / "detectors.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
