"""Training as three plain functions: :func:`fit` runs :func:`train_one_epoch` and :func:`evaluate`.

They work on any model that obeys the detector contract (:mod:`detlab.models.contract`): in
training mode ``model(images, targets) -> {"loss_<name>": scalar}``, in eval mode
``model(images) -> [{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": int64 Tensor[K]}]``,
scored by the evaluator ``model.make_evaluator(classes)`` gives. Images are ``float32 Tensor[3,
H, W]`` in [0, 1]; boxes absolute ``(x1, y1, x2, y2)``.

What :func:`fit` writes to the run folder (rank 0 only): ``config.yaml`` (when given the resolved
run config), ``metrics.jsonl`` and ``curves.png`` (:mod:`detlab.engine.metrics_log`), ``last.pt``
after every epoch and on interruption, ``best.pt`` whenever the evaluation metric improves
(:mod:`detlab.engine.checkpoint`). The parts: the budget (:mod:`~detlab.engine.budget`), the
checkpoints (:mod:`~detlab.engine.checkpoint`), mixed precision (:mod:`~detlab.engine.precision`),
evaluation shared between processes (:mod:`~detlab.engine.evaluation`), signals
(:mod:`~detlab.engine.signals`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from detlab.config import TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine import distributed, step
from detlab.engine.budget import Budget
from detlab.engine.distributed import Context, barrier, unwrap_model
from detlab.engine.ema import run_average
from detlab.engine.evaluation import evaluate_across_processes, pick_best_metric, predictions
from detlab.engine.metrics_log import CURVES_NAME, LossWindow, MetricsLog, open_run_log, plot_curves
from detlab.engine.optimization import LearningRateSchedule, build_optimizer
from detlab.engine.options import FitOptions, RunHeader
from detlab.engine.precision import loss_scaler, training_autocast
from detlab.engine.sampling import TrainingData, resolve_device, training_data
from detlab.engine.signals import StopRequest
from detlab.engine.state import FitResult, TrainingState
from detlab.engine.step import Optimisation
from detlab.models.contract import Detector, Evaluator
from detlab.progress import progress_bar


@dataclass
class Supervisor:
    """What decides when training stops and what records it: the ``budget``, the signal ``stop``
    request, the pause step, the metrics ``log`` (rank 0) and the ``checkpointer``."""

    budget: Budget
    stop: StopRequest
    stop_at_step: int | None
    log: MetricsLog | None
    checkpointer: checkpoints.Checkpointer


def train_one_epoch(
    model: torch.nn.Module,
    data_loader: DataLoader,
    training: Optimisation,
    state: TrainingState,
    config: TrainConfig,
    context: Context,
    supervisor: Supervisor,
) -> str:
    """Train on the rest of the current epoch; update ``state`` (and the weights' average) after
    every step. The training set (when it :class:`~detlab.engine.sampling.HearsProgress`) and the
    model hear the share of the budget spent before the epoch's first step and after each step
    (loader worker processes, with ``data.num_workers`` > 0, at the start of each epoch only), on
    every rank alike, as the share is shared.

    Returns why it stopped: ``epoch_end``, ``max_steps``, ``time_budget``, ``signal`` or ``pause``.
    Raises :class:`NonFiniteLossError` (on every rank at once) when the loss is NaN or infinite.
    """
    model.train()
    step.keep_frozen_modules_fixed(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    progress = progress_bar(
        total=state.batch_in_epoch + len(data_loader),
        initial=state.batch_in_epoch,
        desc=f"epoch {state.epoch + 1}",
        disable=not context.is_main,
        leave=False,
    )
    window, reason = LossWindow(), "epoch_end"
    tell_progress(
        data_loader, model, supervisor.budget.fraction(state)
    )  # before the loader starts its workers
    last_tick = (
        time.perf_counter()
    )  # training time counts loading and augmenting the data, all but evaluation
    for images, targets in data_loader:
        images, targets = distributed.move_to_device(images, targets, context.device)
        learning_rate = training.schedule.apply(training.optimizer, state.schedule_step, state.elapsed_s)
        with training_autocast(context.device, config, training.scaler):
            losses = model(images, targets)
        names = sorted(losses)
        loss = sum(losses[name] for name in names)
        loss_values = torch.stack([loss.detach().float()] + [losses[name].detach().float() for name in names])
        step.backward(loss, training)
        # A step waits for the device once, after the backward pass is queued, for one small
        # all-reduce of flags; the losses stay on the device until a logging step.
        now = time.perf_counter()
        local_elapsed, last_tick = state.elapsed_s + (now - last_tick), now
        finite, stop_flag, elapsed = step.share_step_flags(
            loss_values, supervisor.stop, local_elapsed, context
        )
        if not finite:  # every rank alike: the flag is shared
            step.check_finite(distributed.average_across_processes(loss_values, context).cpu(), names, state)
        step.optimizer_step(training, parameters, config)
        if training.average is not None:
            training.average.update(unwrap_model(model))
        step.advance(state, config, context, elapsed)
        tell_progress(data_loader, model, supervisor.budget.fraction(state))  # for the next step
        window.add(["loss"] + names, loss_values, len(images) * context.world_size)
        progress.update(1)
        if state.step % max(config.log_every, 1) == 0 or state.step == 1:  # on every rank: an all-reduce
            record = window.record(state, learning_rate, context)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}", lr=f"{learning_rate:.2e}"
            )
            if supervisor.log is not None:
                supervisor.log.write(record)
            window = LossWindow()
        reason = stop_reason(state, supervisor, stop_flag)
        if reason != "epoch_end":
            break
    progress.close()
    return reason


def evaluate(
    model: torch.nn.Module,
    data_loader,
    evaluator: Evaluator,
    device: torch.device | str = "auto",
    amp: bool = True,
):
    """Run ``model`` in eval mode on ``device`` (``auto``: the GPU when there is one; the model is
    moved there) over ``data_loader`` and return ``evaluator.compute()``. On a GPU the forward
    passes run under float16 autocast unless ``amp`` is off (``train.amp``); on a CPU in float32.
    Predictions reach ``evaluator.update(predictions, targets)`` on the CPU, as float32."""
    device = resolve_device(device)
    model.to(device)
    for outputs, targets in predictions(
        model, progress_bar(data_loader, desc="evaluate", leave=False), device, amp
    ):
        evaluator.update(outputs, targets)
    return evaluator.compute()


def fit(
    model: Detector,
    train_dataset: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    val_dataset: Dataset | None = None,
    header: RunHeader | None = None,
    resume: str | Path | None = None,
    options: FitOptions | None = None,
) -> FitResult:
    """Train ``model`` on ``train_dataset`` per ``config``; evaluate, log and checkpoint in ``run_dir``.

    Samples are re-seeded per sample (:class:`~detlab.engine.sampling.SeededSamples`). With
    ``val_dataset`` the model's evaluator scores it every ``config.eval_every`` epochs and at the
    end. ``resume``: a checkpoint (or run folder) to continue exactly (a run whose budget is spent
    trains nothing: ``already_finished``). Stops at the budget, SIGINT/SIGTERM or
    ``options.stop_at_step``. An error after training started first saves ``last.pt``, then propagates.
    """
    options, header, run_dir = options or FitOptions(), header or RunHeader(), Path(run_dir)
    context = options.context or distributed.init_distributed(config.device, config.dist_timeout_s)
    model.to(context.device)
    training = Optimisation(build_optimizer(model, config), loss_scaler(config, context.device))
    resumed = checkpoints.load_resume_point(resume, run_dir, model, training, context)
    state = TrainingState.starting(resumed, config.batch_size, context.world_size)
    budget = Budget.of(config, len(train_dataset), state.start_world_size)
    if resumed is None:
        # each rank its own dropout; the data are seeded apart
        checkpoints.seed_model_randomness(config.seed + context.rank)
    elif budget.spent(state):  # nothing to train; the model holds what was saved (the average, if kept)
        model.load_state_dict(resumed["model"])
        return checkpoints.already_finished(run_dir, resumed, state)
    data = training_data(train_dataset, val_dataset, config, context, options, header.classes)
    training.schedule = LearningRateSchedule.from_config(config, budget)
    log = open_run_log(run_dir, header.run_config, state.step if resumed else None, context)
    if log is not None and resumed is None and options.data_report:
        log.write({"kind": "data", "step": 0, **options.data_report})
    # last, after everything that may draw numbers
    checkpoints.restore_random_state(resumed, state, config, context)
    training.average = run_average(model, config, resumed)
    model.use_sync_batchnorm(context.world_size, context.device)
    train_model = distributed.wrap_model(model, context)
    checkpointer = checkpoints.Checkpointer(run_dir, context, state, header.fields(config), resumed)
    with StopRequest() as stop:
        supervisor = Supervisor(budget, stop, options.stop_at_step, log, checkpointer)
        try:
            status = train_until_done(train_model, data, training, state, config, context, supervisor)
        except Exception as error:
            checkpointer.save_after_error(model, training, error)
            raise
    if log is not None:
        plot_curves(log.records(), run_dir / CURVES_NAME)
    if training.average is not None:  # the model left behind is what was saved
        model.load_state_dict(training.average.model.state_dict())
    barrier(context)
    return checkpointer.result(status, stop.signal_name)


def train_until_done(
    train_model: torch.nn.Module,
    data: TrainingData,
    training: Optimisation,
    state: TrainingState,
    config: TrainConfig,
    context: Context,
    supervisor: Supervisor,
) -> str:
    """Epochs until the budget, a signal or the pause step; evaluate and save after each epoch
    (every ``config.eval_every``) and at the end. Returns the run's status."""
    model, checkpointer = unwrap_model(train_model), supervisor.checkpointer
    reason = "epoch_end"
    while supervisor.budget.more_epochs(state):
        data.sampler.set_epoch(state.epoch, skip=state.images_in_epoch)
        data.seeded.set_epoch(state.epoch)
        reason = "epoch_end"
        if len(data.sampler) > 0:
            reason = train_one_epoch(train_model, data.loader, training, state, config, context, supervisor)
        if reason != "epoch_end":
            break
        state.epoch += 1
        state.batch_in_epoch = state.images_in_epoch = 0
        checkpointer.save(model, training, include_best=False)  # the epoch is safe before any evaluation
        if config.eval_every > 0 and state.epoch % config.eval_every == 0:
            checkpointer.save(
                model,
                training,
                include_best=validate(model, data, training, state, config, context, supervisor),
            )
        if distributed.any_process(
            supervisor.stop.signal_name is not None, context
        ):  # a signal during the evaluation
            return "interrupted"
    if reason in ("signal", "pause"):
        checkpointer.save(model, training, include_best=False)
        return "interrupted" if reason == "signal" else "paused"
    if checkpointer.evaluated_at_step != state.step:
        checkpointer.save(
            model, training, include_best=validate(model, data, training, state, config, context, supervisor)
        )
    elif checkpointer.saved_at_step != state.step:
        checkpointer.save(model, training, include_best=False)
    return "finished"


def validate(
    model, data: TrainingData, training: Optimisation, state, config, context, supervisor: Supervisor
) -> bool:
    """Evaluate on the validation set (every rank its shard, scored on rank 0; the weights'
    average when the run keeps one), log the result; True when it is the best so far."""
    improved = False
    supervisor.checkpointer.evaluated_at_step = state.step
    if data.validation is not None:
        evaluated = training.average.model if training.average is not None else model
        result = evaluate_across_processes(evaluated, data.validation, data.classes, context, config.amp)
        supervisor.checkpointer.metrics = result
        _, value = pick_best_metric(result, data.best_metric)
        if value is not None and (state.best_metric is None or value > state.best_metric):
            state.best_metric, state.best_epoch, improved = value, state.epoch, True
        if supervisor.log is not None:
            supervisor.log.write({"kind": "eval", "epoch": state.epoch, "step": state.step, **result})
            plot_curves(supervisor.log.records(), supervisor.checkpointer.run_dir / CURVES_NAME)
    barrier(context)
    return improved


def tell_progress(data_loader: DataLoader, model: torch.nn.Module, fraction: float) -> None:
    """The share of the budget spent, to the training set and to the model."""
    data_loader.dataset.set_progress(fraction)
    unwrap_model(model).set_progress(fraction)


def stop_reason(state: TrainingState, supervisor: Supervisor, stop_flag: bool) -> str:
    """Why training stops after this step (``epoch_end``: it does not)."""
    if stop_flag:
        return "signal"
    if supervisor.stop_at_step is not None and state.step >= supervisor.stop_at_step:
        return "pause"
    return supervisor.budget.stop_reason(state) or "epoch_end"
