"""Where each method loses its AP: TIDE's error breakdown of trained checkpoints, side by side.

Each checkpoint (a run folder or ``.pt``; any detector) is scored on the data set's test split as
``detlab eval --checkpoint RUN --errors`` scores it: COCO's matching, then TIDE's six error types
and their dAP at IoU 0.5 (:mod:`detlab.eval.errors`), overall and by object size, with the counts
and the best-F1 operating point. Two sentences a method are written from the numbers: what costs
it most, and whether it errs more by missing objects or by firing where none is.

    PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_errors_methods.py \\
        --data bccd --checkpoints runs/bccd-faster_rcnn runs/bccd-yolo --results-name errors_bccd

``--train-note`` records how the checkpoints were trained (their budgets and steps are read from
them too).
"""

from __future__ import annotations

import torch
from common import DATA, checkpoints_parser, header_lines, stamp, write_results

from detlab.engine.checkpoint import load_checkpoint, resolve_checkpoint_path
from detlab.engine.predict import evaluate_checkpoint
from detlab.eval.error_report import build_error_report, study_errors, write_error_report
from detlab.eval.errors import ERROR_TYPES, SIZE_RANGES, SPECIAL_ERROR_TYPES, TIDE_NAMES
from detlab.models import method as method_of

MAIN_TYPES = list(ERROR_TYPES)
ALL_TYPES = [*ERROR_TYPES, *SPECIAL_ERROR_TYPES]


def analyse(checkpoint: str, data: dict, out_dir) -> dict:
    """One checkpoint's row: its training, its COCO numbers on the test split and its errors."""
    stored = load_checkpoint(checkpoint)
    report, result = evaluate_checkpoint(
        checkpoint, data["spec"], data["test_split"], data_root=data.get("root")
    )
    errors = build_error_report(result.problem, *study_errors(result.problem))
    write_error_report(result.problem, out_dir, image_paths=result.problem.image_paths, progress=False)
    name = stored["config"]["model_name"]
    return {
        "method": name,
        "label": method_of(name).label,
        "checkpoint": str(resolve_checkpoint_path(checkpoint)),
        "steps": stored.get("progress", {}).get("step"),
        "train_s": round(stored.get("progress", {}).get("elapsed_s", 0.0), 1),
        "AP50": report["metrics"]["AP50"],
        "AP": report["metrics"]["AP"],
        "tide_ap": errors["ap"],
        "dap": errors["dap"],
        "counts": errors["counts"],
        "per_size": {size: errors["per_size"][size]["dap"] for size in SIZE_RANGES},
        "num_gt": errors["num_gt"],
        "num_detections": errors["num_detections"],
        "best_confidence": errors["operating_point"]["best_confidence"],
        "best_f1": errors["operating_point"]["best_f1"],
        "report_dir": str(out_dir),
    }


def sentences(row: dict) -> str:
    """What the numbers say of one method, in two sentences."""
    ranked = sorted(MAIN_TYPES, key=lambda kind: row["dap"][kind] or 0.0, reverse=True)
    first, second = ranked[:2]
    missed = row["counts"]["missed"]
    share = missed / max(row["num_gt"], 1)
    false_positive, false_negative = row["dap"]["false_positive"], row["dap"]["false_negative"]
    lean = (
        "missing objects"
        if (false_negative or 0) > (false_positive or 0)
        else "detections where no object is"
    )
    return (
        f"{row['label']} loses most to {TIDE_NAMES[first]} errors (dAP {row['dap'][first]:.3f}), then "
        f"{TIDE_NAMES[second]} ({row['dap'][second]:.3f}). It misses {missed} of {row['num_gt']} objects "
        f"({100 * share:.0f}%), and fixing all its false negatives would gain {false_negative:.3f} against "
        f"{false_positive:.3f} for all its false positives: it errs more by {lean}."
    )


def markdown(report: dict) -> str:
    rows = report["rows"]
    kinds_header = " | ".join(TIDE_NAMES[kind] for kind in ALL_TYPES)
    lines = [
        f"# Where the AP is lost on {report['data']}: TIDE's errors of each method",
        "",
        *header_lines(report),
        "Each checkpoint scored on the test split as `detlab eval --checkpoint RUN --errors` does. dAP: the AP at "
        "IoU 0.5 gained if that error alone were fixed (TIDE, Bolya et al. 2020; equal to `tidecv`, tested). "
        f"{report['train_note']}",
        "",
        f"| method | steps | training s | AP50 | AP | {kinds_header} | best-F1 score |",
        "|---|---|---|---|---|" + "---|" * len(ALL_TYPES) + "---|",
    ]
    for row in rows:
        values = " | ".join(f"{row['dap'][kind]:.3f}" for kind in ALL_TYPES)
        lines.append(
            f"| {row['label']} | {row['steps']} | {row['train_s']:.0f} | {row['AP50']:.3f} | {row['AP']:.3f} | "
            f"{values} | {row['best_confidence']:.2f} (F1 {row['best_f1']:.2f}) |"
        )
    lines += [
        "",
        "Counts of each error type:",
        "",
        f"| method | {' | '.join(TIDE_NAMES[k] for k in MAIN_TYPES)} |",
    ]
    lines.append("|---|" + "---|" * len(MAIN_TYPES))
    for row in rows:
        lines.append(
            f"| {row['label']} | " + " | ".join(str(row["counts"][kind]) for kind in MAIN_TYPES) + " |"
        )
    lines += ["", "dAP by object size (only the errors of that size fixed):", ""]
    lines += [
        f"| method | size | {' | '.join(TIDE_NAMES[k] for k in MAIN_TYPES)} |",
        "|---|---|" + "---|" * 6,
    ]
    for row in rows:
        for size, values in row["per_size"].items():
            cells = " | ".join("-" if values[kind] is None else f"{values[kind]:.3f}" for kind in MAIN_TYPES)
            lines.append(f"| {row['label']} | {size} | {cells} |")
    lines += ["", "What each gets wrong:", ""]
    lines += [f"- {sentences(row)}" for row in rows]
    lines += ["", "Full reports (errors.md, figures, galleries) were written to each row's `report_dir`.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = checkpoints_parser(__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/bench/errors_methods")
    parser.add_argument(
        "--train-note", default="", help="how the checkpoints were trained, for the results file"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DATA[args.data]
    rows = []
    for index, checkpoint in enumerate(args.checkpoints):
        rows.append(analyse(checkpoint, data, f"{args.work_dir}/{index}"))
    report = {**stamp(), "data": args.data, "train_note": args.train_note, "rows": rows}
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
