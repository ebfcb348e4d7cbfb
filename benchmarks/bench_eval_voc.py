"""Scoring a results file against a VOC folder, end to end: detlab (torch-free since issue 17)
against detlab through its torch data layer and against the COCO-file peers, one run.

Ground truth: BCCD trainval (a VOC folder, 292 images). Detections: the ground-truth boxes
jittered, about 15 % missed, plus random false positives (seeded), written twice: with the VOC
stems as image ids (for detlab) and with the integer ids of the COCO conversion (for the peers,
which cannot read a VOC folder; converting it for them is done once, before timing, in their
favour).

Each evaluator runs in its own subprocess, which times from before its imports to the 12 COCO
numbers (so the cost of importing torch counts; detlab's VOC07 pass is timed after, apart) and reports its peak resident memory (VmHWM) and whether
torch was loaded:
- ``detlab``: ``evaluate_detections(FOLDER, dets.json)`` for the COCO protocol and VOC07;
- ``detlab-data-layer``: the same through ``read_voc`` (a ``DetectionDataset``, torch);
- ``pycocotools``, ``faster-coco-eval``: COCO protocol on the converted ``gt.json``.
The 12 COCO numbers must be identical across all four, and VOC07 identical between the two
detlab paths.

    PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_eval_voc.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from bench_eval import peak_rss_mb  # noqa: E402 - stdlib only: the workers must not load torch here

SHARED = HERE.parents[1] / "shared"

EVALUATORS = ("detlab", "detlab-data-layer", "pycocotools", "faster-coco-eval")


def make_files(folder: Path, split: str, work: Path, seed: int) -> dict:
    """``gt.json`` (the COCO conversion), ``dets_stems.json`` and ``dets_ids.json``."""
    import numpy as np

    from detlab.data.coco import to_coco_dict
    from detlab.data.voc import read_voc

    dataset = read_voc(folder, split)
    ground_truth = to_coco_dict(dataset)
    rng = np.random.default_rng(seed)
    stems = {image["id"]: image["detlab_image_id"] for image in ground_truth["images"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in ground_truth["images"]}
    by_id = []
    for annotation in ground_truth["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = annotation["bbox"]
        dx, dy, dw, dh = rng.normal(0, 0.08, 4) * [w, h, w, h]
        by_id.append(
            {
                "image_id": annotation["image_id"],
                "category_id": annotation["category_id"],
                "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    for image_id, (width, height) in sizes.items():
        for _ in range(int(rng.integers(5, 30))):
            w, h = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
            by_id.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, dataset.num_classes + 1)),
                    "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h],
                    "score": float(rng.uniform(0, 0.8)),
                }
            )
    by_stem = [{**entry, "image_id": stems[entry["image_id"]]} for entry in by_id]
    work.mkdir(parents=True, exist_ok=True)
    paths = {
        "gt": work / "gt.json",
        "dets_stems": work / "dets_stems.json",
        "dets_ids": work / "dets_ids.json",
    }
    for key, content in (("gt", ground_truth), ("dets_stems", by_stem), ("dets_ids", by_id)):
        paths[key].write_text(json.dumps(content))
    return {
        "paths": {key: str(path) for key, path in paths.items()},
        "images": len(dataset),
        "ground_truth_boxes": len(ground_truth["annotations"]),
        "detections": len(by_id),
    }


def worker(name: str, folder: str, split: str, paths: dict) -> dict:
    start = time.perf_counter()
    result = {}
    if name.startswith("detlab"):
        from detlab.eval.evaluate import evaluate_detections

        truth = folder
        if name == "detlab-data-layer":
            from detlab.data.voc import read_voc

            truth = read_voc(folder, split)
        report, _ = evaluate_detections(truth, paths["dets_stems"], protocol="coco", split=split)
        result["coco"] = report["metrics"]
        result["total_s"] = time.perf_counter() - start  # like the peers: files -> the 12 COCO numbers
        voc_start = time.perf_counter()
        report, _ = evaluate_detections(truth, paths["dets_stems"], protocol="voc07", split=split)
        result["voc07"], result["voc07_s"] = report["metrics"], time.perf_counter() - voc_start
        result["coco_stats"] = [
            result["coco"][key]
            for key in (
                "AP",
                "AP50",
                "AP75",
                "APs",
                "APm",
                "APl",
                "AR1",
                "AR10",
                "AR100",
                "ARs",
                "ARm",
                "ARl",
            )
        ]
    else:
        if name == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        else:
            from faster_coco_eval.core.coco import COCO
            from faster_coco_eval.core.faster_eval_api import COCOeval_faster as COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(paths["gt"])
            evaluator = COCOeval(gt, gt.loadRes(paths["dets_ids"]), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        result["coco_stats"] = [float(value) for value in evaluator.stats]
        result["total_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_loaded"] = "torch" in sys.modules
    return result


def markdown(report: dict) -> str:
    from common import header_lines

    runs = report["runs"]
    lines = [
        "# Scoring against a VOC folder, end to end (imports included)",
        "",
        *header_lines(report),
        "",
        f"BCCD {report['split']} as a VOC folder: {report['files']['images']} images, "
        f"{report['files']['ground_truth_boxes']} boxes, {report['files']['detections']} detections. "
        "Each evaluator in its own process; time from before its imports to the numbers, best of "
        f"{report['repeats']}; peak memory is the process's VmHWM. The peers read the COCO conversion.",
        "",
        "| evaluator | files to 12 COCO numbers, s | peak MB | torch loaded | COCO AP | AP50 | VOC07 mAP@0.5 | then VOC07, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        voc07 = run.get("voc07", {}).get("mAP@0.5")
        voc07_cells = ["-", "-"] if voc07 is None else [f"{voc07:.4f}", f"{run['voc07_s']:.3f}"]
        cells = [
            name,
            f"{run['total_s']:.2f}",
            f"{run['peak_rss_mb']:.0f}",
            "yes" if run["torch_loaded"] else "no",
            f"{run['coco_stats'][0]:.4f}",
            f"{run['coco_stats'][1]:.4f}",
            *voc07_cells,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {key}: {value}" for key, value in report["checks"].items()], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/detlab-bench-eval-voc")
    parser.add_argument("--worker", choices=EVALUATORS, help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = SHARED / "data" / "bccd"
    if args.worker:
        print(json.dumps(worker(args.worker, str(folder), args.split, json.loads(args.paths))))
        return 0
    if not folder.is_dir():
        print(f"{folder} not found", file=sys.stderr)
        return 1
    files = make_files(folder, args.split, Path(args.work), args.seed)
    runs = {}
    for name in EVALUATORS:
        best = None
        for _ in range(args.repeats):
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    name,
                    "--split",
                    args.split,
                    "--paths",
                    json.dumps(files["paths"]),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            run = json.loads(output.strip().splitlines()[-1])
            best = run if best is None or run["total_s"] < best["total_s"] else best
        runs[name] = best
        print(
            f"{name}: {best['total_s']:.2f} s, {best['peak_rss_mb']:.0f} MB, torch {best['torch_loaded']}",
            flush=True,
        )
    fast = runs["faster-coco-eval"]
    checks = {
        "12 COCO numbers identical (detlab, detlab-data-layer, pycocotools, faster-coco-eval)": all(
            run["coco_stats"] == runs["pycocotools"]["coco_stats"] for run in runs.values()
        ),
        "VOC07 numbers identical (detlab folder vs data layer)": runs["detlab"]["voc07"]
        == runs["detlab-data-layer"]["voc07"],
        "detlab loads no torch": not runs["detlab"]["torch_loaded"],
        "detlab end to end / faster-coco-eval": round(runs["detlab"]["total_s"] / fast["total_s"], 3),
        "faster-coco-eval / detlab (speed-up)": round(fast["total_s"] / runs["detlab"]["total_s"], 2),
        "detlab peak memory / faster-coco-eval": round(
            runs["detlab"]["peak_rss_mb"] / fast["peak_rss_mb"], 3
        ),
        "detlab-data-layer / detlab (time)": round(
            runs["detlab-data-layer"]["total_s"] / runs["detlab"]["total_s"], 2
        ),
    }
    from common import stamp, write_results

    report = {
        **stamp(),
        "split": args.split,
        "repeats": args.repeats,
        "files": files,
        "runs": runs,
        "checks": checks,
    }
    write_results("eval_voc", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
