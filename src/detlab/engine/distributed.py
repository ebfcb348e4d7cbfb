"""Devices and distributed data-parallel training.

``torchrun --nproc_per_node N -m detlab train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`init_distributed` joins them into
one process group (NCCL on GPUs, gloo on CPUs). Each process trains on its own share of the
data (:class:`detlab.engine.sampling.ResumableSampler`), gradients are averaged by
``DistributedDataParallel``, every rank evaluates its share of the validation images, and only
rank 0 scores them, logs and writes checkpoints.
Without those variables everything runs in one process and the helpers here are no-ops.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_node_main(self) -> bool:
        """The first process of its machine: the one that prepares what lives on that machine's
        disk (a generated data set, a proposal cache), with no shared file system assumed."""
        return self.local_rank == 0


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is present, else the CPU; or an explicit name."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} asked for, but CUDA is not available here; use --set train.device=cpu"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


_CREATED_HERE = []  # the process group init_distributed made (not one a caller set up)


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> Context:
    """Join the process group torchrun described in the environment, or run alone. ``timeout_s``:
    how long a collective (a barrier, an all-reduce) waits for the other processes.

    Safe to call twice (a group that already exists is reused, as in a test that set it up).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    device = select_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s)
        )
        _CREATED_HERE.append(True)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    """Leave the process group :func:`init_distributed` created (after training, so the NCCL
    communicators are freed rather than torn down at exit); a group a caller set up stays."""
    if _CREATED_HERE and dist.is_initialized():
        dist.destroy_process_group()
        _CREATED_HERE.clear()


def move_to_device(images: list, targets: list | None, device: torch.device) -> tuple[list, list | None]:
    """A batch's images and (when given) targets' tensors on ``device``."""
    images = [image.to(device, non_blocking=True) for image in images]
    if targets is not None:
        targets = [
            {key: value.to(device) if torch.is_tensor(value) else value for key, value in target.items()}
            for target in targets
        ]
    return images, targets


def wrap_model(model: torch.nn.Module, context: Context) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when running distributed, else ``model``."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    # Gradients as views of DDP's communication buckets: the weight gradients of channels-last
    # convolutions then take the buckets' layout (no "grad strides do not match bucket view
    # strides" warning, no copy into the buckets each step).
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, gradient_as_bucket_view=True
    )


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The detector inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def average_across_processes(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Mean of a 1-D tensor over all processes (identity when alone); every rank gets the result."""
    if not context.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / context.world_size


def any_process(flag: bool, context: Context) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop signal)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def broadcast_object(value, context: Context):
    """Rank 0's ``value`` on every rank (plain picklable data only, e.g. a path or a metric)."""
    if not context.distributed:
        return value
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_to_main(value, context: Context) -> list:
    """Every rank's ``value`` (picklable) on rank 0, in rank order; ``[]`` on the other ranks,
    ``[value]`` when alone."""
    if not context.distributed:
        return [value]
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []


def read_on_main(read, context: Context):
    """``read()`` on rank 0 only, its result on every rank: whatever comes from the run folder (a
    checkpoint, a stage's marker), which only rank 0's machine is sure to hold when the nodes share
    no disk. An error ``read`` raises is raised on every rank (as ``FileNotFoundError`` or
    ``ValueError`` with rank 0's message)."""
    if not context.distributed:
        return read()
    result, failure = None, None
    if context.is_main:
        try:
            result = read()
        except (ValueError, OSError) as error:
            failure = (isinstance(error, FileNotFoundError), str(error))
            broadcast_object((None, failure), context)
            raise
    result, failure = broadcast_object((result, failure), context)
    if failure is not None:
        raise (FileNotFoundError if failure[0] else ValueError)(failure[1])
    return result
