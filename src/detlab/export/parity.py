"""How closely an exported model follows its checkpoint: the comparisons the export tests and
``benchmarks/bench_export.py`` make.

- Raw outputs: the exported graph and the same wrapper run by PyTorch on the same input tensor,
  within ``rtol`` / ``atol``. Coordinates are compared in units of the network input's longer side
  (pixels / S): float32's own spacing at 400 px is 3e-5 px, so an absolute 1e-5 only means
  something on that scale. Faster R-CNN's proposals may come out in another order where two have
  the same objectness (NMS keeps either first); rows are paired by their proposal before comparing.
- Final detections: matched one to one by class (the assignment of highest total IoU); a match is
  good with IoU > 0.99 and a score within 1e-3.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from scipy.optimize import linear_sum_assignment

from detlab.export import runtime
from detlab.models.contract import ExportPlan

COORDINATE_OUTPUTS = ("proposals", "boxes")
ROW_OUTPUTS = ("proposals", "proposal_image", "probabilities", "boxes")  # one row a proposal (Faster R-CNN)


def raw_outputs(plan: ExportPlan, session: runtime.OnnxPredictor, images) -> tuple[dict, dict, int]:
    """An image, or a list of images (one batch), through the runtime's pre-processing, then
    through the graph of ``plan`` (a model's :meth:`~detlab.models.contract.Detector.export_plan`)
    in PyTorch and through ``session``: ``(PyTorch's outputs, onnxruntime's, the input's longer
    side)``, numpy arrays by output name."""
    images = images if isinstance(images, list) else [images]
    arrays = [runtime.image_array(image) for image in images]
    inputs, _ = runtime.preprocess_batch(arrays, session.metadata["preprocess"])
    with torch.no_grad():
        expected = plan.graph(*[torch.from_numpy(inputs[name]) for name in plan.input_names])
    expected = expected if isinstance(expected, tuple) else (expected,)
    expected = {name: value.numpy() for name, value in zip(plan.output_names, expected)}
    return expected, session.run(inputs), max(inputs["images"].shape[-2:])


def raw_output_differences(
    expected: dict[str, np.ndarray],
    found: dict[str, np.ndarray],
    input_side: int,
    rtol: float = 1e-3,
    atol: float = 1e-5,
) -> dict:
    """``{"max_abs_diff", "within_tolerance", "unpaired_rows", "outputs": {name: max abs diff}}``;
    differences of coordinate outputs in units of ``input_side``."""
    found = dict(found)
    unpaired = 0
    if "proposals" in expected and found["proposals"].shape == expected["proposals"].shape:
        distance = np.abs(expected["proposals"][:, None] - found["proposals"][None]).max(-1)
        # a batch's images may share proposals: only rows of the same image pair
        distance += 1e6 * (expected["proposal_image"][:, None] != found["proposal_image"][None])
        rows, columns = linear_sum_assignment(distance)
        unpaired = int((distance[rows, columns] > 1e-2).sum())
        order = columns[np.argsort(rows)]
        found.update({name: found[name][order] for name in ROW_OUTPUTS})
    report = {"outputs": {}, "within_tolerance": unpaired == 0, "unpaired_rows": unpaired}
    for name, value in expected.items():
        if found[name].shape != value.shape:
            report["outputs"][name] = float("inf")
            report["within_tolerance"] = False
            continue
        scale = float(input_side) if name in COORDINATE_OUTPUTS else 1.0
        a, b = found[name] / scale, value / scale
        report["outputs"][name] = float(np.abs(a - b).max()) if value.size else 0.0
        report["within_tolerance"] &= bool(np.allclose(a, b, rtol=rtol, atol=atol))
    report["max_abs_diff"] = max(report["outputs"].values(), default=0.0)
    return report


def matched_detections(expected: dict, found: dict) -> dict:
    """``expected``: :class:`~detlab.engine.predict.Predictor` output (tensors); ``found``:
    :class:`~detlab.export.runtime.OnnxPredictor` output (numpy). ``{"expected", "found",
    "good" (matches with IoU > 0.99 and score difference < 1e-3), "least_iou",
    "largest_score_diff"}``."""
    report = {
        "expected": len(expected["boxes"]),
        "found": len(found["boxes"]),
        "good": 0,
        "least_iou": 1.0,
        "largest_score_diff": 0.0,
    }
    if not report["expected"] or not report["found"]:
        return report
    boxes = torch.from_numpy(found["boxes"])
    same_label = expected["labels"][:, None] == torch.from_numpy(found["labels"])[None]
    # a degenerate box (an untrained box head's zero-width guess) has no IoU: equal corners count as 1
    iou = torchvision.ops.box_iou(expected["boxes"], boxes).nan_to_num(0.0)
    equal = (expected["boxes"][:, None] - boxes[None]).abs().amax(-1) < 1e-2
    iou = (torch.maximum(iou, equal.float()) * same_label).numpy()
    rows, columns = linear_sum_assignment(-iou)
    score_difference = np.abs(expected["scores"].numpy()[rows] - found["scores"][columns])
    report["good"] = int(((iou[rows, columns] > 0.99) & (score_difference < 1e-3)).sum())
    report["least_iou"] = float(iou[rows, columns].min())
    report["largest_score_diff"] = float(score_difference.max())
    return report


def all_matched(report: dict) -> bool:
    return report["expected"] == report["found"] == report["good"]
