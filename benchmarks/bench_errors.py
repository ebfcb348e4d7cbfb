"""TIDE error analysis speed: detlab's ``analyze_errors`` against ``tidecv`` (TIDE's reference code),
the same problem, one run, the numbers compared.

The problem is COCO-sized (``--images`` 5,000, about ``--dets`` 100 detections an image, ``--classes``
classes, about 7 objects an image of every COCO size, 1% crowd regions) and made to contain every TIDE
error: each object is found (a jittered box) or found poorly (localization), found with another
class (classification), found twice (duplicate) or missed, and the rest of an image's detections are
background boxes and boxes near objects with any class (both). Scores are full-precision floats.

Both read the same in-memory COCO dicts: detlab through ``problem_from_coco`` (its arrays), tidecv
through its ``Data.add_ground_truth`` / ``add_ignore_region`` / ``add_detection``, the reading timed
apart (``load_s``). ``eval_s``: tidecv's ``TIDE.evaluate`` + ``get_main_errors`` + ``get_special_errors``
(its mAP and the eight dAP); detlab's ``analyze_errors`` (the same, plus every detection's and object's
type, the per-class and per-size dAP). detlab runs ``--repeats`` times (median reported), tidecv once
(it takes minutes).

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_errors.py
  PYTHONPATH=src .venv/bin/python benchmarks/bench_errors.py --images 300 --results-name errors_quick   # a look
Writes benchmarks/results/<results-name>.{json,md} (default ``errors``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header_lines, stamp, write_results  # noqa: E402

from detlab.eval.errors import ERROR_TYPES, SPECIAL_ERROR_TYPES, TIDE_NAMES, analyze_errors  # noqa: E402
from detlab.eval.problem import problem_from_coco  # noqa: E402

KINDS = (*ERROR_TYPES, *SPECIAL_ERROR_TYPES)


def jittered(box: np.ndarray, spread: float, rng: np.random.Generator) -> list[float]:
    """``box`` ``(x, y, w, h)`` with each coordinate moved by ``spread`` of the box's size (normal)."""
    moved = box + rng.normal(0, spread, 4) * np.array([box[2], box[3], box[2], box[3]])
    return [float(moved[0]), float(moved[1]), float(max(1.0, moved[2])), float(max(1.0, moved[3]))]


