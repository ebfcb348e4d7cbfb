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
from torch.utils.data import Dataset, SequentialSampler
from tqdm import tqdm

from detlab import config as config_io
from detlab.config import TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import (
    Context,
    average_across_processes,
    barrier,
    init_distributed,
    unwrap_model,
    wrap_model,
)
from detlab.engine.metrics_log import CURVES_NAME, MetricsLog, plot_curves
from detlab.engine.optimization import LearningRateSchedule, build_optimizer
from detlab.engine.sampling import ResumableSampler, SeededSamples, make_loader

# Metrics tried in order to pick the best checkpoint when the caller names none.
BEST_METRIC_CANDIDATES = ("AP50", "mAP50", "map50", "AP", "mAP", "map")


class Evaluator(Protocol):
    """What :func:`evaluate` needs (``detlab.eval.COCOEvaluator`` / ``VOCEvaluator`` obey it)."""

    def update(self, predictions: list[dict], targets: list[dict]) -> None: ...

    def compute(self): ...  # a dict of floats, or an object whose summary() is one


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before the bad step changed any weight."""


@dataclass
class TrainingState:
    """Where training is. ``epoch`` is the epoch in progress (0-based) and ``batch_in_epoch`` the
    batches of it already trained on, so a resumed run starts exactly where this one stopped."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    best_metric: float | None = None
    best_epoch: int = -1


