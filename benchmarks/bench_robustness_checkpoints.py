"""Benchmark (issue 38): the checkpoint and ONNX loaders' fuzz at full size, and the digest's cost.

The checks are those of ``tests/engine/test_checkpoint_fuzz.py`` and ``tests/export/test_onnx_fuzz.py``
(imported from there), run on ``--flips`` single flipped bits and ``--truncations`` truncations at
random places of each file instead of a few dozen: a faster_rcnn and a yolo checkpoint as a run
saves them (the methods' default sizes, weights and SGD momentum), in this version's format
(version 2, with the digest of its contents) and, for comparison, as version 1 files (no digest;
torch's zip layout and its older non-zip one), and their ONNX exports (format 2, with the digest
of the file's bytes; format 1 without). Each damaged file is loaded as ``detlab predict`` loads it
(read, verify, rebuild the model, load the weights; ``OnnxPredictor`` for ONNX).

Counted per file: inputs tried; ``detected`` (one ``BadInputError`` line naming the file);
``identical`` (loaded, the same contents as the undamaged file: the flip fell where no reader
looks); ``loaded changed`` (loaded other contents: only a file without a digest may); and
tracebacks (any other exception, or an error of several lines or naming no file). A checkpoint's
flips are also counted by the part of the zip file they fell in.

The digest's cost: saving (``torch.save`` to memory, then the atomic write with fsync) and loading
a faster_rcnn run checkpoint with and without it, interleaved, median of rounds.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_robustness_checkpoints.py
Writes benchmarks/results/robustness_checkpoints.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, header_lines, interleaved_ms, stamp, write_results  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "engine"))
sys.path.insert(0, str(REPO / "tests" / "export"))
import test_checkpoint_fuzz as checkpoint_fuzz  # noqa: E402
import test_onnx_fuzz as onnx_fuzz  # noqa: E402

from detlab.engine import checkpoint as checkpoints  # noqa: E402

KEPT_TRACEBACKS = 5
METHODS = ("faster_rcnn", "yolo")


def zip_regions(data: bytes) -> list[tuple[int, int, str]]:
    """``(start, end, part)`` of each entry's bytes in a torch zip file: ``pickle`` (data.pkl),
    ``tensors`` (the storages) or ``small records`` (version, byte order); the rest of the file is
    ``zip structure`` (headers, names, alignment padding, central directory)."""
    regions = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            offset = info.header_offset
            start = offset + 30 + int.from_bytes(data[offset + 26 : offset + 28], "little")
            start += int.from_bytes(data[offset + 28 : offset + 30], "little")
            part = (
                "pickle"
                if info.filename.endswith("data.pkl")
                else "tensors"
                if "/data/" in info.filename
                else "small records"
            )
            regions.append((start, start + info.file_size, part))
    return regions


def region_of(position: int, regions: list[tuple[int, int, str]] | None) -> str:
    if regions is None:
        return "(not a zip file)"
    return next((part for start, end, part in regions if start <= position < end), "zip structure")


def fuzz(check, data: bytes, flips: int, truncations: int, seed: int, regions=None) -> dict:
    """``flips`` single-bit flips and ``truncations`` cuts at random places of ``data``, each
    through ``check``; the counts, by kind (and for flips by zip part), and the first tracebacks."""
    generator = random.Random(seed)
    counts: dict[str, Counter] = {"flip": Counter(), "truncation": Counter()}
    by_region: Counter = Counter()
    kept: list[dict] = []
    started = time.perf_counter()
    inputs = [("flip", generator.randrange(len(data)), generator.randrange(8)) for _ in range(flips)]
    inputs += [("truncation", generator.randrange(len(data)), 0) for _ in range(truncations)]
    for kind, position, bit in inputs:
        damaged = checkpoint_fuzz.flipped(data, position, bit) if kind == "flip" else data[:position]
        try:
            outcome = check(damaged)
        except Exception as error:  # what the contract forbids: counted, kept, and the fuzz goes on
            outcome = "traceback"
            if len(kept) < KEPT_TRACEBACKS:
                kept.append(
                    {
                        "input": f"{kind} at byte {position}" + (f", bit {bit}" if kind == "flip" else ""),
                        "traceback": "".join(traceback.format_exception(error))[-2000:],
                    }
                )
        counts[kind][outcome] += 1
        if kind == "flip":
            by_region[f"{region_of(position, regions)}: {outcome}"] += 1
    return {
        "bytes": len(data),
        "seconds": round(time.perf_counter() - started, 1),
        **{kind: dict(sorted(found.items())) for kind, found in counts.items()},
        "flips_by_region": dict(sorted(by_region.items())),
        "kept_tracebacks": kept,
    }


def onnx_check(damaged: bytes) -> str:
    """:func:`onnx_fuzz.check`, its ``loaded`` counted as ``loaded changed``: every flip makes other
    bytes, which only a file without a digest (format 1) lets onnxruntime run."""
    outcome = onnx_fuzz.check(damaged)
    return "loaded changed" if outcome == "loaded" else outcome


def checkpoint_files(method: str) -> dict[str, bytes]:
    """The three forms of ``method``'s run checkpoint, by layout."""
    checkpoint = checkpoint_fuzz.checkpoint_of(method, [])
    return {layout: checkpoint_fuzz.file_bytes(checkpoint, layout) for layout in checkpoint_fuzz.LAYOUTS}


