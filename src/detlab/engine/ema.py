"""An exponential moving average of a model's weights (``train.ema_decay``).

Every optimiser step moves each averaged tensor towards the trained one:
``average += (1 - d) * (weight - average)`` with ``d = ema_decay * (1 - exp(-updates /
ema_ramp_steps))``, so early on (when the weights move fast) the average follows closely and later
it smooths over about ``1 / (1 - ema_decay)`` steps. Buffers that are not floating point (BatchNorm's
step count) are copied. When a run averages, evaluation, ``best.pt``/``last.pt``'s ``"model"`` and
the model :func:`detlab.engine.fit` leaves behind are the average; checkpoints keep the trained
weights as ``"training_model"`` (and the update count as ``"ema_updates"``) so a resumed run
continues both exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from detlab.config import TrainConfig


class WeightAverage:
    """The average of ``model``'s weights (a copy of ``model``, kept in eval mode)."""

    def __init__(self, model: nn.Module, decay: float, ramp_steps: int = 2000):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in (0, 1) to average (0 turns it off), got {decay}")
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay, self.ramp_steps, self.updates = decay, max(1, ramp_steps), 0
        self._paired: tuple | None = None

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.ramp_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model``'s current weights (call after every optimiser step)."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged, current, copied, sources = self._pairs(model)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for value, source in zip(copied, sources):
            value.copy_(source)

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """The averaged tensors and ``model``'s, floating point (lerped) and not (copied), by
        name; built once per model (optimisers and load_state_dict change the weights in place)."""
        if self._paired is None or self._paired[0] is not model:
            current = model.state_dict(keep_vars=True)  # the tensors themselves, not views of their data
            floats: tuple[list, list] = ([], [])
            others: tuple[list, list] = ([], [])
            for name, value in self.model.state_dict(keep_vars=True).items():
                group = floats if value.is_floating_point() else others
                group[0].append(value)
                group[1].append(current[name])
            self._paired = (model, *floats, *others)
        return self._paired[1:]

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema_updates": self.updates}

    def load(self, weights: dict, updates: int) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(updates)


def run_average(model: torch.nn.Module, config: TrainConfig, resumed: dict | None) -> WeightAverage | None:
    """The weights' moving average when the run keeps one (``train.ema_decay``), resumed as saved."""
    if config.ema_decay <= 0:
        return None
    average = WeightAverage(model, config.ema_decay, config.ema_ramp_steps)
    if resumed is not None and "ema_updates" in resumed:
        average.load(resumed["model"], resumed["ema_updates"])
    return average
