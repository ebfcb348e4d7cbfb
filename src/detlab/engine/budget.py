"""How much a run trains, and how much of that it has spent.

A run is bounded by ``train.max_steps`` optimiser steps or ``train.time_budget_s`` seconds of
training when either is set (they replace ``train.epochs``), else by ``train.epochs``. The share
spent, ``max(step / horizon, elapsed / time_budget)``, is one number that the learning-rate
schedule anneals over and that the training set and the model hear (mosaics stop, coarse-to-fine
training ends); :func:`share_spent` is its one definition.

Steps are counted on the schedule's position (``TrainingState.schedule_step``: steps of the run's
first number of processes), so a run resumed on another number of processes spends its budget as
the images it has seen say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detlab.config import TrainConfig
from detlab.engine.state import TrainingState


def share_spent(step: float, elapsed_s: float, horizon_steps: int, time_budget_s: float) -> float:
    """The share of a budget spent after ``step`` steps and ``elapsed_s`` seconds, in [0, 1]: the
    larger of ``step / horizon_steps`` and ``elapsed_s / time_budget_s`` (either 0: no such bound)."""
    shares = [0.0]
    if horizon_steps > 0:
        shares.append(step / horizon_steps)
    if time_budget_s > 0:
        shares.append(elapsed_s / time_budget_s)
    return min(1.0, max(shares))


@dataclass(frozen=True)
class Budget:
    """A run's budget: ``epochs`` unless ``max_steps`` or ``time_budget_s`` is set.
    ``horizon_steps``: the steps the whole budget spans (``max_steps``, or ``epochs`` epochs of the
    run's first number of processes; 0 when only time bounds it)."""

    epochs: int
    max_steps: int = 0
    time_budget_s: float = 0.0
    horizon_steps: int = 0

    @classmethod
    def of(cls, config: TrainConfig, dataset_size: int, world_size: int = 1) -> Budget:
        """``config``'s budget for a training set of ``dataset_size`` images on ``world_size``
        processes (the run's first number)."""
        steps_per_epoch = math.ceil(math.ceil(dataset_size / world_size) / config.batch_size)
        by_steps = config.max_steps > 0 or config.time_budget_s > 0
        horizon = (
            config.max_steps if config.max_steps > 0 else 0 if by_steps else config.epochs * steps_per_epoch
        )
        return cls(config.epochs, config.max_steps, config.time_budget_s, horizon)

    @property
    def by_steps(self) -> bool:
        """A step or time budget, which replaces the epoch count."""
        return self.max_steps > 0 or self.time_budget_s > 0

    def fraction(self, state: TrainingState) -> float:
        """The share of the budget spent at ``state`` (:func:`share_spent`)."""
        return share_spent(state.schedule_step, state.elapsed_s, self.horizon_steps, self.time_budget_s)

    def steps_spent(self, state: TrainingState) -> bool:
        return self.max_steps > 0 and state.schedule_step >= self.max_steps - 1e-9

    def time_spent(self, state: TrainingState) -> bool:
        return self.time_budget_s > 0 and state.elapsed_s >= self.time_budget_s

    def spent(self, state: TrainingState) -> bool:
        """Whether a run at ``state`` has nothing left to train."""
        if self.by_steps:
            return self.steps_spent(state) or self.time_spent(state)
        return state.epoch >= self.epochs

    def more_epochs(self, state: TrainingState) -> bool:
        """Whether another epoch may start (a step or time budget is checked after every step)."""
        return self.by_steps or state.epoch < self.epochs

    def stop_reason(self, state: TrainingState) -> str | None:
        """``max_steps`` or ``time_budget`` when the budget ends after this step, else ``None``."""
        if self.steps_spent(state):
            return "max_steps"
        if self.time_spent(state):
            return "time_budget"
        return None
