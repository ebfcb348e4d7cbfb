"""Fuzzing the ONNX loader (issue 38): truncated exports and single flipped bits.

A damaged ``.onnx`` file given to ``detlab.load`` / ``detlab predict --model`` ends in one
:class:`~detlab.errors.BadInputError` whose one-line message names the file: the file's metadata
holds the SHA-256 of its bytes, checked before onnxruntime parses them, so a changed byte anywhere
(weights, graph, metadata, the digest itself) is refused and none loads. Files exported before the
digest (format 1) load unverified: for them the contract is only "no traceback".

``make test`` runs a few dozen examples each, derandomized; ``benchmarks/bench_robustness_checkpoints.py``
runs :func:`check` on many more and records the counts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from fuzzing import damaged_inputs, fuzz_settings
from hypothesis import given

from detlab.errors import BadInputError
from detlab.export import runtime

SMALL = {"yolo": ["model.backbone_width=8", "model.neck_channels=[16,32,64]", "model.input_size=128"]}


def export_file(method: str, folder: Path, overrides: list[str]) -> Path:
    """An untrained ``method`` exported to ``folder/<method>.onnx`` (from a checkpoint beside it)."""
    import torch

    from detlab import config as config_io
    from detlab.engine.checkpoint import save_checkpoint
    from detlab.engine.run import build_model, resolve_run_config
    from detlab.export.onnx_export import export_onnx

    torch.manual_seed(0)
    run_config = resolve_run_config(method, overrides=overrides)
    model = build_model(run_config, 3)
    checkpoint = save_checkpoint(
        {"config": config_io.to_dict(run_config), "classes": ["a", "b", "c"], "model": model.state_dict()},
        folder / f"{method}.pt",
    )
    export_onnx(checkpoint, folder / f"{method}.onnx")
    return folder / f"{method}.onnx"


def as_format_1(data: bytes) -> bytes:
    """``data`` (an export) as detlab wrote it before files held their digest."""
    import onnx

    model = onnx.load_from_string(data)
    metadata = json.loads(model.metadata_props[0].value)
    metadata.pop(runtime.DIGEST_FIELD)
    metadata["format_version"] = 1
    model.metadata_props[0].value = json.dumps(metadata)
    return model.SerializeToString()


def check(data: bytes) -> str:
    """Load ``data`` as an ``.onnx`` file under the contract; the outcome: ``detected`` (one
    :class:`BadInputError` line naming the file) or ``loaded`` (only a file without a digest may).
    Any other exception, or an error message of several lines or naming no file, propagates."""
    with tempfile.TemporaryDirectory(prefix="detlab-fuzz-") as temporary:
        path = Path(temporary) / "damaged.onnx"
        path.write_bytes(data)
        try:
            runtime.OnnxPredictor(path)
        except BadInputError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(f"{path}: "), message[:500]
            return "detected"
        return "loaded"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, bytes]:
    """format -> the bytes of a small exported yolo."""
    data = export_file("yolo", tmp_path_factory.mktemp("onnx-fuzz"), SMALL["yolo"]).read_bytes()
    return {"format2": data, "format1": as_format_1(data)}


@pytest.mark.parametrize("file_format", ["format2", "format1"])
def test_a_damaged_onnx_file_is_refused_in_one_line(exported, file_format):
    data = exported[file_format]
    assert check(data) == "loaded"  # undamaged, both load

    @fuzz_settings(25)
    @given(damaged=damaged_inputs(data))
    def never_a_traceback(damaged):
        kind, damaged_bytes = damaged
        outcome = check(damaged_bytes)
        if file_format == "format2":
            assert outcome == "detected", kind

    never_a_traceback()


def test_damage_to_the_digest_itself_or_its_name_is_detected(exported):
    data = exported["format2"]
    start = data.index(runtime.DIGEST_FIELD.encode())
    for position in (start, start + len(runtime.DIGEST_FIELD) + 2, start + len(runtime.DIGEST_FIELD) + 10):
        damaged = data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]
        assert check(damaged) == "detected"
