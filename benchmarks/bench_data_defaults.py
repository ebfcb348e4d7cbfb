"""Faster R-CNN with its defaults only, on data nobody tuned for, against the old defaults and
torchvision's Faster R-CNN with the same budget, one part at a time (each part's result is
written as soon as it is done, so a long session can be split).

Parts (``--parts``, in order):
- ``new``: ``detlab train faster_rcnn --data voc:DIR --set data.train_split=trainval --set
  data.test_split=test --time-budget B``: the defaults as they are (input size and anchors fitted
  to the training boxes, a held-out validation share of trainval for ``best.pt``);
- ``old``: the defaults before that, set explicitly: short side 320 / 427, anchors 16-144 px at
  ratios 0.5/1/2, lr 0.01, no photometric jitter, and ``best.pt`` chosen on the test split (what a
  user had to name, having no val split);
- ``fitted``: the old defaults, but with the input size and anchors fitted (``auto``): what the
  fit alone changes, under the old protocol (``best.pt`` chosen on the test split);
- ``peer``: ``../shared/anchors/torchvision_frcnn.py`` (MobileNetV3-Large FPN, no pretrained
  weights, its own defaults) with the same budget.
detlab's runs are scored with ``detlab eval --checkpoint RUN/best`` on the test split (COCO's
numbers and VOC07 mAP@0.5); the peer reports its own pycocotools AP50 and AP.

    PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_data_defaults.py \\
        --data raccoon --parts new old peer
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import REPO, RESULTS, header_lines, stamp, write_results

SHARED_DATA = REPO.parent / "shared" / "data"
OLD_DEFAULTS = ["model.min_size=320", "model.max_size=427", "model.anchor_sizes=[16,24,40,64,96,144]",
                "model.aspect_ratios=[0.5,1.0,2.0]", "train.lr=0.01", "data.photometric=false",
                "data.val_split=test", "model.scale_jitter=0", "train.ema_decay=0"]  # fmt: skip
# The old defaults with only the anchors and the input size fitted (auto): isolates what the fit does.
FITTED_ONLY = [
    item
    for item in OLD_DEFAULTS
    if item.split("=")[0]
    not in ("model.min_size", "model.max_size", "model.anchor_sizes", "model.aspect_ratios")
]
PEER = REPO.parent / "shared" / "anchors" / "torchvision_frcnn.py"


def detlab(*words: str) -> str:
    command = [sys.executable, "-m", "detlab", *words]
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def run_detlab(data_dir: Path, budget: float, run_dir: Path, extra: list[str]) -> dict:
    spec = f"voc:{data_dir}"
    sets = ["data.train_split=trainval", "data.test_split=test", *extra]
    if not (run_dir / "best.pt").is_file():
        detlab(
            "train",
            "faster_rcnn",
            "--data",
            spec,
            "--time-budget",
            str(budget),
            "--out",
            str(run_dir),
            *[word for item in sets for word in ("--set", item)],
        )
    scores = {}
    for protocol in ("coco", "voc07"):
        out = run_dir / f"test_{protocol}"
        detlab(
            "eval",
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--gt",
            spec,
            "--split",
            "test",
            "--protocol",
            protocol,
            "--out",
            str(out),
            "--no-plots",
        )
        scores[protocol] = json.loads((out / "report.json").read_text())["metrics"]
    fit = run_dir / "data_fit.json"
    metrics = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    evaluations = [line for line in metrics if line.get("kind") == "eval" and "AP50" in line]
    return {
        "sets": sets,
        "coco": scores["coco"],
        "voc07_map50": scores["voc07"]["mAP@0.5"],
        "data_fit": json.loads(fit.read_text()) if fit.is_file() else None,
        "validation_ap50": [round(line["AP50"], 4) for line in evaluations],
        "steps": max((line.get("step", 0) for line in metrics), default=0),
    }


def run_peer(data_dir: Path, budget: float) -> dict:
    command = [
        sys.executable,
        str(PEER),
        "--data",
        str(data_dir),
        "--train",
        "trainval",
        "--test",
        "test",
        "--budget-s",
        str(budget),
    ]
    print("$ " + " ".join(command), flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = [
        f"# Faster R-CNN with its defaults on {report['data']} ({report['budget_s']:.0f} s of training each)",
        "",
        *header_lines(report),
        *(
            [f"The parts ran as: {', '.join(f'`{command}`' for command in report['commands'])}.", ""]
            if len(report.get("commands", [])) > 1
            else []
        ),
        "Train on trainval, test on test. detlab: `best.pt` scored by `detlab eval --checkpoint` (COCO's numbers; "
        "VOC07 11-point mAP@0.5). The peer: its own pycocotools numbers.",
        "",
        "| run | mAP@0.5 (VOC07) | COCO AP50 | COCO AP | AP75 | AR@100 | anchors cover (IoU >= 0.7) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "new": "detlab, defaults now",
        "first_fit": "detlab, defaults at the first fit (no scale jitter, no EMA)",
        "new_contended": "detlab, defaults now but continuous scale jitter, on a CPU shared with another job (5,075 steps; 7,468 alone)",
        "old": "detlab, the old defaults (best.pt chosen on test)",
        "fitted": "detlab, the old defaults with fitted input size and anchors (best.pt chosen on test)",
        "peer": "torchvision Faster R-CNN (peer)",
    }
    for part, result in report["parts"].items():
        if part == "peer":
            lines.append(
                f"| {names[part]} ({result.get('iterations', '?')} iterations) | - | "
                f"{result.get('mAP50', float('nan')):.3f} | {result.get('mAP', float('nan')):.3f} | - | - | - |"
            )
            continue
        coco, fit = result["coco"], result.get("data_fit") or {}
        cover = fit.get("anchors", {}).get("best_possible_recall")
        lines.append(
            f"| {names[part]} | {result['voc07_map50']:.3f} | {coco['AP50']:.3f} | {coco['AP']:.3f} | "
            f"{coco['AP75']:.3f} | {coco.get('AR100', coco.get('AR', float('nan'))):.3f} | "
            f"{'-' if cover is None else f'{100 * cover:.1f}%'} |"
        )
    for part, result in report["parts"].items():
        if part != "peer" and result.get("validation_ap50"):
            values = result["validation_ap50"]
            lines.append(
                f"\n{names[part]}: {len(values)} validation evaluations (AP50), first {values[0]:.3f}, "
                f"best {max(values):.3f} (best.pt), last {values[-1]:.3f}."
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="raccoon", choices=("raccoon", "bccd"))
    parser.add_argument(
        "--parts", nargs="+", default=["new", "old", "peer"], choices=("new", "old", "fitted", "peer")
    )
    parser.add_argument("--budget-s", type=float, default=1500.0)
    parser.add_argument("--work-dir", default="/tmp/bench/data_defaults")
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON")
    args = parser.parse_args()
    data_dir = SHARED_DATA / args.data
    name = f"data_defaults_{args.data}"
    previous = RESULTS / f"{name}.json"
    report = json.loads(previous.read_text()) if previous.is_file() else {}
    commands = report.get("commands", [report["command"]] if "command" in report else [])
    report.update({**stamp(), "data": args.data, "budget_s": args.budget_s})
    if not args.render_only:
        report["commands"] = [*commands, report["command"]]
    report.setdefault("parts", {})
    if args.render_only:
        report = json.loads(previous.read_text())
        write_results(name, report, markdown(report))
        return 0
    for part in args.parts:
        run_dir = Path(args.work_dir) / args.data / part
        if part == "peer":
            report["parts"][part] = run_peer(data_dir, args.budget_s)
        else:
            extra = {"old": OLD_DEFAULTS, "fitted": FITTED_ONLY}.get(part, [])
            report["parts"][part] = run_detlab(data_dir, args.budget_s, run_dir, extra)
        write_results(name, report, markdown(report))
        print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
