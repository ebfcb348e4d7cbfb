"""Folding BatchNorm into the convolutions keeps what a trained model computes."""

import pytest
import torch

from detlab.engine.run import build_model, resolve_run_config
from detlab.models.inference import fold_batchnorm


def yolo_raw(model, images):
    """The raw outputs (an untrained detector's NMS would turn float noise into other boxes)."""
    batch, _, _, _ = model.batcher(images)
    _, logits, boxes, _, _ = model.raw_outputs(batch)
    return {"scores": logits.sigmoid(), "boxes": boxes}


def detections(model, images):
    return model(images)[0]


@pytest.mark.parametrize(
    ("method", "overrides", "outputs"),
    [
        ("yolo", ["model.input_size=160"], yolo_raw),
        ("faster_rcnn", ["model.min_size=128", "model.max_size=160"], detections),
    ],
)
def test_folded_batchnorm_computes_the_same(method, overrides, outputs):
    torch.manual_seed(0)
    model = build_model(resolve_run_config(method, overrides=overrides), 3)
    with torch.no_grad():  # BatchNorm statistics as training leaves them, not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
    model.eval()
    images = [torch.rand(3, 120, 150), torch.rand(3, 97, 64)]
    with torch.no_grad():
        expected = outputs(model, images)
        batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        folded = fold_batchnorm(model)
        found = outputs(model, images)
    assert (
        folded > 10
        and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == batchnorms - folded
    )
    assert len(found["boxes"]) == len(expected["boxes"]) > 0
    torch.testing.assert_close(found["scores"], expected["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(found["boxes"], expected["boxes"], rtol=1e-4, atol=1e-3)
