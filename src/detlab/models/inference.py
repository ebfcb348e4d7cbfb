"""Inference-only rewrites of a trained model that keep its outputs (up to float rounding)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into
    that convolution (in eval mode BatchNorm is a fixed per-channel scale and shift, which the
    convolution's weights and bias can absorb), in place; the BatchNorm becomes ``nn.Identity``.
    Saves a pass over every feature map at test time. Only for a model that will not train again
    (its state dict changes shape). Returns the number of folded pairs."""
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
                folded += 1
    return folded
