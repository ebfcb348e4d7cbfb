"""COCO box evaluation speed: detlab against pycocotools and faster-coco-eval, same files, one run.

The problem is the one of ``../shared/anchors/coco_eval_speed.py`` (5,000 images, about 7
ground-truth boxes and 100 detections an image, 80 classes), generated with its own ``make_case``
so every evaluator reads the very same ``gt.json`` and ``dets.json``.

Each evaluator runs in its own subprocess (so peak memory is its own) and reports:
- ``eval_s``: the evaluation proper. For the peers this is ``evaluate() + accumulate()`` exactly as
  the anchor script times it (their ``COCO()``/``loadRes`` indexing is excluded); for detlab it is
  turning the already-parsed JSON lists into arrays plus the whole evaluation (stricter for detlab);
- ``total_s``: from reading the two files to the 12 numbers, for everyone (detlab reads them as
  ``evaluate_coco_files`` does);
- ``peak_rss_mb``: the subprocess's peak resident memory (``VmHWM``);
- the 12 summary numbers, compared with pycocotools'.

Usage (run under the shared CPU lock):
  flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_eval.py
  .venv/bin/python benchmarks/bench_eval.py --images 500   # a quick look, not for the README
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANCHORS = REPO.parent / "shared" / "anchors"
EVALUATORS = ("detlab", "pycocotools", "faster-coco-eval")


def make_files(images: int, dets: int, classes: int, seed: int, folder: Path) -> tuple[Path, Path, dict]:
    if not (ANCHORS / "coco_eval_speed.py").is_file():
        raise FileNotFoundError(f"{ANCHORS}/coco_eval_speed.py not found; the benchmark reuses its generator")
    sys.path.insert(0, str(ANCHORS))
    from coco_eval_speed import make_case

    folder.mkdir(parents=True, exist_ok=True)
    gt_path, dets_path = folder / "gt.json", folder / "dets.json"
    ground_truth, detections = make_case(images, dets, classes, seed)
    gt_path.write_text(json.dumps(ground_truth))
    dets_path.write_text(json.dumps(detections))
    sizes = {"images": images, "gt_boxes": len(ground_truth["annotations"]), "detections": len(detections)}
    return gt_path, dets_path, sizes


def run_peer(coco_module, eval_class, gt_path: Path, dets_path: Path) -> dict:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_module.COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(dets_path))
        eval_start = time.perf_counter()
        evaluator = eval_class(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        eval_seconds = time.perf_counter() - eval_start
        evaluator.summarize()
    return {
        "eval_s": eval_seconds,
        "total_s": time.perf_counter() - start,
        "stats": [float(s) for s in evaluator.stats[:12]],
    }


def run_detlab(gt_path: Path, dets_path: Path, repeats: int) -> dict:
    from detlab.eval.coco import evaluate_coco
    from detlab.eval.problem import load_json, problem_from_coco

    start = time.perf_counter()
    # as evaluate_coco_files reads them (orjson); then the evaluation timed on its own, repeatedly
    ground_truth = load_json(gt_path)
    detections = load_json(dets_path)
    times = []
    for _ in range(repeats):
        eval_start = time.perf_counter()
        result = evaluate_coco(problem_from_coco(ground_truth, detections, gt_path, dets_path))
        times.append(time.perf_counter() - eval_start)
    total = time.perf_counter() - start - sum(times[1:])  # one file read + one evaluation
    return {
        "eval_s": min(times),
        "eval_s_all": times,
        "total_s": total,
        "stats": [float(s) for s in result.stats],
    }


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM). Unlike ``getrusage``'s ru_maxrss,
    it is not inherited from the parent that forked the worker."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name: str, gt_path: Path, dets_path: Path, repeats: int) -> None:
    # import first, so that the memory the imports take is reported apart from the evaluation's
    if name == "detlab":
        import detlab.eval.coco  # noqa: F401
    elif name == "pycocotools":
        import pycocotools.coco
        import pycocotools.cocoeval
    else:
        import faster_coco_eval.core.coco as fast_coco
        from faster_coco_eval.core.faster_eval_api import COCOeval_faster
    after_imports = peak_rss_mb()
    if name == "detlab":
        result = run_detlab(gt_path, dets_path, repeats)
    elif name == "pycocotools":
        result = run_peer(pycocotools.coco, pycocotools.cocoeval.COCOeval, gt_path, dets_path)
    else:
        result = run_peer(fast_coco, COCOeval_faster, gt_path, dets_path)
    result["rss_after_imports_mb"] = after_imports
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def machine() -> dict:
    import numpy
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def write_markdown(result: dict, path: Path) -> None:
    rows = [
        "| evaluator | eval s | total s (read files -> 12 numbers) | peak RSS MB | RSS after imports MB | "
        "max abs diff vs pycocotools |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in EVALUATORS:
        entry = result["evaluators"].get(name)
        if not entry:
            rows.append(f"| {name} | not run | | | | |")
            continue
        rows.append(
            f"| {name} | {entry['eval_s']:.2f} | {entry['total_s']:.2f} | {entry['peak_rss_mb']:.0f} | "
            f"{entry['rss_after_imports_mb']:.0f} | "
            f"{entry.get('max_abs_diff_vs_pycocotools', float('nan')):.1e} |"
        )
    ratios = result["ratios"]
    lines = [
        "# COCO evaluation speed",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, "
        f"Python {result['machine']['python']}, torch {result['machine']['torch']}, numpy {result['machine']['numpy']}  ",
        f"Problem: {result['problem']['images']} images, {result['problem']['gt_boxes']} ground-truth boxes, "
        f"{result['problem']['detections']} detections, {result['problem']['classes']} classes (generator of "
        "`../shared/anchors/coco_eval_speed.py`, seed {}).".format(result["problem"]["seed"]),
        "",
        *rows,
        "",
        f"- detlab is **{ratios['pycocotools_over_detlab_eval']:.1f}x** faster than pycocotools and "
        f"{ratios['faster_coco_eval_over_detlab_eval']:.2f}x the speed of faster-coco-eval on the evaluation proper "
        f"(end to end, from reading the files: {ratios['pycocotools_over_detlab_total']:.1f}x and "
        f"{ratios['faster_coco_eval_over_detlab_total']:.2f}x).",
        f"- Identical numbers: {result['identical']} (all 12 within 1e-6 of pycocotools).",
        "- eval s: peers' `evaluate()+accumulate()` (their COCO()/loadRes indexing excluded, as in the anchor "
        "script); detlab's dict-to-array conversion plus evaluation (best of "
        f"{len(result['evaluators']['detlab']['eval_s_all'])}).",
        "- Peak RSS is the subprocess's high-water mark; 'after imports' is that mark before any file is read "
        "(detlab's evaluator imports no torch: numpy and orjson).",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="detlab evaluation repeats (best is reported)")
    parser.add_argument("--work", default="/tmp/detlab-bench-eval", help="folder for gt.json and dets.json")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--skip", nargs="*", default=[], choices=EVALUATORS)
    parser.add_argument("--worker", choices=EVALUATORS, help=argparse.SUPPRESS)
    parser.add_argument("--gt", help=argparse.SUPPRESS)
    parser.add_argument("--dt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.gt), Path(args.dt), args.repeats)
        return

    gt_path, dets_path, sizes = make_files(args.images, args.dets, args.classes, args.seed, Path(args.work))
    sizes.update(classes=args.classes, seed=args.seed)
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    evaluators = {}
    for name in EVALUATORS:
        if name in args.skip:
            continue
        command = [sys.executable, __file__, "--worker", name, "--gt", str(gt_path), "--dt", str(dets_path)]
        command += ["--repeats", str(args.repeats)]
        completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
        if completed.returncode != 0:
            print(f"{name} failed:\n{completed.stderr}", file=sys.stderr)
            continue
        evaluators[name] = json.loads(completed.stdout.strip().splitlines()[-1])
        print(
            f"{name}: eval {evaluators[name]['eval_s']:.2f} s, total {evaluators[name]['total_s']:.2f} s",
            flush=True,
        )
    reference = evaluators.get("pycocotools", {}).get("stats")
    identical = None
    if reference:
        for entry in evaluators.values():
            entry["max_abs_diff_vs_pycocotools"] = max(abs(a - b) for a, b in zip(entry["stats"], reference))
        identical = all(entry["max_abs_diff_vs_pycocotools"] <= 1e-6 for entry in evaluators.values())

    def ratio(peer: str, key: str):
        if peer in evaluators and "detlab" in evaluators:
            return evaluators[peer][key] / evaluators["detlab"][key]
        return float("nan")

    result = {
        "command": " ".join(["python", "benchmarks/bench_eval.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "problem": sizes,
        "evaluators": evaluators,
        "ratios": {
            "pycocotools_over_detlab_eval": ratio("pycocotools", "eval_s"),
            "faster_coco_eval_over_detlab_eval": ratio("faster-coco-eval", "eval_s"),
            "pycocotools_over_detlab_total": ratio("pycocotools", "total_s"),
            "faster_coco_eval_over_detlab_total": ratio("faster-coco-eval", "total_s"),
        },
        "identical": identical,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, out / "eval.md")
    print((out / "eval.md").read_text())


if __name__ == "__main__":
    main()
