"""Fuzzing the checkpoint loader (issue 38): truncated files and single flipped bits.

A damaged checkpoint given to ``detlab predict``/``eval``/``serve`` (what
:func:`detlab.engine.predict.model_from_checkpoint` does: read, verify, rebuild the model, load its
weights) either ends in one :class:`~detlab.engine.checkpoint.CheckpointError` whose one-line
message names the file, or loads contents identical to the undamaged file's (a flipped bit in a
part of the zip that no reader uses: a timestamp, a checksum torch does not check). Never another
exception, and never different weights: a version 2 file carries the digest of its contents.

Files of version 1 (no digest) cannot be verified: a flip in their tensors' bytes loads changed
weights. For them the contract is only "no traceback"; the fuzz counts how many load changed.
Both of torch's layouts are fuzzed for them (the zip file, and the older, non-zip one that the
issue's ``struct.error``/``KeyError`` came from).

``make test`` runs a few dozen examples each, derandomized; ``benchmarks/bench_robustness_checkpoints.py``
runs :func:`check` on many more and records the counts.
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from fuzzing import damaged_inputs, flipped, fuzz_settings
from hypothesis import given

from detlab import config as config_io
from detlab.engine import checkpoint as checkpoints
from detlab.engine.predict import model_from_checkpoint
from detlab.engine.run import build_model, resolve_run_config
from detlab.errors import BadInputError

CLASSES = ["cell", "ring", "blob"]
SMALL = {  # small enough to rebuild dozens of times a test
    "faster_rcnn": ["model.backbone_width=8", "model.fpn_channels=16", "model.representation_size=32"],
    "yolo": ["model.backbone_width=8", "model.neck_channels=[16,32,64]", "model.input_size=128"],
}
LAYOUTS = ("version2", "version1_zip", "version1_legacy")  # legacy: torch's non-zip layout


def checkpoint_of(method: str, overrides: list[str]) -> dict:
    """An untrained ``method``'s checkpoint as a run saves it: weights, optimiser state, progress."""
    torch.manual_seed(0)
    run_config = resolve_run_config(method, overrides=overrides)
    model = build_model(run_config, len(CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for parameter in model.parameters():  # a momentum buffer for every parameter, as after a step
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return {
        "model_name": method,
        "classes": CLASSES,
        "config": config_io.to_dict(run_config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": {"epoch": 1, "step": 10, "elapsed_s": 1.5, "best_metric": None},
        "metrics": {"AP50": 0.25},
    }


def file_bytes(checkpoint: dict, layout: str) -> bytes:
    """``checkpoint`` as ``layout`` holds it: version 2 (with its digest) or version 1, zip or not."""
    if layout == "version2":
        return checkpoints.serialize(checkpoints.stamped(checkpoint))
    buffer = io.BytesIO()
    legacy = {"format": checkpoints.FORMAT, "version": 1, **checkpoint}
    torch.save(legacy, buffer, _use_new_zipfile_serialization=layout == "version1_zip")
    return buffer.getvalue()


def check(data: bytes, original_digest: str, load=model_from_checkpoint) -> str:
    """Load ``data`` as a checkpoint file under the contract; the outcome: ``detected`` (one
    :class:`BadInputError` line naming the file), ``identical`` (loaded, the same contents) or
    ``loaded changed`` (loaded other contents: only a file without a digest may). Any other
    exception, or an error message of several lines or naming no file, propagates."""
    with tempfile.TemporaryDirectory(prefix="detlab-fuzz-") as temporary:
        path = Path(temporary) / "damaged.pt"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about some damaged layouts; the error tells
                load(path)
                contents = checkpoints.load_checkpoint(path)
        except BadInputError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(f"{path}: "), message[:500]
            return "detected"
        return "identical" if checkpoints.content_digest(contents) == original_digest else "loaded changed"


@functools.cache
def fuzzed_file(method: str, layout: str) -> tuple[bytes, str]:
    """``(file bytes, content digest of what they hold)``, made once a session."""
    data = file_bytes(checkpoint_of(method, SMALL[method]), layout)
    return data, checkpoints.content_digest(torch.load(io.BytesIO(data), weights_only=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", list(SMALL))
def test_a_damaged_checkpoint_is_refused_in_one_line_or_loads_unchanged(method, layout):
    data, digest = fuzzed_file(method, layout)

    @fuzz_settings(40)
    @given(damaged=damaged_inputs(data))
    def never_a_traceback(damaged):
        kind, damaged_bytes = damaged
        outcome = check(damaged_bytes, digest)
        if layout == "version2" or kind == "truncation":
            assert outcome in ("detected", "identical"), (kind, outcome)

    never_a_traceback()


def tensor_records(data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` in ``data`` (a zip checkpoint) of every tensor's bytes, largest first."""
    records = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                name_length, extra_length = struct.unpack(
                    "<HH", data[info.header_offset + 26 : info.header_offset + 30]
                )
                records.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    return sorted(records, key=lambda record: -record[1])


def test_a_flip_in_the_tensors_of_a_version_2_file_is_detected_and_would_load_unseen_without_the_digest():
    """Flips where most bytes are, in the tensors' records: each is detected, and the check is not
    vacuous (the same flips in a version 1 file load changed weights, as the issue found)."""
    for layout, expected in (("version2", "detected"), ("version1_zip", "loaded changed")):
        data, digest = fuzzed_file("yolo", layout)
        for offset, size in tensor_records(data)[:4]:
            assert check(flipped(data, offset + size // 2, 3), digest) == expected, layout


def test_the_digest_is_of_the_contents_not_of_torchs_layout():
    """The same checkpoint saved in torch's other layout verifies: the digest does not depend on
    the bytes torch chose."""
    stamped = checkpoints.stamped(checkpoint_of("yolo", SMALL["yolo"]))
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(temporary) / "other_layout.pt"
        torch.save(stamped, path, _use_new_zipfile_serialization=False)
        assert checkpoints.load_checkpoint(path)[checkpoints.DIGEST_KEY] == stamped[checkpoints.DIGEST_KEY]


def test_a_flip_where_torchs_reader_does_not_look_loads_the_same_contents():
    """What the fuzz counts as ``identical``: fields of the zip file that torch's reader does not
    use (a local header's timestamp, CRC-32, copies of the sizes, the alignment padding before a
    tensor's bytes; the central directory's timestamp and checksum). The file loads as written."""
    data, digest = fuzzed_file("yolo", "version2")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = next(info for info in archive.infolist() if "/data/" in info.filename).header_offset
    name_length, extra_length = struct.unpack("<HH", data[local + 26 : local + 30])
    central = data.rfind(b"PK\x01\x02")
    unused = [
        local + 10,
        local + 12,
        local + 14,
        local + 18,
        local + 22,
        local + 30 + name_length + extra_length - 1,
    ]
    for position in [*unused, central + 12, central + 16]:
        assert check(flipped(data, position, 0), digest) == "identical", position