@dataclass
class FitResult:
    """``status``: ``finished``, ``interrupted`` (SIGINT/SIGTERM; resume it) or ``paused``."""

    run_dir: Path
    status: str
    state: TrainingState
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)
    signal_name: str | None = None


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
    last_checkpoint: Path | None = None,
) -> str:
    """Train on the rest of the current epoch; update ``state`` in place after every step.

    Returns why it stopped: ``epoch_end``, ``max_steps``, ``time_budget``, ``signal`` or ``pause``.
    Raises :class:`NonFiniteLossError` (on every rank at once) when the loss is NaN or infinite.
    """
    model.train()
    device = context.device
    use_amp = scaler is not None and scaler.is_enabled()
    # On a CPU, mixed precision means bfloat16 autocast (no loss scaling needed), when asked for.
    cpu_bf16 = device.type == "cpu" and config.amp_cpu_bf16 and cpu_has_fast_bf16()
    parameters = [p for p in model.parameters() if p.requires_grad]
    total_batches = state.batch_in_epoch + len(data_loader)
    progress = tqdm(
        total=total_batches,
        initial=state.batch_in_epoch,
        desc=f"epoch {state.epoch + 1}",
        disable=not context.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    window: dict[str, float] = {}
    window_steps, window_images, window_start = 0, 0, time.perf_counter()
    reason = "epoch_end"
    # Training time counts loading and augmenting the data too, everything but evaluation.
    last_tick = time.perf_counter()
    for images, targets in data_loader:
        images, targets = move_to_device(images, targets, device)
        learning_rate = schedule.apply(optimizer, state.step, state.elapsed_s)
        with torch.autocast(
            device.type, dtype=torch.bfloat16 if cpu_bf16 else None, enabled=use_amp or cpu_bf16
        ):
            losses = model(images, targets)
        names = sorted(losses)
        loss = sum(losses[name] for name in names)
        stop_flag = 1.0 if stop is not None and stop.signal_name is not None else 0.0
        # One all-reduce carries the losses, the stop flag and the clock, so every rank sees the
        # same numbers and takes the same decisions (stopping alone would deadlock the others).
        local = torch.stack([loss.detach().float()] + [losses[n].detach().float() for n in names])
        now = time.perf_counter()
        local_elapsed, last_tick = state.elapsed_s + (now - last_tick), now
        shared = torch.cat([local, torch.tensor([stop_flag, local_elapsed], device=local.device)])
        shared = average_across_processes(shared, context).cpu()
        loss_values = shared[: len(names) + 1]
        if not torch.isfinite(loss_values).all():
            terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(["loss"] + names, loss_values.tolist()))
            saved = (
                str(last_checkpoint)
                if last_checkpoint
                else "none yet (no checkpoint was written before this step)"
            )
            raise NonFiniteLossError(
                f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}, batch "
                f"{state.batch_in_epoch + 1}): {terms}; training stopped before this step changed the weights. "
                f"Last good checkpoint: {saved}. Lower train.lr, raise train.warmup_steps or check the data, "
                "then resume with --resume RUN_DIR."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if config.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if config.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
            optimizer.step()

        state.step += 1
        state.batch_in_epoch += 1
        state.elapsed_s = float(shared[-1])  # the same on every rank: the schedule and the budget use it
        for name, value in zip(["loss"] + names, loss_values.tolist()):
            window[name] = window.get(name, 0.0) + value
        window_steps += 1
        window_images += len(images) * context.world_size
        images_per_s = window_images / max(time.perf_counter() - window_start, 1e-9)
        progress.update(1)
        progress.set_postfix(
            loss=f"{loss_values[0].item():.4f}", img_s=f"{images_per_s:.1f}", lr=f"{learning_rate:.2e}"
        )
        if log is not None and (state.step % max(config.log_every, 1) == 0 or state.step == 1):
            record = {"kind": "train", "epoch": state.epoch + 1, "step": state.step, "lr": learning_rate}
            record.update({name: total / window_steps for name, total in window.items()})
            record.update({"images_per_s": round(images_per_s, 3), "time": round(state.elapsed_s, 3)})
            log.write(record)
            window, window_steps, window_images, window_start = {}, 0, 0, time.perf_counter()

        if shared[-2] > 0:
            reason = "signal"
        elif stop_at_step is not None and state.step >= stop_at_step:
            reason = "pause"
        elif config.max_steps > 0 and state.step >= config.max_steps:
            reason = "max_steps"
        elif config.time_budget_s > 0 and state.elapsed_s >= config.time_budget_s:
            reason = "time_budget"
        if reason != "epoch_end":
            break
    progress.close()
    return reason


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data_loader, evaluator: Evaluator, device: torch.device | str = "cpu"
) -> dict:
    """Run ``model`` in eval mode over ``data_loader`` and return ``evaluator.compute()``.

    Predictions are moved to the CPU before ``evaluator.update(predictions, targets)``.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    for images, targets in tqdm(data_loader, desc="evaluate", leave=False, dynamic_ncols=True):
        images, _ = move_to_device(images, None, device)
        outputs = model(images)
        predictions = [{key: value.detach().cpu() for key, value in output.items()} for output in outputs]
        evaluator.update(predictions, list(targets))
    model.train(was_training)
    return evaluator.compute()


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
    num_workers: int = 0,
    stop_at_step: int | None = None,
) -> FitResult:
    """Train ``model`` on ``train_dataset`` per ``config``; evaluate, log and checkpoint in ``run_dir``.

    ``train_dataset[i] -> (image, target)`` with its augmentations; they are re-seeded per sample
    (:class:`~detlab.engine.sampling.SeededSamples`). ``val_dataset`` and ``make_evaluator`` (a
    fresh evaluator per evaluation) enable evaluation every ``config.eval_every`` epochs and at
    the end; ``best_metric`` names the result key that picks ``best.pt`` (default: the first of
    ``BEST_METRIC_CANDIDATES`` present). ``run_config`` (a plain dict) and ``classes`` are saved
    in every checkpoint. ``resume``: a checkpoint (or run folder) to continue exactly.
    ``stop_at_step``: save and return with status ``paused`` after that step, as an interruption would.

    Stops at the first of: ``config.max_steps`` steps or ``config.time_budget_s`` seconds when
    set (either replaces ``config.epochs``), else ``config.epochs`` epochs; SIGINT/SIGTERM.
    """
    context = context or init_distributed(config.device)
    run_dir = Path(run_dir)
    device = context.device
    model.to(device)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    state = TrainingState()
    resumed = None
    if resume is not None:
        resume = Path(resume)
        resumed = checkpoints.load_checkpoint(resume / checkpoints.LAST_NAME if resume.is_dir() else resume)
        model.load_state_dict(resumed["model"])
        if resumed.get("optimizer"):
            optimizer.load_state_dict(resumed["optimizer"])
        if resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        state = TrainingState(**resumed["progress"])
    else:
        if (run_dir / checkpoints.LAST_NAME).exists():
            raise ValueError(
                f"{run_dir} already holds a run ({checkpoints.LAST_NAME}); resume it with --resume {run_dir} "
                "or choose another output folder"
            )
        # Each rank its own model randomness (dropout); data order is seeded separately.
        torch.manual_seed(config.seed + context.rank)
        random.seed(config.seed + context.rank)
        np.random.seed(config.seed + context.rank)

    seeded = SeededSamples(train_dataset, seed=config.seed)
    sampler = ResumableSampler(
        len(train_dataset), context.rank, context.world_size, shuffle=True, seed=config.seed
    )
    loader = make_loader(seeded, config.batch_size, sampler, num_workers, collate)
    steps_per_epoch = math.ceil(sampler.num_samples / config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("the training set is empty")
    by_steps = config.max_steps > 0 or config.time_budget_s > 0
    total_steps = (
        config.max_steps if config.max_steps > 0 else (0 if by_steps else config.epochs * steps_per_epoch)
    )
    schedule = LearningRateSchedule.from_config(config, total_steps)

    evaluation_loader = None
    if val_dataset is not None and make_evaluator is not None and context.is_main:
        evaluation_loader = make_loader(
            val_dataset, config.batch_size, SequentialSampler(val_dataset), num_workers, collate
        )

    log = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(run_dir, resume_step=state.step if resumed else None)
        if run_config is not None:
            with open(run_dir / "config.yaml", "w") as handle:
                yaml.safe_dump(run_config, handle, sort_keys=False)
    last_path = run_dir / checkpoints.LAST_NAME if resumed and context.is_main else None
    best_path = (
        run_dir / checkpoints.BEST_NAME if resumed and (run_dir / checkpoints.BEST_NAME).exists() else None
    )
    metrics: dict = dict(resumed.get("metrics") or {}) if resumed else {}
    if resumed is not None:
        # Restored last, after everything above that may draw random numbers.
        checkpoints.restore_rng_state(resumed["rng"])

    train_model = wrap_model(model, context)
    evaluated_at_step, saved_at_step = -1, -1

    def save(include_best: bool) -> None:
        nonlocal last_path, best_path, saved_at_step
        saved_at_step = state.step
        if not context.is_main:
            return
        data = checkpoints.serialize(
            {
                "format": checkpoints.FORMAT,
                "version": checkpoints.VERSION,
                "model_name": model_name,
                "classes": list(classes),
                "config": run_config or {"train": config_io.to_dict(config)},
                "model": unwrap_model(train_model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "progress": dataclasses.asdict(state),
                "rng": checkpoints.capture_rng_state(),
                "metrics": metrics,
            }
        )
        last_path = checkpoints.write_atomically(data, run_dir / checkpoints.LAST_NAME)
        if include_best:
            best_path = checkpoints.write_atomically(data, run_dir / checkpoints.BEST_NAME)

    def run_evaluation() -> bool:
        """Evaluate on rank 0; True when the result is the best so far."""
        nonlocal metrics, evaluated_at_step
        evaluated_at_step = state.step
        improved = False
        if evaluation_loader is not None:
            result = evaluate(unwrap_model(train_model), evaluation_loader, make_evaluator(), device)
            metrics = _plain_metrics(result)
            name, value = _pick_best_metric(metrics, best_metric)
            if value is not None and (state.best_metric is None or value > state.best_metric):
                state.best_metric, state.best_epoch, improved = value, state.epoch, True
            if log is not None:
                log.write({"kind": "eval", "epoch": state.epoch, "step": state.step, **metrics})
                plot_curves(log.records(), run_dir / CURVES_NAME)
        barrier(context)
        return improved

    status, reason = "finished", "epoch_end"
    with StopRequest() as stop:
        while by_steps or state.epoch < config.epochs:
            sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * config.batch_size)
            seeded.set_epoch(state.epoch)
            reason = "epoch_end"
            if len(sampler) > 0:
                reason = train_one_epoch(
                    train_model,
                    optimizer,
                    loader,
                    schedule,
                    state,
                    config,
                    context,
                    scaler if scaler.is_enabled() else None,
                    log,
                    stop,
                    stop_at_step,
                    last_path,
                )
            if reason == "epoch_end":
                state.epoch += 1
                state.batch_in_epoch = 0
                evaluate_now = config.eval_every > 0 and state.epoch % config.eval_every == 0
                improved = run_evaluation() if evaluate_now else False
                save(include_best=improved)
                continue
            break
        if reason in ("signal", "pause"):
            status = "interrupted" if reason == "signal" else "paused"
            save(include_best=False)
        elif evaluated_at_step != state.step:
            improved = run_evaluation()
            save(include_best=improved)
        elif saved_at_step != state.step:
            save(include_best=False)
    if log is not None:
        plot_curves(log.records(), run_dir / CURVES_NAME)
    barrier(context)
    return FitResult(
        run_dir=run_dir,
        status=status,
        state=state,
        last_checkpoint=last_path,
        best_checkpoint=best_path,
        metrics=metrics,
        signal_name=stop.signal_name,
    )