def make_case(num_images: int, dets_per_image: int, num_classes: int, seed: int) -> tuple[dict, list]:
    """A COCO ground-truth dict and results list with every TIDE error type (see the module doc)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(320, 800)), int(rng.integers(240, 600))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        detections = []
        for _ in range(int(rng.poisson(7))):
            # log-uniform sides: small, medium and large objects all occur
            box_width = float(np.exp(rng.uniform(np.log(6), np.log(width / 2))))
            box_height = float(np.exp(rng.uniform(np.log(6), np.log(height / 2))))
            box = np.array(
                [
                    rng.uniform(0, width - box_width),
                    rng.uniform(0, height - box_height),
                    box_width,
                    box_height,
                ]
            )
            category = int(rng.integers(1, num_classes + 1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box.tolist(),
                    "area": box_width * box_height,
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
            draw = rng.random()
            if draw < 0.7:  # found (a few jittered past IoU 0.5: localization)
                detections.append((category, jittered(box, 0.08, rng), rng.uniform(0.3, 1.0)))
            elif draw < 0.8:  # found poorly: localization
                detections.append((category, jittered(box, 0.3, rng), rng.uniform(0.1, 0.9)))
            elif draw < 0.88:  # the right box, another class: classification
                other = int((category + rng.integers(1, max(num_classes, 2)) - 1) % num_classes + 1)
                detections.append((other, jittered(box, 0.05, rng), rng.uniform(0.1, 0.9)))
            if rng.random() < 0.15:  # found twice: duplicate
                detections.append((category, jittered(box, 0.08, rng), rng.uniform(0.05, 0.6)))
        while len(detections) < dets_per_image:
            if detections and rng.random() < 0.2:  # near an object, any class: both, localization, ...
                category, near, _ = detections[int(rng.integers(len(detections)))]
                detections.append(
                    (
                        int(rng.integers(1, num_classes + 1)),
                        jittered(np.array(near), 0.5, rng),
                        rng.uniform(0.0, 0.5),
                    )
                )
            else:  # background
                box_width, box_height = float(rng.uniform(4, width / 2)), float(rng.uniform(4, height / 2))
                box = [
                    float(rng.uniform(0, width - box_width)),
                    float(rng.uniform(0, height - box_height)),
                    box_width,
                    box_height,
                ]
                detections.append((int(rng.integers(1, num_classes + 1)), box, rng.uniform(0.0, 0.6)))
        for category, box, score in detections:
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": box, "score": float(score)}
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run_detlab(ground_truth: dict, results: list, repeats: int) -> dict:
    load_times, eval_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        problem = problem_from_coco(ground_truth, results)
        loaded = time.perf_counter()
        analysis = analyze_errors(problem)
        eval_times.append(time.perf_counter() - loaded)
        load_times.append(loaded - start)
    return {
        "load_s": round(statistics.median(load_times), 3),
        "eval_s": round(statistics.median(eval_times), 3),
        "eval_s_first": round(eval_times[0], 3),  # what a one-off run takes (fresh memory)
        "eval_s_runs": [round(value, 3) for value in eval_times],
        "ap": analysis.ap * 100,
        "dap": {TIDE_NAMES[kind]: analysis.dap[kind] * 100 for kind in KINDS},
        "counts": {TIDE_NAMES[kind]: analysis.counts[kind] for kind in ERROR_TYPES},
    }


def run_tidecv(ground_truth: dict, results: list) -> dict:
    from tidecv import TIDE, Data

    start = time.perf_counter()
    truth, predictions = Data("gt", max_dets=100), Data("detections")
    for image in ground_truth["images"]:
        truth.add_image(image["id"], image["file_name"])
    for category in ground_truth["categories"]:
        truth.add_class(category["id"], category["name"])
    for annotation in ground_truth["annotations"]:
        add = truth.add_ignore_region if annotation["iscrowd"] else truth.add_ground_truth
        add(annotation["image_id"], annotation["category_id"], annotation["bbox"])
    for entry in results:
        predictions.add_detection(entry["image_id"], entry["category_id"], entry["score"], entry["bbox"])
    loaded = time.perf_counter()
    tide = TIDE()
    run = tide.evaluate(truth, predictions, mode=TIDE.BOX, name="detections")
    dap = {**tide.get_main_errors()["detections"], **tide.get_special_errors()["detections"]}
    finished = time.perf_counter()
    return {
        "load_s": round(loaded - start, 3),
        "eval_s": round(finished - loaded, 3),
        "ap": run.ap,
        "dap": {name: dap[name] for name in (TIDE_NAMES[kind] for kind in KINDS)},
        "counts": {error.short_name: count for error, count in run.count_errors().items()},
    }


def markdown(report: dict) -> str:
    detlab, tidecv = report["detlab"], report["tidecv"]
    problem = report["problem"]
    names = [TIDE_NAMES[kind] for kind in KINDS]
    lines = [
        "# TIDE error analysis speed: detlab against tidecv",
        "",
        *header_lines(report),
        f"Problem: {problem['images']} images, {problem['gt_boxes']} objects ({problem['crowd']} crowd), "
        f"{problem['detections']} detections, {problem['classes']} classes, seed {problem['seed']} "
        "(`make_case` in the script: every TIDE error type occurs).",
        "",
        "| implementation | eval s | load s | AP50 | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for name, entry in (("detlab", detlab), ("tidecv", tidecv)):
        values = " | ".join(f"{entry['dap'][key]:.4f}" for key in names)
        lines.append(
            f"| {name} | {entry['eval_s']:.2f} | {entry['load_s']:.2f} | {entry['ap']:.4f} | {values} |"
        )
    lines += [
        "",
        f"- detlab is **{report['speedup_eval']:.0f}x** faster than tidecv on the analysis "
        f"({report['speedup_total']:.0f}x with the reading of the dicts; its first run, in fresh memory, "
        f"took {detlab['eval_s_first']:.2f} s: {report['speedup_first']:.0f}x).",
        f"- Identical numbers: {report['identical']} (AP and the eight dAP within 1e-6 AP points; largest "
        f"difference {report['max_abs_diff']:.1e}); error counts equal: {report['counts_equal']}.",
        f"- Counts: {', '.join(f'{key} {value}' for key, value in detlab['counts'].items())}.",
        f"- eval s: tidecv's `evaluate` + `get_main_errors` + `get_special_errors` (one run); detlab's "
        f"`analyze_errors`, which also types every detection and object and computes the per-class and "
        f"per-size dAP (median of {len(detlab['eval_s_runs'])}). Values in AP points (x100), as tidecv prints.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections an image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="detlab runs (the median is reported)")
    parser.add_argument("--results-name", default="errors")
    args = parser.parse_args()

    ground_truth, results = make_case(args.images, args.dets, args.classes, args.seed)
    problem = {
        "images": args.images,
        "gt_boxes": len(ground_truth["annotations"]),
        "crowd": sum(a["iscrowd"] for a in ground_truth["annotations"]),
        "detections": len(results),
        "classes": args.classes,
        "seed": args.seed,
    }
    print(f"problem: {problem}", flush=True)
    detlab = run_detlab(ground_truth, results, args.repeats)
    print(f"detlab: eval {detlab['eval_s']:.2f} s, load {detlab['load_s']:.2f} s", flush=True)
    tidecv = run_tidecv(ground_truth, results)
    print(f"tidecv: eval {tidecv['eval_s']:.2f} s, load {tidecv['load_s']:.2f} s", flush=True)
    differences = [abs(detlab["ap"] - tidecv["ap"])] + [
        abs(detlab["dap"][k] - tidecv["dap"][k]) for k in detlab["dap"]
    ]
    report = {
        **stamp(),
        "problem": problem,
        "detlab": detlab,
        "tidecv": tidecv,
        "speedup_eval": tidecv["eval_s"] / detlab["eval_s"],
        "speedup_total": (tidecv["eval_s"] + tidecv["load_s"]) / (detlab["eval_s"] + detlab["load_s"]),
        "speedup_first": tidecv["eval_s"] / detlab["eval_s_first"],
        "max_abs_diff": max(differences),
        "identical": max(differences) <= 1e-6,
        "counts_equal": detlab["counts"] == tidecv["counts"],
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
