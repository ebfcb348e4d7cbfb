"""Training as three plain functions: :func:`fit` runs :func:`train_one_epoch` and :func:`evaluate`.

They work on any model that obeys the detector contract (ARCHITECTURE.md): in training mode
``model(images, targets) -> {"loss_<name>": scalar}``, in eval mode
``model(images) -> [{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": int64 Tensor[K]}]``.
Images are ``float32 Tensor[3, H, W]`` in [0, 1]; boxes absolute ``(x1, y1, x2, y2)``.

What :func:`fit` writes to the run folder (rank 0 only): ``config.yaml`` (when given the resolved
run config), ``metrics.jsonl`` and ``curves.png`` (:mod:`detlab.engine.metrics_log`), ``last.pt``
after every epoch and on interruption, ``best.pt`` whenever the evaluation metric improves
(:mod:`detlab.engine.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from tqdm import tqdm

from detlab import config as config_io
from detlab.config import TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import (
    Context,
    average_across_processes,
    barrier,
    broadcast_object,
    gather_to_main,
    init_distributed,
    read_on_main,
    unwrap_model,
    wrap_model,
)
from detlab.engine.ema import WeightAverage
from detlab.engine.metrics_log import CURVES_NAME, MetricsLog, plot_curves
from detlab.engine.optimization import LearningRateSchedule, build_optimizer
from detlab.engine.sampling import (
    ResumableSampler,
    SeededSamples,
    ShardSampler,
    make_loader,
    make_training_loader,
    resolve_device,
)
from detlab.models.backbones import sync_batchnorm

# Metrics tried in order to pick the best checkpoint when the caller names none.
BEST_METRIC_CANDIDATES = ("AP50", "mAP50", "map50", "AP", "mAP", "map", "localization_top1", "pck@0.2")


class Evaluator(Protocol):
    """What :func:`evaluate` needs (``detlab.eval.COCOEvaluator`` / ``VOCEvaluator`` obey it)."""

    def update(self, predictions: list[dict], targets: list[dict]) -> None: ...

    def compute(self): ...  # a dict of floats, or an object whose summary() is one


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before the bad step changed any weight."""


