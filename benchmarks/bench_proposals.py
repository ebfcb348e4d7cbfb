"""Region proposals: detlab Selective Search (and baselines) against OpenCV-contrib's, in one run.

For each data set (BCCD test, raccoon test) this runs the peer script
``../shared/anchors/opencv_selective_search.py`` (OpenCV "fast", one thread) and detlab's
``ss-fast`` on every image, top 2000 proposals, one thread each; then OpenCV "quality" and
detlab ``ss-quality`` on the first ``--quality-limit`` images of the split (quality is slow); then
the baselines. Recall, AR and MABO of detlab's methods come from ``detlab.eval.proposals``;
OpenCV's are the peer script's own numbers on the same ground truth.

Targets: ``ss-fast`` at most 0.8x OpenCV fast's mean time an image and ``ss-quality`` at most
1.0x OpenCV quality's, with recall@2000 (IoU 0.5 and 0.7) and MABO not below OpenCV's nor below
the previous report's (read from ``proposals.json`` before it is overwritten).

Writes ``benchmarks/results/proposals.json``, ``proposals.md`` and plots
``proposals_<data>_*.png``. Run under the CPU lock:

    flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_proposals.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line  # noqa: E402

from detlab.data.voc import read_voc  # noqa: E402
from detlab.proposals import GaussianBoxes, build_method  # noqa: E402
from detlab.proposals.evaluate import (  # noqa: E402
    evaluate_method,
    save_plots,
    summary_header,
    summary_row,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER = SHARED / "anchors" / "opencv_selective_search.py"
DATA_SETS = {"bccd": SHARED / "data" / "bccd", "raccoon": SHARED / "data" / "raccoon"}
TOP = 2000


def run_peer(data_dir: Path, split: str, mode: str, limit: int) -> dict:
    command = [sys.executable, str(PEER), "--data", str(data_dir), "--split", split, "--mode", mode]
    command += ["--top", str(TOP), "--threads", "1"] + (["--limit", str(limit)] if limit else [])
    print("peer:", " ".join(command), flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ}).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_detlab(name: str, method, dataset, limit: int) -> dict:
    print(f"detlab {name} on {dataset.name} ({limit or len(dataset)} images)", flush=True)
    result = evaluate_method(method, dataset, limit=limit or None)
    print(
        f"  {result['seconds_per_image_mean']:.2f} s/img, recall {result['recall']}, MABO {result['mabo']:.3f}"
    )
    return result


def peer_row(name: str, peer: dict) -> list[str]:
    cells = [name]
    for threshold in (0.5, 0.7):
        cells += [f"{peer['recall'][f'{threshold}@{n}']:.3f}" for n in (100, 500, 1000, 2000)]
    return cells + ["-", f"{peer['MABO']:.3f}", f"{peer['seconds_per_image_mean']:.2f}"]


def markdown_table(rows: list[list[str]]) -> list[str]:
    header = summary_header()
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def load_test_set(data_name: str):
    """The test split in the order of its split file, the order the peer script walks."""
    data_dir = DATA_SETS[data_name]
    dataset = read_voc(data_dir, split="test")
    dataset.name = f"{data_name}-test"
    order = (data_dir / "ImageSets" / "Main" / "test.txt").read_text().split()
    position = {image_id: index for index, image_id in enumerate(order)}
    dataset.records.sort(key=lambda record: position[str(record.image_id)])
    return dataset


def fast_phase(data_name: str, limit: int) -> dict:
    """OpenCV fast vs detlab ss-fast on every image, then the cheap baselines."""
    data_dir = DATA_SETS[data_name]
    dataset = load_test_set(data_name)
    entry = {"images": limit or len(dataset), "peer": {}, "detlab": {}}
    entry["peer"]["opencv-fast"] = run_peer(data_dir, "test", "fast", limit)
    entry["detlab"]["ss-fast"] = run_detlab(
        "ss-fast", build_method("ss-fast", max_proposals=TOP), dataset, limit
    )
    trainval = read_voc(data_dir, split="trainval")
    baselines = {
        "sliding": build_method("sliding", max_proposals=TOP),
        "uniform": build_method("uniform", max_proposals=TOP),
        "gaussian (fit on trainval)": GaussianBoxes.fit(
            [record.boxes for record in trainval.records],
            [(record.height, record.width) for record in trainval.records],
            max_proposals=TOP,
        ),
    }
    for name, method in baselines.items():
        entry["detlab"][name] = run_detlab(name, method, dataset, limit)
    fast, peer_fast = entry["detlab"]["ss-fast"], entry["peer"]["opencv-fast"]
    entry["ratios"] = {
        "fast_time_mean_detlab_over_opencv": fast["seconds_per_image_mean"]
        / peer_fast["seconds_per_image_mean"],
        "fast_time_median_detlab_over_opencv": fast["seconds_per_image_median"]
        / peer_fast["seconds_per_image_median"],
    }
    entry["targets"] = {
        "fast_recall_0.5_at_2000": fast["recall"][f"0.5@{TOP}"] >= peer_fast["recall"][f"0.5@{TOP}"],
        "fast_recall_0.7_at_2000": fast["recall"][f"0.7@{TOP}"] >= peer_fast["recall"][f"0.7@{TOP}"],
        "fast_mabo": fast["mabo"] >= peer_fast["MABO"],
        "fast_time_at_most_0.8x": entry["ratios"]["fast_time_mean_detlab_over_opencv"] <= 0.8,
    }
    return entry


def not_below_previous(result: dict, previous: dict | None) -> dict:
    """Recall@2000 at IoU 0.5/0.7 and MABO of ``result`` against the same method's ``previous``
    result on the same images: ``{name: bool}``; empty when there is nothing to compare."""
    if not previous:
        return {}
    keys = [f"0.5@{TOP}", f"0.7@{TOP}"]
    checks = {f"recall_{key}": result["recall"][key] >= previous["recall"][key] - 1e-12 for key in keys}
    checks["mabo"] = result["mabo"] >= previous["mabo"] - 1e-12
    return checks


def quality_phase(data_name: str, entry: dict, quality_images: int) -> None:
    """OpenCV quality vs detlab ss-quality (and ss-fast, superpixels) on the first images."""
    dataset = load_test_set(data_name)
    entry["quality_images"] = quality_images
    entry["peer"]["opencv-quality"] = run_peer(DATA_SETS[data_name], "test", "quality", quality_images)
    subset = entry.setdefault("quality_subset", {})
    for name in ("ss-quality", "ss-fast", "superpixels"):
        subset[name] = run_detlab(name, build_method(name, max_proposals=TOP), dataset, quality_images)
    entry["ratios"]["quality_time_mean_detlab_over_opencv"] = (
        subset["ss-quality"]["seconds_per_image_mean"]
        / entry["peer"]["opencv-quality"]["seconds_per_image_mean"]
    )
    quality_ratio = entry["ratios"]["quality_time_mean_detlab_over_opencv"]
    entry["targets"]["quality_time_at_most_1.0x"] = quality_ratio <= 1.0


def write_report(report: dict, out_dir: Path) -> None:
    """JSON, Markdown and plots of everything measured so far (called after every phase)."""
    lines = [
        "# Region proposals: detlab vs OpenCV-contrib Selective Search",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"{machine_line(report['machine'])}, one thread each.",
        "",
        f"Top {TOP} proposals an image. Recall at IoU 0.5 / 0.7 for the top n boxes, AR (average recall over "
        "IoU 0.5-1), MABO (mean over classes of the average best overlap), mean seconds an image "
        "(proposal computation only, image decoding excluded, for both). OpenCV's recall and MABO are the "
        "peer script's own numbers on the same ground truth.",
    ]
    for data_name, entry in report["data_sets"].items():
        detlab, peer, ratios = entry["detlab"], entry["peer"], entry["ratios"]
        rows = [peer_row("OpenCV fast", peer["opencv-fast"])]
        rows += [summary_row(f"detlab {name}", result) for name, result in detlab.items()]
        lines += ["", f"## {data_name} test ({entry['images']} images)", "", *markdown_table(rows), ""]
        lines += [
            f"Time ratio detlab/OpenCV, fast: {ratios['fast_time_mean_detlab_over_opencv']:.2f} (mean), "
            f"{ratios['fast_time_median_detlab_over_opencv']:.2f} (median).  ",
            "Targets (detlab vs OpenCV): "
            + ", ".join(f"{key} {'met' if value else 'NOT met'}" for key, value in entry["targets"].items()),
        ]
        for label, checks in entry.get("against_previous", {}).items():
            lines += [
                f"  \nNot below the previous report ({label}): "
                + ", ".join(f"{key} {'yes' if value else 'NO'}" for key, value in checks.items())
            ]
        curves = {f"detlab {name}": result for name, result in detlab.items()}
        if "quality_subset" in entry:
            subset = entry["quality_subset"]
            rows = [peer_row("OpenCV quality", peer["opencv-quality"])]
            rows += [summary_row(f"detlab {name}", result) for name, result in subset.items()]
            lines += [
                "",
                f"Quality modes on the first {entry['quality_images']} images of the split (quality is slow):",
                "",
                *markdown_table(rows),
                "",
                f"Time ratio detlab/OpenCV, quality: {ratios['quality_time_mean_detlab_over_opencv']:.2f} (mean).",
            ]
            curves[f"detlab ss-quality (first {entry['quality_images']})"] = subset["ss-quality"]
        plots = save_plots(curves, out_dir / "figures", prefix=f"proposals_{data_name}")
        lines += ["", *[f"![{path.stem}](figures/{path.name})" for path in plots]]
    (out_dir / "proposals.json").write_text(json.dumps(report, indent=1))
    (out_dir / "proposals.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-sets", default="bccd,raccoon")
    parser.add_argument("--limit", type=int, default=0, help="first N test images only (0: all)")
    parser.add_argument("--quality-limit", type=int, default=10, help="images for the quality modes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_proposals.py "
        + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "processor": platform.processor() or platform.machine()},
        "top": TOP,
        "data_sets": {},
    }
    previous_file = out_dir / "proposals.json"
    # Read before the first phase overwrites it.
    previous_report = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    previous, previous_date = previous_report.get("data_sets", {}), previous_report.get("date", "?")
    names = [name for name in args.data_sets.split(",") if DATA_SETS[name].is_dir()]
    if not names:
        print(f"no data sets found under {SHARED / 'data'}", flush=True)
        return 1
    # Fast modes on every data set first: they carry the targets, so they are measured before the slow rest.
    for data_name in names:
        entry = report["data_sets"][data_name] = fast_phase(data_name, args.limit)
        before = previous.get(data_name, {})
        if before.get("images") == entry["images"]:
            checks = not_below_previous(entry["detlab"]["ss-fast"], before["detlab"].get("ss-fast"))
            entry["against_previous"] = {f"ss-fast, report of {previous_date}": checks}
        write_report(report, out_dir)
    for data_name in names:
        entry = report["data_sets"][data_name]
        quality_phase(data_name, entry, min(args.quality_limit, entry["images"]))
        before = previous.get(data_name, {})
        if before.get("quality_images") == entry["quality_images"]:
            checks = not_below_previous(
                entry["quality_subset"]["ss-quality"], before["quality_subset"].get("ss-quality")
            )
            entry.setdefault("against_previous", {})[f"ss-quality, report of {previous_date}"] = checks
        write_report(report, out_dir)
    print((out_dir / "proposals.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
