"""One optimiser step's parts: the backward pass (scaled for float16), the flags every process
shares after it, the finiteness check that runs before any weight changes, clipping and the
optimiser step, and the training state's advance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detlab.config import TrainConfig
from detlab.engine.distributed import Context, average_across_processes
from detlab.engine.ema import WeightAverage
from detlab.engine.optimization import LearningRateSchedule
from detlab.engine.signals import StopRequest
from detlab.engine.state import TrainingState


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before the bad step changed any weight."""


@dataclass
class Optimisation:
    """What changes the weights: the optimiser, the learning-rate schedule, float16's loss scaler
    and, when the run keeps one, the weights' moving average (what evaluation and checkpoints use)."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LearningRateSchedule | None = None
    average: WeightAverage | None = None


def keep_frozen_modules_fixed(model: torch.nn.Module) -> None:
    """Run every sub-module whose parameters are all frozen in eval mode: a stage that freezes part
    of a network (:func:`detlab.models.contract.set_trainable`) keeps that part a fixed function,
    its BatchNorm statistics included and its dropout off."""
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()


def share_step_flags(
    loss_values: torch.Tensor, stop: StopRequest, elapsed_s: float, context: Context
) -> tuple[bool, bool, float]:
    """``(the losses are finite on every process, a stop was requested on one, mean elapsed
    seconds)``: one small all-reduce, so every rank takes the same decisions (stopping or raising
    alone would deadlock the others). ``loss_values``: this process's ``Tensor[1 + T]``."""
    stop_flag = 1.0 if stop.signal_name is not None else 0.0
    non_finite = (~torch.isfinite(loss_values)).any().float().reshape(1)
    shared = torch.cat([non_finite, torch.tensor([stop_flag, elapsed_s], device=loss_values.device)])
    shared = average_across_processes(shared, context).cpu()
    return not bool(shared[0] > 0), bool(shared[1] > 0), float(shared[2])


def check_finite(loss_values: torch.Tensor, names: list[str], state: TrainingState) -> None:
    """Raise :class:`NonFiniteLossError` before a NaN or infinite loss changes any weight
    (:func:`fit` then saves the weights of the last good step in ``last.pt``)."""
    if torch.isfinite(loss_values).all():
        return
    terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(["loss"] + names, loss_values.tolist()))
    raise NonFiniteLossError(
        f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1}): "
        f"{terms}; training stopped before this step changed the weights, which are saved in last.pt. Lower "
        "train.lr, raise train.warmup_steps or check the data, then resume with --resume RUN_DIR."
    )


def backward(loss: torch.Tensor, training: Optimisation) -> None:
    """The gradients of ``loss`` (scaled for float16) in place of the last step's; no weight
    changes yet (:func:`optimizer_step` does that)."""
    training.optimizer.zero_grad(set_to_none=True)
    (training.scaler.scale(loss) if training.scaler.is_enabled() else loss).backward()


def optimizer_step(training: Optimisation, parameters: list, config: TrainConfig) -> None:
    """After :func:`backward`: gradient clipping (``train.clip_grad_norm``), one optimiser step."""
    optimizer, scaler = training.optimizer, training.scaler
    if scaler.is_enabled():
        if config.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    if config.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
    optimizer.step()


def advance(state: TrainingState, config: TrainConfig, context: Context, elapsed_s: float) -> None:
    """``state`` after one step of every process (``elapsed_s``: the shared clock)."""
    state.step += 1
    state.batch_in_epoch += 1
    state.images_in_epoch += config.batch_size * context.world_size  # places of the epoch's order
    state.schedule_step += context.world_size / state.start_world_size
    state.elapsed_s = elapsed_s  # the same on every rank: the schedule and the budget use it