@dataclass
class TrainingState:
    """Where training is. ``epoch`` is the epoch in progress (0-based), ``batch_in_epoch`` the
    batches of it this process trained on and ``images_in_epoch`` the places of the epoch's order
    used by all processes together, so a resumed run starts exactly where this one stopped, also
    on another number of processes (``world_size``). ``schedule_step`` is where the learning-rate
    schedule is, counted in steps of the run's first ``start_world_size`` processes: a step of
    ``W`` processes advances it by ``W / start_world_size``, so the schedule follows the images
    seen whatever the number of processes (with an unchanged number it is ``step``)."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    images_in_epoch: int = 0
    world_size: int = 1
    start_world_size: int = 1
    schedule_step: float = 0.0
    elapsed_s: float = 0.0
    best_metric: float | None = None
    best_epoch: int = -1


@dataclass
class FitResult:
    """``status``: ``finished``, ``already_finished`` (a resumed run whose budget was already
    spent: nothing trained), ``interrupted`` (SIGINT/SIGTERM; resume it) or ``paused``."""

    run_dir: Path
    status: str
    state: TrainingState
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)
    signal_name: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("finished", "already_finished")


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after each step.

    The step in flight finishes, a checkpoint is written, then the run ends; a second SIGINT
    interrupts at once. Handlers are only installed from the main thread (Python's rule).
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, number, frame):
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name
        print(
            f"\n{self.signal_name} received: finishing this step and saving a checkpoint "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def move_to_device(images: list, targets: list | None, device: torch.device) -> tuple[list, list | None]:
    images = [image.to(device, non_blocking=True) for image in images]
    if targets is not None:
        targets = [
            {key: value.to(device) if torch.is_tensor(value) else value for key, value in target.items()}
            for target in targets
        ]
    return images, targets


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


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    schedule: LearningRateSchedule,
    state: TrainingState,
    config: TrainConfig,
    context: Context,
    scaler: torch.amp.GradScaler | None = None,
    log: MetricsLog | None = None,
    stop: StopRequest | None = None,
    stop_at_step: int | None = None,
    checkpoint_path: Path | None = None,
    average: WeightAverage | None = None,
) -> str:
    """Train on the rest of the current epoch; update ``state`` in place after every step (and
    ``average``, the weights' moving average, when the run keeps one). A training set with
    ``set_progress(fraction)`` (:class:`detlab.data.mosaic.MosaicDataset`) hears the share of the
    budget spent before the epoch's first step and after each step (loader worker processes, with
    ``data.num_workers`` > 0, hear it at the start of each epoch only); so does a model with
    ``set_progress`` (:class:`detlab.models.yolo.YOLO`'s coarse-to-fine input size), on every rank
    alike, as the budget's share is shared.

    Returns why it stopped: ``epoch_end``, ``max_steps``, ``time_budget``, ``signal`` or ``pause``.
    Raises :class:`NonFiniteLossError` (on every rank at once) when the loss is NaN or infinite.
    """
    model.train()
    keep_frozen_modules_fixed(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(
        total=state.batch_in_epoch + len(data_loader),
        initial=state.batch_in_epoch,
        desc=f"epoch {state.epoch + 1}",
        disable=not context.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    window = LossWindow()
    reason = "epoch_end"
    listeners = [getattr(getattr(data_loader.dataset, "dataset", None), "set_progress", None),
                 getattr(unwrap_model(model), "set_progress", None)]  # fmt: skip
    listeners = [listener for listener in listeners if listener is not None]

    def tell_progress() -> None:
        fraction = budget_fraction(state, config, progress.total)
        for listener in listeners:
            listener(fraction)

    tell_progress()  # before the loader starts (worker processes copy the data set then)
    # Training time counts loading and augmenting the data too, everything but evaluation.
    last_tick = time.perf_counter()
    for images, targets in data_loader:
        images, targets = move_to_device(images, targets, context.device)
        learning_rate = schedule.apply(optimizer, state.schedule_step, state.elapsed_s)
        with autocast_for(context.device, config, scaler):
            losses = model(images, targets)
        names = sorted(losses)
        loss = sum(losses[name] for name in names)
        loss_values = torch.stack([loss.detach().float()] + [losses[name].detach().float() for name in names])
        backward(loss, optimizer, scaler)
        # A step waits for the device once, after the backward pass is queued (not between forward
        # and backward), for one small all-reduce of flags; the losses stay on the device until a
        # logging step.
        now = time.perf_counter()
        local_elapsed, last_tick = state.elapsed_s + (now - last_tick), now
        finite, stop_flag, elapsed = share_step_flags(loss_values, stop, local_elapsed, context)
        if not finite:  # every rank alike: the flag is shared
            check_finite(average_across_processes(loss_values, context).cpu(), names, state, checkpoint_path)
        optimizer_step(optimizer, parameters, config, scaler)
        if average is not None:
            average.update(unwrap_model(model))
        state.step += 1
        state.batch_in_epoch += 1
        state.images_in_epoch += config.batch_size * context.world_size  # places of the epoch's order
        state.schedule_step += context.world_size / state.start_world_size
        state.elapsed_s = elapsed  # the same on every rank: the schedule and the budget use it
        tell_progress()  # for the samples (and the model's training schedule) of the next step
        window.add(["loss"] + names, loss_values, len(images) * context.world_size)
        progress.update(1)
        if state.step % max(config.log_every, 1) == 0 or state.step == 1:  # on every rank: an all-reduce
            record = window.record(state, learning_rate, context)
            progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}",
                                 lr=f"{learning_rate:.2e}")  # fmt: skip
            if log is not None:
                log.write(record)
            window = LossWindow()
        reason = stop_reason(state, config, stop_flag, stop_at_step)
        if reason != "epoch_end":
            break
    progress.close()
    return reason


def keep_frozen_modules_fixed(model: torch.nn.Module) -> None:
    """Run every sub-module whose parameters are all frozen in eval mode: a stage that freezes part
    of a network (``detlab.engine.stages.set_trainable``) keeps that part a fixed function, its
    BatchNorm statistics included and its dropout off."""
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()


def autocast_for(device: torch.device, config: TrainConfig, scaler: torch.amp.GradScaler | None):
    """Mixed precision: float16 with loss scaling on CUDA (``train.amp``); on a CPU, bfloat16
    autocast when asked for (``train.amp_cpu_bf16``) and the CPU has native bfloat16."""
    use_amp = scaler is not None and scaler.is_enabled()
    cpu_bf16 = device.type == "cpu" and config.amp_cpu_bf16 and cpu_has_fast_bf16()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cpu_bf16 else None, enabled=use_amp or cpu_bf16)


def inference_autocast(device: torch.device, amp: bool = True):
    """float16 autocast for evaluating and predicting on a GPU (unless ``amp``, ``train.amp``, is
    off); none on a CPU, whose numbers stay float32."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda" and amp)


