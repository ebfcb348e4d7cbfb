"""Optimisers and the learning-rate schedule.

The schedule is a function of the share of the budget spent (:func:`detlab.engine.budget.share_spent`:
the larger of ``step / total_steps`` and ``elapsed / time_budget_s``): a run bounded by a
wall-clock budget (the demo, the benchmarks) anneals over that budget, one bounded by steps or
epochs over those. Its whole state is the step and the elapsed time, which checkpoints already hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detlab.config import TrainConfig
from detlab.engine.budget import Budget, share_spent

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
WARMUP_START_FACTOR = 0.001  # linear warm-up from lr/1000 (Goyal et al. 2017, sec. 2.2)
STEP_DECAY = 0.1  # each milestone divides the rate by 10 (Fast R-CNN sec. 4, Faster R-CNN sec. 4)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters.

    Biases and normalisation weights (1-D tensors) get no weight decay: shrinking them toward zero
    does not regularise the function, it only shifts activations.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adamw":
        # The fused kernel updates all tensors in one pass instead of looping over them, which on a
        # CPU is most of the optimiser's time (docs/engine.md has the measurement).
        devices = {parameter.device.type for group in groups for parameter in group["params"]}
        fused = devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")


@dataclass
class LearningRateSchedule:
    """``lr(step, elapsed) = base_lr * warmup(step) * decay(progress)``."""

    base_lr: float
    kind: str = "cosine"
    total_steps: int = 0  # 0: no step horizon
    time_budget_s: float = 0.0  # 0: no time horizon
    warmup_steps: int = 0
    milestones: tuple[float, ...] = (0.67, 0.89)

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.kind!r}")

    @classmethod
    def from_config(cls, config: TrainConfig, budget: Budget) -> LearningRateSchedule:
        """The schedule of ``config`` over ``budget`` (its step horizon and time budget)."""
        return cls(
            base_lr=config.lr,
            kind=config.schedule,
            total_steps=budget.horizon_steps,
            time_budget_s=budget.time_budget_s,
            warmup_steps=config.warmup_steps,
            milestones=tuple(config.step_milestones),
        )

    def progress(self, step: float, elapsed_s: float) -> float:
        return share_spent(step, elapsed_s, self.total_steps, self.time_budget_s)

    def factor(self, step: int, elapsed_s: float = 0.0) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            warmup = WARMUP_START_FACTOR * (1 - alpha) + alpha
        progress = self.progress(step, elapsed_s)
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "step":
            decay = STEP_DECAY ** sum(progress >= milestone for milestone in self.milestones)
        else:
            decay = 1.0
        return warmup * decay

    def apply(self, optimizer: torch.optim.Optimizer, step: int, elapsed_s: float = 0.0) -> float:
        """Set every parameter group's rate for ``step``; returns the rate."""
        learning_rate = self.base_lr * self.factor(step, elapsed_s)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        return learning_rate

    def state_dict(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "kind": self.kind,
            "total_steps": self.total_steps,
            "time_budget_s": self.time_budget_s,
            "warmup_steps": self.warmup_steps,
            "milestones": list(self.milestones),
        }
