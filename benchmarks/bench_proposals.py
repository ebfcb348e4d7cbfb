"""Region proposals: detlab Selective Search (and baselines) against OpenCV-contrib's, in one run.

For each data set (BCCD test, raccoon test) this runs the peer script
``../shared/anchors/opencv_selective_search.py`` (OpenCV "fast", one thread) and detlab's
``ss-fast`` on every image, top 2000 proposals, one thread each; then OpenCV "quality" and
detlab ``ss-quality`` on the first ``--quality-limit`` images of the split (quality is slow); then
the baselines. Recall, AR and MABO of detlab's methods come from ``detlab.eval.proposals``;
OpenCV's are the peer script's own numbers on the same ground truth.

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

from detlab.data import read_voc  # noqa: E402
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
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": 1,
    }
    report = {
        "command": "flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_proposals.py "
        + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "top": TOP,
        "data_sets": {},
    }
    lines = [
        "# Region proposals: detlab vs OpenCV-contrib Selective Search",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, one thread each.",
        "",
        f"Top {TOP} proposals an image. Recall at IoU 0.5 / 0.7 for the top n boxes, AR (average recall over "
        "IoU 0.5-1), MABO (mean over classes of the average best overlap), mean seconds an image "
        "(proposal computation only, image decoding excluded, for both).",
    ]
    for data_name in args.data_sets.split(","):
        data_dir = DATA_SETS[data_name]
        if not data_dir.is_dir():
            print(f"skipping {data_name}: {data_dir} not found", flush=True)
            continue
        dataset = read_voc(data_dir, split="test")
        dataset.name = f"{data_name}-test"
        # The peer walks the split file in order; keep detlab on the same images in the same order.
        order = (data_dir / "ImageSets" / "Main" / "test.txt").read_text().split()
        position = {image_id: index for index, image_id in enumerate(order)}
        dataset.records.sort(key=lambda record: position[str(record.image_id)])
        num_images = args.limit or len(dataset)
        quality_images = min(args.quality_limit, num_images)

        entry = {"images": num_images, "quality_images": quality_images, "peer": {}, "detlab": {}}
        entry["peer"]["opencv-fast"] = run_peer(data_dir, "test", "fast", args.limit)
        entry["detlab"]["ss-fast"] = run_detlab(
            "ss-fast", build_method("ss-fast", max_proposals=TOP), dataset, args.limit
        )
        entry["peer"]["opencv-quality"] = run_peer(data_dir, "test", "quality", quality_images)
        entry["detlab"]["ss-quality"] = run_detlab(
            "ss-quality", build_method("ss-quality", max_proposals=TOP), dataset, quality_images
        )
        # On the quality subset, ss-fast again so the quality rows compare like with like.
        entry["detlab"]["ss-fast (quality subset)"] = run_detlab(
            "ss-fast", build_method("ss-fast", max_proposals=TOP), dataset, quality_images
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
            entry["detlab"][name] = run_detlab(name, method, dataset, args.limit)
        entry["detlab"]["superpixels (quality subset)"] = run_detlab(
            "superpixels", build_method("superpixels", max_proposals=TOP), dataset, quality_images
        )

        fast, peer_fast = entry["detlab"]["ss-fast"], entry["peer"]["opencv-fast"]
        quality, peer_quality = entry["detlab"]["ss-quality"], entry["peer"]["opencv-quality"]
        entry["ratios"] = {
            "fast_time_mean_detlab_over_opencv": fast["seconds_per_image_mean"]
            / peer_fast["seconds_per_image_mean"],
            "fast_time_median_detlab_over_opencv": fast["seconds_per_image_median"]
            / peer_fast["seconds_per_image_median"],
            "quality_time_mean_detlab_over_opencv": quality["seconds_per_image_mean"]
            / peer_quality["seconds_per_image_mean"],
        }
        entry["targets"] = {
            "fast_recall_0.5_at_2000": fast["recall"][f"0.5@{TOP}"] >= peer_fast["recall"][f"0.5@{TOP}"],
            "fast_recall_0.7_at_2000": fast["recall"][f"0.7@{TOP}"] >= peer_fast["recall"][f"0.7@{TOP}"],
            "fast_mabo": fast["mabo"] >= peer_fast["MABO"],
            "fast_time_at_most_2x": entry["ratios"]["fast_time_mean_detlab_over_opencv"] <= 2.0,
        }
        report["data_sets"][data_name] = entry
        plots = save_plots(
            {
                "detlab ss-fast": fast,
                "detlab ss-quality (subset)": quality,
                **{f"detlab {name}": entry["detlab"][name] for name in baselines},
            },
            out_dir,
            prefix=f"proposals_{data_name}",
        )

        rows = [peer_row("OpenCV fast", peer_fast), summary_row("detlab ss-fast", fast)]
        rows += [summary_row(f"detlab {name}", entry["detlab"][name]) for name in baselines]
        subset_rows = [
            peer_row("OpenCV quality", peer_quality),
            summary_row("detlab ss-quality", quality),
            summary_row("detlab ss-fast", entry["detlab"]["ss-fast (quality subset)"]),
            summary_row("detlab superpixels", entry["detlab"]["superpixels (quality subset)"]),
        ]
        ratios = entry["ratios"]
        lines += [
            "",
            f"## {data_name} test ({num_images} images)",
            "",
            *markdown_table(rows),
            "",
            f"Quality modes on the first {quality_images} images of the split:",
            "",
            *markdown_table(subset_rows),
            "",
            f"Time ratio detlab/OpenCV, fast: {ratios['fast_time_mean_detlab_over_opencv']:.2f} (mean), "
            f"{ratios['fast_time_median_detlab_over_opencv']:.2f} (median); quality: "
            f"{ratios['quality_time_mean_detlab_over_opencv']:.2f} (mean).  ",
            "Targets (detlab fast vs OpenCV fast): "
            + ", ".join(f"{key} {'met' if value else 'NOT met'}" for key, value in entry["targets"].items()),
            "",
            *[f"![{path.stem}]({path.name})" for path in plots],
        ]
    (out_dir / "proposals.json").write_text(json.dumps(report, indent=1))
    (out_dir / "proposals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