def full_precision(value):
    """A float16 or bfloat16 tensor (an output under autocast) as float32; anything else as it is."""
    if torch.is_tensor(value) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def share_step_flags(
    loss_values: torch.Tensor, stop: StopRequest | None, elapsed_s: float, context: Context
) -> tuple[bool, bool, float]:
    """``(the losses are finite on every process, a stop was requested on one, mean elapsed
    seconds)``: one small all-reduce, so every rank takes the same decisions (stopping or raising
    alone would deadlock the others). ``loss_values``: this process's ``Tensor[1 + T]``."""
    stop_flag = 1.0 if stop is not None and stop.signal_name is not None else 0.0
    non_finite = (~torch.isfinite(loss_values)).any().float().reshape(1)
    shared = torch.cat([non_finite, torch.tensor([stop_flag, elapsed_s], device=loss_values.device)])
    shared = average_across_processes(shared, context).cpu()
    return not bool(shared[0] > 0), bool(shared[1] > 0), float(shared[2])


def check_finite(loss_values: torch.Tensor, names: list[str], state: TrainingState, checkpoint: Path | None) -> None:
    """Raise :class:`NonFiniteLossError` before a NaN or infinite loss changes any weight
    (:func:`fit` then saves the weights of the last good step to ``checkpoint``)."""
    if torch.isfinite(loss_values).all():
        return
    terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(["loss"] + names, loss_values.tolist()))
    raise NonFiniteLossError(
        f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1}): "
        f"{terms}; training stopped before this step changed the weights, which are saved in "
        f"{checkpoint or 'last.pt'}. Lower train.lr, raise train.warmup_steps or check the data, then resume "
        "with --resume RUN_DIR."
    )


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """The gradients of ``loss`` (scaled by ``scaler`` when given) in place of the last step's;
    no weight changes yet (:func:`optimizer_step` does that)."""
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optimizer, parameters, config: TrainConfig, scaler) -> None:
    """After :func:`backward`: gradient clipping (``train.clip_grad_norm``), one optimiser step."""
    if scaler is not None:
        if config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    if config.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
    optimizer.step()


class LossWindow:
    """Loss terms averaged over the steps since the last log record, and the images per second.
    The sums stay on the device until :meth:`record`: no copy to the host every step."""

    def __init__(self):
        self.totals: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, names: list[str], values: torch.Tensor, images: int) -> None:
        """One step: ``values`` (``Tensor[len(names)]``, this process's) and the images of all processes."""
        for name, value in zip(names, values.double()):
            self.totals[name] = self.totals[name] + value if name in self.totals else value
        self.steps += 1
        self.images += images

    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def record(self, state: TrainingState, learning_rate: float, context: Context) -> dict:
        """The log record: each term's mean over the window and the processes (one all-reduce, so
        every rank calls it)."""
        names = list(self.totals)
        totals = average_across_processes(torch.stack([self.totals[name] for name in names]), context)
        record = {"kind": "train", "epoch": state.epoch + 1, "step": state.step, "lr": learning_rate}
        record.update({name: total / self.steps for name, total in zip(names, totals.tolist())})
        record.update({"images_per_s": round(self.images_per_s(), 3), "time": round(state.elapsed_s, 3)})
        return record


def stop_reason(state: TrainingState, config: TrainConfig, stop_flag: bool, stop_at_step: int | None) -> str:
    """Why training stops after this step (``epoch_end``: it does not)."""
    if stop_flag:
        return "signal"
    if stop_at_step is not None and state.step >= stop_at_step:
        return "pause"
    if steps_spent(state, config):
        return "max_steps"
    if config.time_budget_s > 0 and state.elapsed_s >= config.time_budget_s:
        return "time_budget"
    return "epoch_end"


def budget_spent(state: TrainingState, config: TrainConfig) -> bool:
    """Whether a run at ``state`` has nothing left to train under ``config``'s budget."""
    if config.max_steps > 0 or config.time_budget_s > 0:
        return steps_spent(state, config) or (config.time_budget_s > 0 and state.elapsed_s >= config.time_budget_s)
    return state.epoch >= config.epochs


