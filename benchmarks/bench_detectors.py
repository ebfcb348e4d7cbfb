"""Benchmark: detlab Faster R-CNN / Fast R-CNN against torchvision's Faster R-CNN on BCCD.

Usage (from the repository root, under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_detectors.py --part all

``--part peer`` runs only the peer (``../shared/anchors/torchvision_frcnn.py``) and stores its JSON
line in ``benchmarks/results/detectors_peer.json``; ``--part detlab`` runs detlab and merges with a
stored peer result; ``--part all`` does both. Results go to ``benchmarks/results/detectors.{json,md}``.

``--part fast_rcnn`` trains Fast R-CNN on cached Selective Search proposals of the training images
for the same budget, then times it (proposals included) and the Faster R-CNN checkpoint of an
earlier ``--part all`` run (``--faster-checkpoint``) on the whole test split, one thread each.
Results go to ``benchmarks/results/fast_rcnn.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PEER_SCRIPT = REPO.parent / "shared" / "anchors" / "torchvision_frcnn.py"
DATA = REPO.parent / "shared" / "data" / "bccd"


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
    from detlab.data.voc import read_voc

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
    from detlab.eval.results import coco_result_entries

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
        detections += coco_result_entries(
            prediction["boxes"], prediction["scores"], prediction["labels"], index
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
    from detlab.config import merge, parse_overrides, preset_path, read_yaml
    from detlab.engine.train import RunHeader, fit
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
    train_config = bench_train_config(args, args.run_dir)
    started = time.time()
    fitted = fit(
        model,
        train_dataset.with_transforms(training_transforms(config.min_size, config.max_size)),
        train_config,
        args.run_dir,
        header=RunHeader("faster_rcnn", classes, bench_run_config("faster_rcnn", config, train_config)),
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


class AttachProposals:
    """A training transform: put an image's cached proposals into its target, then apply
    ``transforms`` (which resize and flip them with the image, as they do the boxes)."""

    def __init__(self, proposals: dict, transforms):
        self.proposals, self.transforms = proposals, transforms

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        return self.transforms(image, {**target, "proposals": self.proposals[str(target["image_id"])]})


def _propose_one(job: tuple[str, str, str, int, int]) -> tuple[str, Tensor]:
    image_id, path, method_name, max_proposals, max_side = job
    from detlab.models.fast_rcnn import default_proposal_method

    torch.set_num_threads(1)
    return image_id, default_proposal_method(method_name, max_proposals, max_side).propose(path)


def cached_proposals(dataset, cache_file: Path, config, workers: int) -> dict:
    """The Fast R-CNN ``config``'s proposals (its ``proposal_method``, ``max_proposals``, at its
    ``max_size``) of every image of ``dataset``, in image coordinates, computed with ``workers``
    processes the way the model proposes at test time and kept in ``cache_file`` for reruns;
    its ``"_timing"`` entry says how long the run that computed them took."""
    from multiprocessing import get_context

    cache = torch.load(cache_file) if cache_file.exists() else {}
    jobs = [
        (str(r.image_id), str(r.image_path), config.proposal_method, config.max_proposals, config.max_size)
        for r in dataset.records
        if str(r.image_id) not in cache
    ]
    if jobs:
        started = time.perf_counter()
        with get_context("spawn").Pool(workers) as pool:
            for image_id, boxes in pool.imap_unordered(_propose_one, jobs):
                cache[image_id] = boxes
        seconds = time.perf_counter() - started
        print(f"Selective Search on {len(jobs)} images: {seconds:.0f} s ({workers} processes)")
        cache["_timing"] = {"images": len(jobs), "seconds": round(seconds, 1), "processes": workers}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, cache_file)
    return cache


def bench_train_config(args, run_dir: str):
    """The training settings both detectors of this benchmark use: SGD with warm-up and cosine
    decay over the wall-clock budget, batch 2, no evaluation during training."""
    from detlab.config import TrainConfig

    return TrainConfig(
        out_dir=run_dir,
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


def bench_run_config(model_name: str, model_config, train_config) -> dict:
    """What a checkpoint of these runs stores as its config, so ``detlab.load`` can rebuild it."""
    return {
        "model_name": model_name,
        "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train_config),
    }


def load_faster_rcnn(path: Path, num_classes: int):
    """The Faster R-CNN of an ``--part all`` checkpoint; runs older than ``bench_run_config``
    stored no config, and then the one recorded in ``detectors.json`` is used."""
    from detlab.config import merge
    from detlab.engine.checkpoint import load_checkpoint
    from detlab.models.faster_rcnn import FasterRCNNConfig, build_faster_rcnn

    checkpoint = load_checkpoint(path)
    stored = checkpoint.get("config") or {}
    if "model" not in stored:
        stored = {
            "model": json.loads((RESULTS / "detectors.json").read_text())["detlab"]["faster_rcnn"]["config"]
        }
    model = build_faster_rcnn(merge(FasterRCNNConfig(), stored["model"]), num_classes)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def recall_per_class(dataset, proposals: dict, iou: float = 0.5) -> dict:
    """Per class, the share of ground-truth boxes that some proposal overlaps with IoU >= ``iou``
    (the best overlaps of :func:`detlab.eval.proposals.best_overlaps`, over all proposals)."""
    from detlab.eval.proposals import best_overlaps

    found, total = {}, {}
    for record in dataset.records:
        boxes = proposals[str(record.image_id)]
        best = best_overlaps(boxes, record.boxes, [max(len(boxes), 1)])[:, 0]
        for label, value in zip(record.labels.tolist(), best.tolist()):
            name = dataset.classes[label - 1]
            total[name] = total.get(name, 0) + 1
            found[name] = found.get(name, 0) + int(value >= iou)
    return {name: round(found[name] / total[name], 4) for name in total}


def run_fast_rcnn(args) -> dict:
    """Fast R-CNN trained on Selective Search proposals for ``--budget-s``, then Fast and Faster
    R-CNN timed and scored on the whole test split with their own proposals."""
    from detlab.config import merge, parse_overrides, preset_path, read_yaml
    from detlab.engine.train import RunHeader, fit
    from detlab.models.fast_rcnn import FastRCNNConfig, build_fast_rcnn

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = merge(FastRCNNConfig(), read_yaml(preset_path("fast_rcnn_cpu")).get("model", {}))
    config = merge(config, parse_overrides(args.set).get("model", {}))
    config = dataclasses.replace(config, proposal_cache_dir="")
    train_dataset = load_split(args.train_split)
    classes = train_dataset.classes
    run_dir = Path(args.run_dir)
    proposals = cached_proposals(train_dataset, run_dir / "train_proposals.pt", config, workers=2)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)  # a benchmark always trains afresh; proposals stay cached
    model = build_fast_rcnn(config, len(classes))
    train_config = bench_train_config(args, str(run_dir))
    transforms = AttachProposals(proposals, training_transforms(config.min_size, config.max_size))
    started = time.time()
    fitted = fit(
        model,
        train_dataset.with_transforms(transforms),
        train_config,
        run_dir,
        header=RunHeader("fast_rcnn", classes, bench_run_config("fast_rcnn", config, train_config)),
    )
    test_items = decoded(load_split(args.test_split, classes))
    fast_predictions, fast_seconds = predict_timed(model, test_items)  # proposals computed per image
    result = {
        "fast_rcnn": {
            "model": "detlab fast_rcnn (scratch), Selective Search (fast) proposals",
            "config": dataclasses.asdict(config),
            "lr": args.lr,
            "iterations": fitted.state.step,
            "train_s": round(time.time() - started, 1),
            "infer_s_per_image": round(fast_seconds, 4),
            "train_proposals": proposals.get("_timing", "computed before this cache kept timings"),
            "train_proposal_recall50": recall_per_class(train_dataset, proposals),
            **coco_score(fast_predictions, test_items, classes),
        }
    }
    if args.faster_checkpoint and Path(args.faster_checkpoint).is_file():
        faster = load_faster_rcnn(Path(args.faster_checkpoint), len(classes))
        faster_predictions, faster_seconds = predict_timed(faster, test_items)
        result["faster_rcnn"] = {
            "model": "detlab faster_rcnn (scratch), RPN proposals",
            "checkpoint": args.faster_checkpoint,
            "infer_s_per_image": round(faster_seconds, 4),
            **coco_score(faster_predictions, test_items, classes),
        }
    return result


def report_header(title: str, report: dict) -> list[str]:
    """The Markdown title and the command, date, machine and setup lines of a results file."""
    machine = report["machine"]
    return [
        f"# {title}",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date_utc']}  ",
        f"{machine_line(machine)}  ",
        f"Setup: {report['setup']}",
        "",
    ]


def write_fast_markdown(report: dict, path: Path) -> None:
    lines = [
        *report_header(
            "Fast R-CNN (Selective Search) and Faster R-CNN (RPN) on BCCD, both trained from scratch", report
        ),
        "| model | proposals | training budget | iterations | mAP@0.5 | mAP@[.5:.95] | AP@0.5 WBC | AP@0.5 RBC | "
        "AP@0.5 Platelets | test s/image (with proposals) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, proposals in (("fast_rcnn", "Selective Search (fast), up to 2000"), ("faster_rcnn", "RPN, 300")):
        result = report["results"].get(key)
        if not result:
            continue
        per_class = result.get("AP50_per_class", {})
        lines.append(
            f"| detlab {'Fast' if key == 'fast_rcnn' else 'Faster'} R-CNN | {proposals} | {report['budget_s']:.0f} s | "
            f"{result.get('iterations', report.get('faster_iterations', ''))} | {result['mAP50']:.3f} | {result['mAP']:.3f} | "
            f"{per_class.get('WBC', 0):.3f} | {per_class.get('RBC', 0):.3f} | {per_class.get('Platelets', 0):.3f} | "
            f"{result['infer_s_per_image']:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def write_markdown(report: dict, path: Path) -> None:
    faster, peer = report["detlab"]["faster_rcnn"], report.get("peer")
    lines = [
        *report_header("Detectors on BCCD (train on trainval, test on test, from scratch)", report),
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
    variables = [
        f"{name}={os.environ[name]}" for name in ("PYTHONPATH", "OMP_NUM_THREADS") if name in os.environ
    ]
    return " ".join([*variables, ".venv/bin/python", *sys.argv])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("peer", "detlab", "all", "fast_rcnn"), default="all")
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
    parser.add_argument(
        "--faster-checkpoint",
        default="",
        help="--part fast_rcnn: the Faster R-CNN checkpoint to time beside it",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.part == "fast_rcnn":
        results = run_fast_rcnn(args)
        print(json.dumps(results))
        stored = (
            json.loads((RESULTS / "detectors.json").read_text())
            if (RESULTS / "detectors.json").exists()
            else {}
        )
        report = {
            "command": recorded_command(),
            "date_utc": started,
            "machine": machine(),
            "budget_s": args.budget_s,
            "faster_iterations": stored.get("detlab", {}).get("faster_rcnn", {}).get("iterations", ""),
            "setup": (
                f"Fast R-CNN trained here for the budget on {args.train_split} with cached proposals, {args.threads} "
                f"thread(s); Faster R-CNN is the checkpoint of the detectors.json run (same budget and threads); "
                f"both timed one after the other on the full-size {args.test_split} images, proposals included"
            ),
            "results": results,
        }
        (RESULTS / "fast_rcnn.json").write_text(json.dumps(report, indent=2) + "\n")
        write_fast_markdown(report, RESULTS / "fast_rcnn.md")
        return 0
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
