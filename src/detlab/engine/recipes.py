"""Running a method's recipe: every :class:`~detlab.models.contract.Stage` through
:func:`detlab.engine.fit`, every :class:`~detlab.models.contract.Step` as the one non-gradient
step it is.

Every item but the last keeps its checkpoint in a sub-folder of the run named after it; the last
one is the run folder itself, so ``RUN/best`` and ``RUN/last`` are the trained model. A finished
item leaves a ``stage_done`` mark; resuming a run skips finished items (loading their weights) and
continues the interrupted one exactly. A step is seeded from the run's seed and its position in
the recipe, so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, SequentialSampler

from detlab import config as config_io
from detlab.config import RunConfig, TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import Context, barrier, init_distributed, read_on_main
from detlab.engine.evaluation import plain_metrics
from detlab.engine.metrics_log import MetricsLog
from detlab.engine.options import FitOptions, RunHeader
from detlab.engine.sampling import make_loader
from detlab.engine.state import FitResult, TrainingState
from detlab.engine.train import evaluate, fit
from detlab.models.contract import Detector, Stage, Step

STAGE_DONE = "stage_done"


@dataclasses.dataclass
class RunData:
    """A run's data: the training set (with its augmentations), the validation set (or ``None``),
    the class names and what checking the images found (the first record of the run's log)."""

    train: Dataset
    validation: Dataset | None
    classes: list[str]
    report: dict | None = None


def recipe_of(model: Detector, name: str) -> list[Stage | Step]:
    """The recipe ``name`` of ``model`` (``""``: the model's default, the first of its ``recipes``)."""
    name = name or model.recipes[0]
    if name not in model.recipes:
        raise ValueError(
            f"train.recipe={name!r} is not a recipe of {type(model).__name__}; choose one of {model.recipes}"
        )
    stages = model.recipe(name)
    fractions = sum(stage.budget for stage in stages if isinstance(stage, Stage))
    assert abs(fractions - 1.0) < 1e-6, (
        f"the stages of recipe {name!r} share {fractions} of the budget, not 1"
    )
    return stages


def stage_train_config(train: TrainConfig, stage: Stage) -> TrainConfig:
    """``train`` with the stage's share of the budget (time, steps or epochs; at least one step or
    epoch) and the stage's own changes."""
    if stage.budget == 1.0 and not stage.train_changes:
        return train
    share = dataclasses.replace(
        train,
        time_budget_s=train.time_budget_s * stage.budget,
        max_steps=math.ceil(train.max_steps * stage.budget - 1e-9) if train.max_steps else 0,
        epochs=max(1, math.ceil(train.epochs * stage.budget - 1e-9)),
    )
    return config_io.merge(share, stage.train_changes, "train")


def train_stages(
    model: Detector,
    stages: list[Stage | Step],
    run_config: RunConfig,
    data: RunData,
    resume: str | Path | None = None,
    context: Context | None = None,
    stop_at_step: int | None = None,
) -> FitResult:
    """Run ``stages`` in order: every item but the last in ``RUN/<its name>/``, the last in the run
    folder. A finished item (``stage_done`` mark) is skipped, its weights loaded from its
    ``last.pt``; the interrupted one continues exactly. Returns the result of the last stage run
    (a paused or interrupted stage ends the recipe there, for the resumed run to continue).
    ``stop_at_step``: pause the stage in progress after that many of its steps."""
    context = context or init_distributed(run_config.train.device, run_config.train.dist_timeout_s)
    run_dir = Path(run_config.train.out_dir)
    header = RunHeader(run_config.model_name, list(data.classes), config_io.to_dict(run_config))
    result = None
    for index, item in enumerate(stages):
        last = index == len(stages) - 1
        folder = run_dir if last else run_dir / item.name
        # what the run folder says, as rank 0 sees it (the other machines may not share its disk)
        done_weights = read_on_main(functools.partial(stage_done_weights, folder), context)
        if done_weights is not None:
            model.load_state_dict(done_weights)
            if last:  # a recipe ending in a step, finished: nothing to do
                return read_on_main(functools.partial(finished_run, run_dir, result), context)
            continue
        if isinstance(item, Step):
            run_step(
                item,
                model,
                data.train,
                folder,
                header.fields(run_config.train),
                run_config.train.seed + index,
                context,
            )
            if last:
                return evaluate_final_step(model, run_config, data, result, context)
            continue
        if item.prepare is not None:
            item.prepare(model)
        resume_stage = resume is not None and read_on_main(
            functools.partial(Path.is_file, folder / checkpoints.LAST_NAME), context
        )
        options = FitOptions(
            context=context,
            num_workers=run_config.data.num_workers,
            stop_at_step=stop_at_step,
            data_report=data.report if index == 0 else None,
        )
        result = fit(
            model,
            data.train,
            stage_train_config(run_config.train, item),
            folder,
            val_dataset=data.validation if item.evaluate else None,
            header=header,
            resume=folder if resume_stage else None,
            options=options,
        )
        if not result.finished:
            return result
        if not last and context.is_main:
            (folder / STAGE_DONE).write_text(f"{result.state.step} steps, {result.state.elapsed_s:.1f} s\n")
        barrier(context)
    return result


def stage_done_weights(folder: Path) -> dict | None:
    """The weights of a finished stage (its ``stage_done`` mark is there), else ``None``."""
    if not (folder / STAGE_DONE).is_file():
        return None
    return checkpoints.load_checkpoint(folder / checkpoints.LAST_NAME)["model"]


def finished_run(run_dir: Path, result: FitResult | None) -> FitResult:
    """The result of resuming a run whose recipe ended in a step that is done: nothing trained."""
    stored = checkpoints.load_checkpoint(run_dir / checkpoints.LAST_NAME)
    state = result.state if result is not None else TrainingState(**stored["progress"])
    return checkpoints.already_finished(run_dir, stored, state)


def evaluate_final_step(
    model: Detector, run_config: RunConfig, data: RunData, result: FitResult | None, context: Context
) -> FitResult:
    """After a recipe's last step (R-CNN's SVMs and regressors): evaluate the model on the
    validation split, keep the metrics in ``last.pt`` (and ``best.pt``) and the run log."""
    run_dir = Path(run_config.train.out_dir)
    state = result.state if result is not None else TrainingState()
    metrics: dict = {}
    if context.is_main and data.validation is not None:
        loader = make_loader(data.validation, run_config.train.batch_size, SequentialSampler(data.validation))
        metrics = plain_metrics(
            evaluate(model, loader, model.make_evaluator(data.classes), context.device, run_config.train.amp)
        )
        checkpoint = checkpoints.load_checkpoint(run_dir / checkpoints.LAST_NAME)
        checkpoint["metrics"] = metrics
        checkpoints.save_checkpoint(checkpoint, run_dir / checkpoints.LAST_NAME)
        checkpoints.save_checkpoint(checkpoint, run_dir / checkpoints.BEST_NAME)
        # resume_step: keep what the log holds (a step's folder has none yet), append this record
        MetricsLog(run_dir, resume_step=state.step).write(
            {"kind": "eval", "epoch": state.epoch, "step": state.step, **metrics}
        )
    barrier(context)
    return FitResult(
        run_dir,
        "finished",
        state,
        run_dir / checkpoints.LAST_NAME,
        checkpoints.existing(run_dir / checkpoints.BEST_NAME),
        metrics,
    )


def run_step(
    step: Step, model: Detector, train_dataset, folder: Path, header: dict, seed: int, context: Context
) -> None:
    """One non-gradient step of a recipe, on every process alike (seeded, so a resumed run draws
    the same numbers), then its checkpoint and ``stage_done`` mark (rank 0)."""
    torch.manual_seed(seed)
    outcome = step.run(model, train_dataset) or {}
    if context.is_main:
        print(f"{step.name}: {outcome}" if outcome else f"{step.name}: done", flush=True)
        checkpoints.save_checkpoint(
            {
                **header,
                "model": model.state_dict(),
                "optimizer": None,
                "schedule": None,
                "scaler": None,
                "progress": dataclasses.asdict(TrainingState()),
                "rng": checkpoints.capture_rng_state(),
                "metrics": dict(outcome),
            },
            folder / checkpoints.LAST_NAME,
        )
        (folder / STAGE_DONE).write_text("done\n")
    barrier(context)