def onnx_files(method: str, folder: Path) -> dict[str, bytes]:
    data = onnx_fuzz.export_file(method, folder, []).read_bytes()
    return {"format2": data, "format1": onnx_fuzz.as_format_1(data)}


def digest_cost(method: str, folder: Path, rounds: int) -> dict:
    """Milliseconds to save and to load ``method``'s run checkpoint with the digest and without."""
    checkpoint = checkpoint_fuzz.checkpoint_of(method, [])
    plain = {"format": checkpoints.FORMAT, "version": 1, **checkpoint}
    with_digest, without = folder / "with_digest.pt", folder / "without.pt"
    checkpoints.write_atomically(checkpoints.serialize(plain), without)
    times = interleaved_ms(
        {
            "save_with_digest": lambda: checkpoints.save_checkpoint(checkpoint, with_digest),
            "save_without": lambda: checkpoints.write_atomically(checkpoints.serialize(plain), without),
            "load_with_digest": lambda: checkpoints.load_checkpoint(with_digest),
            "load_without": lambda: torch.load(without, weights_only=True),
            "digest_alone": lambda: checkpoints.content_digest(checkpoint),
        },
        repeats=3,
        rounds=rounds,
    )
    return {
        "method": method,
        "file_mb": round(with_digest.stat().st_size / 1e6, 1),
        "tensor_mb": round(
            sum(t.numel() * t.element_size() for t in checkpoint["model"].values()) / 1e6
            + sum(
                t.numel() * t.element_size()
                for state in checkpoint["optimizer"]["state"].values()
                for t in state.values()
                if isinstance(t, torch.Tensor)
            )
            / 1e6,
            1,
        ),
        **{name: value["ms"] for name, value in times.items()},
        "rounds": {name: value["ms_rounds"] for name, value in times.items()},
    }


def outcome_cells(counts: dict) -> str:
    tried = sum(counts.values())
    cells = [counts.get(key, 0) for key in ("detected", "identical", "loaded changed", "traceback")]
    return f"{tried} | " + " | ".join(str(cell) for cell in cells)