def steps_spent(state: TrainingState, config: TrainConfig) -> bool:
    """``config.max_steps`` reached, counted on the schedule's position (steps of the run's first
    number of processes; with an unchanged number, ``state.step``)."""
    return config.max_steps > 0 and state.schedule_step >= config.max_steps - 1e-9


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data_loader, evaluator: Evaluator, device: torch.device | str = "auto", amp: bool = True
) -> dict:
    """Run ``model`` in eval mode on ``device`` (``auto``: the GPU when there is one; the model is
    moved there) over ``data_loader`` and return ``evaluator.compute()``. On a GPU the forward
    passes run under float16 autocast unless ``amp`` is off (``train.amp``); on a CPU in float32.

    Predictions are moved to the CPU (float16 ones as float32) before
    ``evaluator.update(predictions, targets)``.
    """
    was_training = model.training
    model.eval()
    device = resolve_device(device)
    model.to(device)
    for images, targets in tqdm(data_loader, desc="evaluate", leave=False, dynamic_ncols=True):
        images, _ = move_to_device(images, None, device)
        with inference_autocast(device, amp):
            outputs = model(images)
        predictions = [{key: full_precision(value.detach().cpu()) for key, value in output.items()} for output in outputs]
        evaluator.update(predictions, list(targets))
    model.train(was_training)
    return evaluator.compute()


class PredictionCollector:
    """An evaluator that keeps what it is given: one rank's share of a distributed evaluation."""

    def __init__(self):
        self.items: list[tuple[dict, dict]] = []

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        self.items.extend(zip(predictions, targets))

    def compute(self) -> list[tuple[dict, dict]]:
        return self.items


def evaluate_across_processes(model: torch.nn.Module, shard_loader, make_evaluator: Callable[[], Evaluator],
                              context: Context, amp: bool = True) -> dict:  # fmt: skip
    """:func:`evaluate` with the images shared between the processes: each rank predicts its shard
    (:class:`~detlab.engine.sampling.ShardSampler`: images ``rank, rank + W, ...``), rank 0
    gathers the predictions in the data set's order and scores them with one evaluator, so the
    numbers are those of one process; every rank gets them."""
    if not context.distributed:
        return _plain_metrics(evaluate(model, shard_loader, make_evaluator(), context.device, amp))
    shards = gather_to_main(evaluate(model, shard_loader, PredictionCollector(), context.device, amp), context)
    result = None
    if context.is_main:
        evaluator = make_evaluator()
        # image i is shards[i % W][i // W]: interleave the shards back into the data set's order
        ordered = [item for group in itertools.zip_longest(*shards) for item in group if item is not None]
        for start in range(0, len(ordered), 64):
            chunk = ordered[start : start + 64]
            evaluator.update([prediction for prediction, _ in chunk], [target for _, target in chunk])
        result = _plain_metrics(evaluator.compute())
    return broadcast_object(result, context)


def _pick_best_metric(metrics: dict, name: str | None) -> tuple[str | None, float | None]:
    names = [name] if name else list(BEST_METRIC_CANDIDATES)
    for candidate in names:
        value = metrics.get(candidate)
        if isinstance(value, int | float) and math.isfinite(value):
            return candidate, float(value)
    if name:
        raise ValueError(f"evaluation returned no metric {name!r}; it returned {sorted(metrics)}")
    return None, None


def _plain_metrics(metrics) -> dict:
    """The scalar part of an evaluator's result (tables stay out of the log and checkpoint); a
    result object with ``summary()`` (``detlab.eval.coco.CocoResult``) gives its summary numbers."""
    if hasattr(metrics, "summary"):
        metrics = metrics.summary()
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    }


