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
import torch.nn.functional as F
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


def run_peer(budget_s: float, min_size: int) -> dict:
    command = [
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
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result.update(command=" ".join(command), started_utc=started, machine=machine())
    return result


def load_split(split: str, classes: list[str] | None = None):
    """BCCD ``split`` through detlab's VOC reader, decoded once into memory (uint8 ``[3, H, W]``)."""
    from detlab.data import read_voc
    from detlab.data.images import load_image

    dataset = read_voc(DATA, split=split, classes=classes, on_bad="skip")
    items = []
    for record in dataset.records:
        image = (load_image(record.image_path) * 255).round().to(torch.uint8)
        items.append((image, {"boxes": record.boxes.clone(), "labels": record.labels.clone()}))
    return dataset.classes, items


def resize_for_training(items, min_size: int, max_size: int):
    """Resize once to the model's input size so the per-step resize inside the model is a no-op."""
    out = []
    for image, target in items:
        height, width = image.shape[-2:]
        scale = min(min_size / min(height, width), max_size / max(height, width))
        size = (round(height * scale), round(width * scale))
        resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        out.append(
            (resized.round().clamp(0, 255).to(torch.uint8), {**target, "boxes": target["boxes"] * scale})
        )
    return out


def augment(image: Tensor, target: dict, vertical_flip: bool) -> tuple[Tensor, dict]:
    """Random horizontal (and, for microscopy, vertical) flips; image uint8 -> float [0, 1]."""
    boxes = target["boxes"].clone()
    height, width = image.shape[-2:]
    if random.random() < 0.5:
        image = image.flip(-1)
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    if vertical_flip and random.random() < 0.5:
        image = image.flip(-2)
        boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
    return image.float() / 255, {"boxes": boxes, "labels": target["labels"]}


def train_minimal(model, items, budget_s: float, lr: float, warmup_steps: int, vertical_flip: bool) -> dict:
    """The minimal loop used until ``detlab.engine.fit`` lands: SGD (momentum 0.9, weight decay
    1e-4), linear warm-up then cosine decay over the wall-clock budget, gradient clipping at 10,
    batches of 2 images, horizontal/vertical flips."""
    from detlab.engine.optimization import LearningRateSchedule

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = LearningRateSchedule(lr, "cosine", time_budget_s=budget_s, warmup_steps=warmup_steps)
    model.train()
    start, step, recent = time.time(), 0, []
    while time.time() - start < budget_s:
        order = list(range(len(items)))
        random.shuffle(order)
        for first in range(0, len(order) - 1, 2):
            elapsed = time.time() - start
            if elapsed >= budget_s:
                break
            batch = [augment(*items[i], vertical_flip) for i in order[first : first + 2]]
            schedule.apply(optimizer, step, elapsed)
            losses = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"non-finite loss at step {step}: { {k: v.item() for k, v in losses.items()} }"
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            optimizer.step()
            recent.append({k: v.item() for k, v in losses.items()})
            step += 1
            if step % 50 == 0:
                mean = {k: round(sum(r[k] for r in recent) / len(recent), 4) for k in recent[0]}
                print(f"step {step} {elapsed:.0f}s {mean}", file=sys.stderr, flush=True)
                recent = []
    return {"iterations": step, "train_s": round(time.time() - start, 1)}


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
    from detlab.config import merge, parse_overrides, preset_path, read_yaml
    from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = FasterRCNNConfig()
    if args.preset:
        config = merge(config, read_yaml(preset_path(args.preset)).get("model", {}))
    config = merge(config, parse_overrides(args.set).get("model", {}))
    classes, train_items = load_split(args.train_split)
    _, test_items = load_split(args.test_split, classes)
    model = build_faster_rcnn(config, len(classes))
    training = train_minimal(
        model,
        resize_for_training(train_items, config.min_size, config.max_size),
        args.budget_s,
        args.lr,
        args.warmup_steps,
        vertical_flip=True,
    )
    predictions, seconds = predict_timed(model, test_items)
    result = {
        "model": "detlab faster_rcnn",
        "config": dataclasses.asdict(config),
        "lr": args.lr,
        **training,
        "infer_s_per_image": round(seconds, 4),
        **coco_score(predictions, test_items, classes),
    }
    return result


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="write the detlab result JSON here (tuning runs)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part in ("peer", "all"):
        peer = run_peer(args.budget_s, args.peer_min_size)
        (RESULTS / "detectors_peer.json").write_text(json.dumps(peer, indent=2) + "\n")
        print(json.dumps(peer))
    if args.part in ("detlab", "all"):
        torch.set_num_threads(args.threads)
        result = run_detlab(args)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
