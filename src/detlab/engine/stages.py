"""Recipes: how a method is trained, as a list of stages.

A recipe is a list whose items are either a :class:`Stage` (one :func:`detlab.engine.fit` call,
with the parts the stage trains made trainable and the rest frozen) or a :class:`Step` (one
explicit piece of training that is not gradient descent: a new head initialised, error statistics
measured, SVMs fitted). Each method says what its recipes are with a ``recipe(name)`` method on its
model (``detlab.models``); :func:`detlab.engine.run.train_stages` runs the list. A model without
that method has the one recipe ``joint``: everything trained together in one stage.

Every item but the last keeps its checkpoint in a sub-folder of the run named after it; the last
one is the run folder itself, so ``RUN/best`` and ``RUN/last`` are the trained model. A finished
item leaves a ``stage_done`` mark; resuming a run skips finished items (loading their weights) and
continues the interrupted one exactly.

This module imports nothing from the models, so a model module can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

DEFAULT_RECIPE = "joint"


@dataclass(frozen=True)
class Stage:
    """One ``fit`` call. ``prepare(model)`` sets what requires gradients and which losses the
    model computes (called before the optimiser is built); ``budget``: this stage's share of the
    run's budget (time, steps or epochs); ``train_changes``: ``TrainConfig`` fields changed for
    this stage only (e.g. ``{"optimizer": "sgd", "lr": 0.01}``); ``evaluate``: whether it
    evaluates on the validation split and picks ``best.pt``."""

    name: str
    prepare: Callable[[nn.Module], None] | None = None
    budget: float = 1.0
    train_changes: dict = field(default_factory=dict)
    evaluate: bool = True


@dataclass(frozen=True)
class Step:
    """One non-gradient step: ``run(model, train_dataset)`` changes the model's weights or buffers
    in place and returns a dict of numbers worth logging (or ``None``). It runs on every process of
    a distributed run alike (it must be deterministic), then rank 0 saves a checkpoint."""

    name: str
    run: Callable[[nn.Module, object], dict | None]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """``requires_grad`` of every parameter of ``module``. A BatchNorm layer whose parameters are
    all frozen also keeps its running statistics (the engine runs it in eval mode)."""
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def recipe_of(model: nn.Module, name: str) -> list[Stage | Step]:
    """The recipe ``name`` of ``model`` (``""``: the model's default, the first of its
    ``RECIPES``); a model without recipes has only ``joint``."""
    names = tuple(getattr(model, "RECIPES", (DEFAULT_RECIPE,)))
    name = name or names[0]
    if name not in names:
        raise ValueError(f"train.recipe={name!r} is not a recipe of {type(model).__name__}; choose one of {names}")
    if not hasattr(model, "recipe"):
        return [Stage(name)]
    stages = model.recipe(name)
    fractions = sum(stage.budget for stage in stages if isinstance(stage, Stage))
    assert abs(fractions - 1.0) < 1e-6, f"the stages of recipe {name!r} share {fractions} of the budget, not 1"
    return stages