def fit(
    model: torch.nn.Module,
    train_dataset: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    val_dataset: Dataset | None = None,
    make_evaluator: Callable[[], Evaluator] | None = None,
    classes: list[str] | tuple[str, ...] = (),
    model_name: str = "",
    run_config: dict | None = None,
    resume: str | Path | None = None,
    collate: Callable | None = None,
    context: Context | None = None,
    best_metric: str | None = None,
    num_workers: int | None = None,
    stop_at_step: int | None = None,
    data_report: dict | None = None,
) -> FitResult:
    """Train ``model`` on ``train_dataset`` per ``config``; evaluate, log and checkpoint in ``run_dir``.

    ``train_dataset[i] -> (image, target)`` with its augmentations; they are re-seeded per sample
    (:class:`~detlab.engine.sampling.SeededSamples`). ``val_dataset`` and ``make_evaluator`` (a
    fresh evaluator per evaluation) enable evaluation every ``config.eval_every`` epochs and at
    the end; ``best_metric`` names the result key that picks ``best.pt`` (default: the first of
    ``BEST_METRIC_CANDIDATES`` present). ``run_config`` (a plain dict) and ``classes`` are saved
    in every checkpoint. ``resume``: a checkpoint (or run folder) to continue exactly; a run whose
    budget is already spent is not trained further (status ``already_finished``).
    ``stop_at_step``: save and return with status ``paused`` after that step, as an interruption would.
    ``data_report``: what checking the data found (``detlab.data.validation``), the first record
    of a fresh run's log. ``num_workers``: the loaders' worker processes (``None``: chosen by
    device, :func:`~detlab.engine.sampling.loader_workers`).

    Stops at the first of: ``config.max_steps`` steps or ``config.time_budget_s`` seconds when
    set (either replaces ``config.epochs``), else ``config.epochs`` epochs; SIGINT/SIGTERM. Any
    error after training started (an unreadable image, a NaN loss, a full disk while evaluating)
    first saves ``last.pt``, so no finished step is lost, then propagates.
    """
    context = context or init_distributed(config.device, config.dist_timeout_s)
    run_dir = Path(run_dir)
    model.to(context.device)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and context.device.type == "cuda")
    resumed = load_resume_point(resume, run_dir, model, optimizer, scaler, context)
    state = resumed_state(resumed["progress"], config) if resumed else TrainingState(start_world_size=context.world_size)
    state.world_size = context.world_size
    if resumed is None:
        seed_model_randomness(config.seed + context.rank)  # each rank its own dropout; data seeded apart
    elif budget_spent(state, config):
        model.load_state_dict(resumed["model"])  # the averaged weights, when the run kept an average
        return FitResult(run_dir, "already_finished", state, run_dir / checkpoints.LAST_NAME,
                         existing(run_dir / checkpoints.BEST_NAME), dict(resumed.get("metrics") or {}))  # fmt: skip
    seeded = SeededSamples(train_dataset, seed=config.seed)
    sampler = ResumableSampler(len(train_dataset), context.rank, context.world_size, shuffle=True, seed=config.seed)
    loader = make_training_loader(seeded, config.batch_size, sampler, num_workers, collate, context.device)
    # the horizon in steps of the run's first number of processes, as schedule_step counts
    schedule = LearningRateSchedule.from_config(config, total_steps(config, len(train_dataset), state.start_world_size))
    evaluation_loader = None
    if val_dataset is not None and make_evaluator is not None:  # each rank its shard of the images
        shard = ShardSampler(len(val_dataset), context.rank, context.world_size)
        evaluation_loader = make_loader(val_dataset, config.batch_size, shard, num_workers, collate, context.device)
    log = open_run_log(run_dir, run_config, state.step if resumed else None, context)
    if log is not None and resumed is None and data_report:
        log.write({"kind": "data", "step": 0, **data_report})
    if resumed is not None:  # last, after everything that may draw numbers
        own = checkpoints.rank_rng_state(resumed, context.rank, context.world_size)
        if own is not None:
            checkpoints.restore_rng_state(own)
        else:  # a rank the interrupted run did not have
            seed_model_randomness(config.seed + context.rank + 7919 * state.step)
    average = None
    if config.ema_decay > 0:
        average = WeightAverage(model, config.ema_decay, config.ema_ramp_steps)
        if resumed is not None and "ema_updates" in resumed:
            average.load(resumed["model"], resumed["ema_updates"])
    sync_batchnorm(model, context.world_size, context.device)  # model.batchnorm=sync, under torchrun
    train_model = wrap_model(model, context)
    checkpointer = Checkpointer(
        run_dir, context, state, optimizer, schedule, scaler,
        header={"model_name": model_name, "classes": list(classes),
                "config": run_config or {"train": config_io.to_dict(config)}},
        metrics=dict(resumed.get("metrics") or {}) if resumed else {},
        resumed=resumed is not None, average=average,
    )  # fmt: skip

    def run_evaluation() -> bool:
        """Evaluate (every rank its shard, scored on rank 0); True when the result is the best so far."""
        improved = False
        checkpointer.evaluated_at_step = state.step
        if evaluation_loader is not None:
            evaluated = average.model if average is not None else unwrap_model(train_model)
            result = evaluate_across_processes(evaluated, evaluation_loader, make_evaluator, context, config.amp)
            checkpointer.metrics = result
            _, value = _pick_best_metric(result, best_metric)
            if value is not None and (state.best_metric is None or value > state.best_metric):
                state.best_metric, state.best_epoch, improved = value, state.epoch, True
            if log is not None:
                log.write({"kind": "eval", "epoch": state.epoch, "step": state.step, **result})
                plot_curves(log.records(), run_dir / CURVES_NAME)
        barrier(context)
        return improved

    with StopRequest() as stop:
        try:
            status = train_epochs(
                train_model, optimizer, loader, sampler, seeded, schedule, state, config, context, scaler,
                log, stop, stop_at_step, checkpointer, run_evaluation, average,
            )  # fmt: skip
        except Exception:
            if state.step > 0:  # the error may be this rank's alone: no collective, rank 0's random state
                checkpointer.save(unwrap_model(train_model), include_best=False, gather=False)
                if context.is_main:
                    print(f"\ntraining stopped by an error after step {state.step}; {run_dir / checkpoints.LAST_NAME} "
                          f"holds that step: fix the cause, then resume with: detlab train --resume {run_dir}",
                          file=sys.stderr)  # fmt: skip
            raise
    if log is not None:
        plot_curves(log.records(), run_dir / CURVES_NAME)
    if average is not None:
        model.load_state_dict(average.model.state_dict())  # the model left behind is what was saved
    barrier(context)
    return FitResult(run_dir, status, state, checkpointer.last_path, checkpointer.best_path,
                     checkpointer.metrics, stop.signal_name)  # fmt: skip


