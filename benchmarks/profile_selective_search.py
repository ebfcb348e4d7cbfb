"""Where Selective Search's time goes, stage by stage, one thread: detlab's ``ss-fast`` and
``ss-quality`` on the first test images of BCCD and raccoon, with scikit-image's segmentation
(what detlab used before its compiled one) timed on the same inputs for comparison.

Stages (per image, summed over the strategy's hierarchies): colour conversion; pixel codes
(colour and texture bins); the pixel graph (smoothing, edge weights, sorting; once per colour
space); segmentation (the union-find merge, once per ``k``); region description (sizes, boxes,
neighbours, histograms); hierarchical grouping (the Python heap loop); ranking and clean-up.

    PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/profile_selective_search.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import header_lines, stamp, test_split, write_results  # noqa: E402
from skimage.segmentation import felzenszwalb as skimage_felzenszwalb  # noqa: E402

from detlab.proposals.graph_segmentation import PixelGraph  # noqa: E402
from detlab.proposals.method import finish_boxes, image_to_array  # noqa: E402
from detlab.proposals.selective_search import (  # noqa: E402
    SEGMENTATION_SIGMA,
    STRATEGIES,
    convert_colour,
    describe_regions,
    group_regions,
    pixel_codes,
    rank_hierarchies,
)

STAGES = ("colour conversion", "pixel codes", "pixel graph", "segmentation", "region description",
          "grouping", "ranking and clean-up")  # fmt: skip


def profile_image(image: np.ndarray, strategy_name: str) -> tuple[dict, float]:
    """Seconds per stage of one image, and skimage's time for the same segmentations."""
    strategy = STRATEGIES[strategy_name]
    seconds = defaultdict(float)
    skimage_seconds = 0.0

    def timed(stage, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        seconds[stage] += time.perf_counter() - start
        return value

    hierarchies = []
    for space in strategy.colour_spaces:
        converted = timed("colour conversion", convert_colour, image, space)
        codes = timed("pixel codes", pixel_codes, converted)
        graph = timed("pixel graph", PixelGraph, converted, SEGMENTATION_SIGMA)
        for k in strategy.ks:
            labels = timed("segmentation", graph.segment, k, min_size=int(k))
            start = time.perf_counter()
            plane = converted[..., 0] if converted.shape[-1] == 1 else converted
            reference = skimage_felzenszwalb(
                plane,
                scale=k,
                sigma=SEGMENTATION_SIGMA,
                min_size=int(k),
                channel_axis=None if converted.shape[-1] == 1 else -1,
            )
            skimage_seconds += time.perf_counter() - start
            assert np.array_equal(reference, labels), "segmentations differ from skimage's"
            regions = timed("region description", describe_regions, labels, codes)
            for similarity in strategy.similarities:
                hierarchies.append(timed("grouping", group_regions, regions, similarity)[0])
    rng = np.random.default_rng(0)
    ranked = timed("ranking and clean-up", rank_hierarchies, hierarchies, rng)
    timed("ranking and clean-up", finish_boxes, ranked, None, image.shape[0], image.shape[1], 4.0, 2000)
    return dict(seconds), skimage_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="first N test images of each set")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {**stamp(), "images": args.images, "sets": {}}
    lines = [
        "# Where Selective Search's time goes",
        "",
        *header_lines(report),
        f"Mean seconds an image over the first {args.images} test images, one thread; each stage summed over "
        "the strategy's hierarchies. The last column times scikit-image's segmentation on the same inputs "
        "(what detlab ran before; labels checked identical), against detlab's pixel graph + segmentation.",
        "",
        "| set | strategy | " + " | ".join(STAGES) + " | total | skimage segmentation |",
        "|---|---|" + "---|" * (len(STAGES) + 2),
    ]
    for data_name in ("bccd", "raccoon"):
        dataset = test_split(data_name, args.images)
        images = [image_to_array(record.image_path) for record in dataset.records[: args.images]]
        profile_image(images[0], "single")  # compile (or load) the numba kernels first
        for strategy_name in ("fast", "quality"):
            totals, skimage_total = defaultdict(float), 0.0
            for image in images:
                seconds, skimage_seconds = profile_image(image, strategy_name)
                for stage, value in seconds.items():
                    totals[stage] += value / len(images)
                skimage_total += skimage_seconds / len(images)
            entry = {
                "stages": dict(totals),
                "total": sum(totals.values()),
                "skimage_segmentation": skimage_total,
            }
            report["sets"].setdefault(data_name, {})[strategy_name] = entry
            cells = [f"{totals[stage]:.3f} ({100 * totals[stage] / entry['total']:.0f}%)" for stage in STAGES]
            lines.append(
                f"| {data_name} | ss-{strategy_name} | "
                + " | ".join(cells)
                + f" | {entry['total']:.3f} | {skimage_total:.3f} |"
            )
            print(lines[-1], flush=True)
    write_results("proposals_profile", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