def markdown(report: dict) -> str:
    lines = [
        "# Checkpoint and ONNX loaders under fuzzing: damaged files detected, and the digest's cost",
        "",
        *header_lines(report),
        f"Each file took {report['flips']} single-bit flips and {report['truncations']} truncations at random "
        f"places (seed {report['seed']}), each loaded as `detlab predict` loads it. `detected`: one "
        "`BadInputError` line naming the file; `identical`: loaded the undamaged file's contents; `loaded "
        "changed`: loaded other weights or settings, silently; `traceback`: any other exception.",
        "",
        "| file | bytes | damage | tried | detected | identical | loaded changed | tracebacks |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["files"].items():
        for kind in ("flip", "truncation"):
            lines.append(f"| {name} | {result['bytes']:,} | {kind} | {outcome_cells(result[kind])} |")
    lines += [
        "",
        f"Tracebacks in all: **{report['tracebacks']}** of {report['inputs']:,} inputs. Silently changed loads of "
        f"files with a digest (checkpoint version 2, ONNX format 2): **{report['changed_with_digest']}**.",
        "",
        "## Where the flips fell (checkpoints in torch's zip layout)",
        "",
        "A checkpoint's bytes are mostly its tensors. Version 2 verifies what the file holds (the digest is of "
        "the loaded values), so a flip that changes a value is detected wherever it falls; a flip that loads "
        "identically fell in a part of the zip file torch's reader does not use: the timestamps and CRC-32 "
        "checksums of its headers, the local headers' copies of the sizes and flags, the alignment padding "
        "before each tensor's bytes (`tests/engine/test_checkpoint_fuzz.py` flips each of these). The same "
        "flips in a version 1 file load changed weights silently. An ONNX file's digest is of its bytes, so "
        "every flip is detected there.",
        "",
        "| file | part of the file: outcome | flips |",
        "|---|---|---:|",
    ]
    for name, result in report["files"].items():
        for key, count in result["flips_by_region"].items():
            if not key.startswith("(not a zip"):
                lines.append(f"| {name} | {key} | {count} |")
    cost = report["digest_cost"]
    lines += [
        "",
        f"## The digest's cost ({cost['method']} run checkpoint: {cost['file_mb']} MB, {cost['tensor_mb']} MB of "
        "weights and momentum)",
        "",
        "| | with the digest (ms) | without (ms) |",
        "|---|---:|---:|",
        f"| save (torch.save, atomic write, fsync) | {cost['save_with_digest']} | {cost['save_without']} |",
        f"| load (torch.load, verify, check fields) | {cost['load_with_digest']} | {cost['load_without']} |",
        f"| the digest alone | {cost['digest_alone']} | |",
        "",
    ]
    for name, result in report["files"].items():
        for kept in result["kept_tracebacks"]:
            lines += [f"Traceback ({name}, {kept['input']}):", "", "```", kept["traceback"], "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flips", type=int, default=300, help="single-bit flips a file")
    parser.add_argument("--truncations", type=int, default=100, help="truncations a file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost-rounds", type=int, default=7)
    parser.add_argument("--results-name", default="robustness_checkpoints")
    args = parser.parse_args()
    torch.set_num_threads(2)
    files: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="detlab-bench-") as temporary:
        for method in METHODS:
            for layout, data in checkpoint_files(method).items():
                digest = checkpoints.content_digest(torch.load(io.BytesIO(data), weights_only=True))
                regions = None if layout == "version1_legacy" else zip_regions(data)
                files[f"{method} checkpoint, {layout}"] = fuzz(
                    lambda damaged, digest=digest: checkpoint_fuzz.check(damaged, digest),
                    data,
                    args.flips,
                    args.truncations,
                    args.seed,
                    regions,
                )
                print(
                    f"{method} {layout}: {files[f'{method} checkpoint, {layout}']['seconds']} s", flush=True
                )
            for file_format, data in onnx_files(method, Path(temporary)).items():
                name = f"{method} ONNX, {file_format}"
                files[name] = fuzz(onnx_check, data, args.flips, args.truncations, args.seed)
                print(f"{name}: {files[name]['seconds']} s", flush=True)
        cost = digest_cost("faster_rcnn", Path(temporary), args.cost_rounds)
    outcomes = [counts for result in files.values() for counts in (result["flip"], result["truncation"])]
    report = {
        **stamp(),
        "flips": args.flips,
        "truncations": args.truncations,
        "seed": args.seed,
        "inputs": sum(sum(counts.values()) for counts in outcomes),
        "tracebacks": sum(counts.get("traceback", 0) for counts in outcomes),
        "changed_with_digest": sum(
            result[kind].get("loaded changed", 0)
            for name, result in files.items()
            if "version2" in name or "format2" in name
            for kind in ("flip", "truncation")
        ),
        "files": files,
        "digest_cost": cost,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 1 if report["tracebacks"] or report["changed_with_digest"] else 0


if __name__ == "__main__":
    sys.exit(main())