def train_epochs(
    train_model, optimizer, loader, sampler, seeded, schedule, state, config, context, scaler, log, stop,
    stop_at_step, checkpointer, run_evaluation, average=None,
) -> str:  # fmt: skip
    """Epochs until the budget, a signal or ``stop_at_step``; evaluate and save after each epoch
    (every ``config.eval_every``) and at the end. Returns the run's status."""
    model = unwrap_model(train_model)
    reason = "epoch_end"
    while budget_by_steps(config) or state.epoch < config.epochs:
        sampler.set_epoch(state.epoch, skip=state.images_in_epoch)
        seeded.set_epoch(state.epoch)
        reason = "epoch_end"
        if len(sampler) > 0:
            reason = train_one_epoch(
                train_model, optimizer, loader, schedule, state, config, context,
                scaler if scaler.is_enabled() else None, log, stop, stop_at_step,
                checkpointer.run_dir / checkpoints.LAST_NAME, average,
            )  # fmt: skip
        if reason != "epoch_end":
            break
        state.epoch += 1
        state.batch_in_epoch = state.images_in_epoch = 0
        evaluate_now = config.eval_every > 0 and state.epoch % config.eval_every == 0
        improved = run_evaluation() if evaluate_now else False
        checkpointer.save(model, include_best=improved)
    if reason in ("signal", "pause"):
        checkpointer.save(model, include_best=False)
        return "interrupted" if reason == "signal" else "paused"
    if checkpointer.evaluated_at_step != state.step:
        checkpointer.save(model, include_best=run_evaluation())
    elif checkpointer.saved_at_step != state.step:
        checkpointer.save(model, include_best=False)
    return "finished"


class Checkpointer:
    """Writes ``last.pt`` (and ``best.pt``) of a run on rank 0: the weights, optimiser, schedule,
    scaler, progress and random state, with the run's ``header`` (model name, classes, config) and
    the latest evaluation ``metrics``."""

    def __init__(self, run_dir, context, state, optimizer, schedule, scaler, header, metrics, resumed, average=None):
        self.run_dir, self.context, self.state, self.average = Path(run_dir), context, state, average
        self.optimizer, self.schedule, self.scaler = optimizer, schedule, scaler
        self.header, self.metrics = header, metrics
        self.last_path = self.run_dir / checkpoints.LAST_NAME if resumed and context.is_main else None
        self.best_path = existing(self.run_dir / checkpoints.BEST_NAME) if resumed else None
        self.saved_at_step = self.evaluated_at_step = -1

    def save(self, model: torch.nn.Module, include_best: bool, gather: bool = True) -> None:
        """On every rank (``gather``: each rank's random state goes to rank 0 for the file)."""
        self.saved_at_step = self.state.step
        rng = checkpoints.capture_rng_state()
        rng_ranks = gather_to_main(rng, self.context) if gather else [rng]
        if not self.context.is_main:
            return
        weights = {"model": model.state_dict()}
        if self.average is not None:  # "model" is what evaluation uses; the trained weights resume
            weights = {"model": self.average.model.state_dict(), "training_model": model.state_dict(),
                       "ema_updates": self.average.updates}  # fmt: skip
        data = checkpoints.serialize(
            {
                "format": checkpoints.FORMAT,
                "version": checkpoints.VERSION,
                **self.header,
                **weights,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "progress": dataclasses.asdict(self.state),
                "rng": rng,
                "rng_ranks": rng_ranks,
                "metrics": self.metrics,
            }
        )
        self.last_path = checkpoints.write_atomically(data, self.run_dir / checkpoints.LAST_NAME)
        if include_best:
            self.best_path = checkpoints.write_atomically(data, self.run_dir / checkpoints.BEST_NAME)


