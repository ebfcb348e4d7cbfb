"""Mixed precision: float16 with loss scaling on CUDA (``train.amp``); bfloat16 on CPUs that have
native bfloat16 kernels (``train.amp_cpu_bf16``); float32 everywhere else."""

from __future__ import annotations

import functools
import warnings

import torch

from detlab.config import TrainConfig


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels for this CPU (AVX512-BF16 or AMX); elsewhere
    bfloat16 is emulated and slower than float32, so ``amp_cpu_bf16`` is ignored, with a warning
    (once a process)."""
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not supported:
        warnings.warn(
            "train.amp_cpu_bf16 is set but this CPU has no native bfloat16; training in float32", stacklevel=2
        )
    return supported


def loss_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """float16's loss scaling, enabled for ``train.amp`` on CUDA (a disabled scaler elsewhere)."""
    return torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")


def training_autocast(device: torch.device, config: TrainConfig, scaler: torch.amp.GradScaler):
    """The training forward's autocast: float16 with loss scaling on CUDA (``train.amp``); on a
    CPU, bfloat16 when asked for (``train.amp_cpu_bf16``) and the CPU has native bfloat16."""
    cpu_bf16 = device.type == "cpu" and config.amp_cpu_bf16 and cpu_has_fast_bf16()
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if cpu_bf16 else None, enabled=scaler.is_enabled() or cpu_bf16
    )


def inference_autocast(device: torch.device, amp: bool = True):
    """float16 autocast for evaluating and predicting on a GPU (unless ``amp``, ``train.amp``, is
    off); none on a CPU, whose numbers stay float32."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda" and amp)


def full_precision(value):
    """A float16 or bfloat16 tensor (an output under autocast) as float32; anything else as it is."""
    if torch.is_tensor(value) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value
