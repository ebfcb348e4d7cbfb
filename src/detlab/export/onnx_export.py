"""A checkpoint -> an ``.onnx`` file that :mod:`detlab.export.runtime` runs without torch.

What goes into the graph is the network from its input tensors to its raw outputs, including
whatever in between is tensor work (for a two-stage detector: anchors, the RPN's top-k and NMS,
RoIAlign, the box decoding). What stays outside, in the runtime's numpy: reading and resizing the
image, and the final score threshold, class-wise NMS and top-k, whose settings the file's metadata
holds with the class names. What to trace is the model's own
:meth:`~detlab.models.contract.Detector.export_plan`; a model that cannot be one graph (its first
stage runs outside a network, or its detections come from Python loops) says why by raising
:class:`~detlab.models.contract.NotExportable`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from detlab.engine.checkpoint import load_checkpoint
from detlab.engine.predict import model_from_stored
from detlab.export.runtime import (
    DIGEST_FIELD,
    DIGEST_PLACEHOLDER,
    FORMAT_VERSION,
    METADATA_KEY,
    digest_entry,
    file_digest,
)
from detlab.models.contract import NotExportable
from detlab.version import __version__

OPSET = 17  # RoIAlign with aligned=True needs 16


def export_onnx(checkpoint: str | Path, out: str | Path, overrides: list[str] | None = None) -> dict:
    """Write the model of ``checkpoint`` (any form :func:`detlab.load` takes) to ``out`` as ONNX with
    detlab's metadata; ``overrides``: ``model.FIELD=VALUE`` test-time settings stored with it.
    The file is written under a temporary name beside ``out`` and renamed into place, so an
    interrupted export never leaves a truncated model. Returns the metadata."""
    stored = load_checkpoint(checkpoint)
    model, classes, run_config = model_from_stored(stored, checkpoint, overrides)
    model = model.float().eval()
    try:
        plan = model.export_plan()
    except NotExportable as error:
        raise ValueError(f"{run_config.model_name} cannot be exported to ONNX: {error}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about every Python number taken from a tensor; the parity test is the check
            warnings.simplefilter("ignore")
            torch.onnx.export(
                plan.graph,
                plan.example,
                temporary,
                dynamo=False,
                opset_version=OPSET,
                input_names=list(plan.input_names),
                output_names=list(plan.output_names),
                dynamic_axes=plan.dynamic_axes,
            )
        metadata = {
            "format_version": FORMAT_VERSION,
            "detlab_version": __version__,
            "method": run_config.model_name,
            "kind": plan.layout,
            "classes": classes,
            "preprocess": plan.preprocess,
            "postprocess": plan.postprocess,
            "inputs": list(plan.input_names),
            "outputs": list(plan.output_names),
            "checkpoint": str(checkpoint),
            # the best-F1 score threshold of the run's last evaluation (None when it recorded none)
            "best_confidence": (stored.get("metrics") or {}).get("best_f1_confidence"),
        }
        write_metadata(Path(temporary), metadata)
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return metadata


def write_metadata(path: Path, metadata: dict) -> None:
    """Store ``metadata`` (JSON) in the ONNX file ``path`` under the key the runtime reads, with the
    SHA-256 of the file's bytes (:func:`detlab.export.runtime.file_digest`): computed with a
    placeholder of the digest's length in its place, which the digest then replaces, so the bytes
    the runtime hashes are the bytes hashed here."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**metadata, DIGEST_FIELD: DIGEST_PLACEHOLDER})
    data = model.SerializeToString()
    placeholder = digest_entry(DIGEST_PLACEHOLDER)
    assert data.count(placeholder) == 1, "the digest's placeholder must stand once in the file"
    digest = file_digest(data, DIGEST_PLACEHOLDER)
    path.write_bytes(data.replace(placeholder, digest_entry(digest)))