def load_resume_point(resume, run_dir: Path, model, optimizer, scaler, context: Context | None = None) -> dict | None:
    """The checkpoint to continue from, its weights and optimiser state loaded; ``None`` for a fresh
    run, which refuses a folder that already holds one. Rank 0 reads the run folder and sends what
    it found to the other ranks (their machines may not share its disk)."""
    resumed = read_on_main(lambda: read_resume_point(resume, run_dir), context or Context())
    if resumed is None:
        return None
    model.load_state_dict(resumed.get("training_model") or resumed["model"])
    if resumed.get("optimizer"):
        optimizer.load_state_dict(resumed["optimizer"])
    if resumed.get("scaler"):
        scaler.load_state_dict(resumed["scaler"])
    return resumed


def read_resume_point(resume, run_dir: Path) -> dict | None:
    if resume is None:
        if (run_dir / checkpoints.LAST_NAME).exists():
            raise ValueError(
                f"{run_dir} already holds a run ({checkpoints.LAST_NAME}); resume it with --resume {run_dir} "
                "or choose another output folder"
            )
        return None
    resume = Path(resume)
    return checkpoints.load_checkpoint(resume / checkpoints.LAST_NAME if resume.is_dir() else resume)


def seed_model_randomness(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def budget_fraction(state: TrainingState, config: TrainConfig, steps_per_epoch: int) -> float:
    """The share of the run's budget (time, steps or epochs) spent at ``state``."""
    if budget_by_steps(config):
        shares = [state.elapsed_s / config.time_budget_s] if config.time_budget_s > 0 else []
        shares += [state.schedule_step / config.max_steps] if config.max_steps > 0 else []
        return min(1.0, max(shares))
    epochs = state.epoch + state.batch_in_epoch / max(steps_per_epoch, 1)
    return min(1.0, epochs / max(config.epochs, 1))


def budget_by_steps(config: TrainConfig) -> bool:
    """A step or time budget replaces the epoch count."""
    return config.max_steps > 0 or config.time_budget_s > 0


def resumed_state(progress: dict, config: TrainConfig) -> TrainingState:
    """A checkpoint's ``progress`` as a :class:`TrainingState` (one from before ``images_in_epoch``
    and ``schedule_step`` were kept was written by one process)."""
    progress = dict(progress)
    progress.setdefault("images_in_epoch", progress.get("batch_in_epoch", 0) * config.batch_size)
    progress.setdefault("schedule_step", float(progress.get("step", 0)))
    return TrainingState(**progress)


def total_steps(config: TrainConfig, dataset_size: int, world_size: int = 1) -> int:
    """The step horizon of the learning-rate schedule for ``world_size`` processes (0 when only a
    time budget bounds the run)."""
    steps_per_epoch = math.ceil(math.ceil(dataset_size / world_size) / config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("the training set is empty")
    if config.max_steps > 0:
        return config.max_steps
    return 0 if budget_by_steps(config) else config.epochs * steps_per_epoch


def open_run_log(run_dir: Path, run_config: dict | None, resume_step: int | None, context: Context):
    """The metrics log (rank 0), and ``config.yaml`` written beside it."""
    if not context.is_main:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_config is not None:
        with open(run_dir / "config.yaml", "w") as handle:
            yaml.safe_dump(run_config, handle, sort_keys=False)
    return MetricsLog(run_dir, resume_step=resume_step)


def existing(path: Path) -> Path | None:
    return path if path.exists() else None
