"""What every benchmark records: the machine, the command that ran, and the results written as
JSON and Markdown under ``benchmarks/results/``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO / "src") not in sys.path:  # the benchmarks run from a checkout, installed or not
    sys.path.insert(0, str(REPO / "src"))

# The data sets the detector benchmarks train on (``detlab train``'s ``data`` section): BCCD
# and raccoon (train on trainval, test on test), the built-in synthetic shapes (600 images), and the 2,000-image
# synthetic set ``make demo`` trains on (its train split; test on its test split); none has an up
# and a down.
DATA = {
    "bccd": {"spec": f"voc:{REPO.parent / 'shared' / 'data' / 'bccd'}", "train_split": "trainval", "val_split": "",
             "test_split": "test", "vertical_flip": True},
    "synthetic": {"spec": "synthetic", "root": "data/synthetic", "synthetic_images": 600, "train_split": "trainval",
                  "val_split": "", "test_split": "test", "vertical_flip": True, "rotate90": True},
    "raccoon": {"spec": f"voc:{REPO.parent / 'shared' / 'data' / 'raccoon'}", "train_split": "trainval",
                "val_split": "", "test_split": "test"},
    "demo": {"spec": "synthetic", "root": "data/synthetic-2000", "synthetic_images": 2000, "train_split": "train",
             "val_split": "", "test_split": "test", "vertical_flip": True, "rotate90": True},
}  # fmt: skip


def load_split(name: str, split: str):
    """Split ``split`` of ``DATA[name]``."""
    from detlab.data.loading import load_dataset

    data = DATA[name]
    return load_dataset(
        data["spec"], split, root=data.get("root"), num_synthetic=data.get("synthetic_images", 600)
    )


def test_split(name: str, images: int = 0):
    """The test split of ``DATA[name]`` (its first ``images`` only, when > 0)."""
    dataset = load_split(name, DATA[name]["test_split"])
    return dataset.subset(range(images)) if images else dataset


def checkpoints_parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that reads trained checkpoints: ``--data``, ``--checkpoints``,
    ``--threads``, ``--results-name``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=tuple(DATA), default="bccd")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="run folders or checkpoint files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-name", required=True)
    return parser


def machine() -> dict:
    """This machine as a results file records it. ``cpu_capability`` (the widest vector
    instructions torch uses: AVX2, AVX512, ...) and ``native_bf16`` (oneDNN has bfloat16 kernels:
    AVX512-BF16 or AMX) tell CPUs apart whose speed differs by several times for the same
    training run, so that runs of different machines are not read as one."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def machine_description(info: dict) -> str:
    """A :func:`machine` record in words (older records lack the CPU's capability and are written
    without it)."""
    cpu = ""
    if "cpu_capability" in info:
        cpu = f", {info['cpu_capability']}, {'native' if info['native_bf16'] else 'no native'} bfloat16"
    threads = f" ({info['torch_threads']} threads)" if "torch_threads" in info else ""
    return f"{info['platform']}, {info['cpu_count']} CPUs{cpu}, torch {info['torch']}{threads}"


def machine_line(info: dict) -> str:
    """The ``Machine: ...`` line of a results file."""
    return f"Machine: {machine_description(info)}"


def command(prefix: str = "PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python") -> str:
    """The command line of this run, as it is typed from the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(REPO)
    return f"{prefix} {script} {' '.join(sys.argv[1:])}".strip()


def stamp() -> dict:
    """``command``, ``date`` (UTC) and ``machine`` of this run."""
    return {
        "command": command(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }


def header_lines(report: dict) -> list[str]:
    """The Markdown lines naming a report's command, date and machine."""
    return [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        machine_line(report["machine"]),
        "",
    ]


def write_results(name: str, report: dict, markdown: str) -> None:
    """``benchmarks/results/<name>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


def in_turn(names: list, round_index: int) -> list:
    """``names`` in the order of one round of an interleaved benchmark: rotated by the round's
    index, so a drift of the machine falls on every variant alike."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def interleaved_ms(functions: dict[str, Callable[[], object]], repeats: int, rounds: int) -> dict[str, dict]:
    """Milliseconds a call of each function: after one warm-up call each, ``rounds`` rounds of
    ``repeats`` calls each, the functions in turn (:func:`in_turn`). ``{name: {"ms": median of the
    rounds, "ms_rounds": each round}}``."""
    for function in functions.values():  # warm-up
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(rounds):
        for name in in_turn(list(functions), round_index):
            start = time.perf_counter()
            for _ in range(repeats):
                functions[name]()
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {
        name: {"ms": round(statistics.median(values), 3), "ms_rounds": [round(v, 3) for v in values]}
        for name, values in times.items()
    }


@torch.no_grad()
def score(predict, dataset) -> dict:
    """``predict(index, image) -> detections`` on every image of ``dataset``, one at a time: the
    median time an image and the VOC07 11-point mAP@0.5, COCO AP50 and AP and per-class AP@0.5 of
    what it found (scored as ``detlab compare`` scores)."""
    from detlab.comparison import TableScores

    scores, seconds = TableScores(dataset.classes), []
    for index in range(len(dataset)):
        image, target = dataset[index]
        started = time.perf_counter()
        output = predict(index, image)
        seconds.append(time.perf_counter() - started)
        scores.update(output, target)
    found = scores.compute()
    return {
        "s_per_image": round(statistics.median(seconds), 4),
        **{key: round(value, 4) for key, value in found.items() if key != "per_class_AP50_voc07"},
        "per_class_AP50_voc07": {name: round(ap, 4) for name, ap in found["per_class_AP50_voc07"].items()},
    }
