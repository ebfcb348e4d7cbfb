"""Data order and augmentation randomness that a resumed run reproduces exactly.

Two things decide which pixels a training step sees: the order of the samples and the random
draws of the augmentations. Both are made functions of ``(seed, epoch, sample index)`` only:

- :class:`ResumableSampler` permutes the indices with a generator seeded by ``seed + epoch``
  (torch's ``DistributedSampler`` does the shuffling and the split between ranks) and can start
  mid-epoch, after the samples an interrupted run already consumed;
- :class:`SeededSamples` draws each sample's augmentation from a generator seeded by
  ``(seed, epoch, index)``, so neither a resume point nor the number of loader workers changes it
  (:class:`EpochIndices` hands the epoch to the loader's worker processes with each index).

The model's own randomness (dropout) stays on the global generators, which checkpoints save.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detlab.config import TrainConfig
from detlab.engine.distributed import Context, select_device
from detlab.engine.options import FitOptions
from detlab.machine import usable_cpus


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded per epoch, split between ranks) that can skip a prefix.

    ``set_epoch(epoch, skip=k)`` drops the first ``k`` places of the epoch's order over all
    ranks: the samples an interrupted run had already trained on, whatever number of processes
    that run had. (``DistributedSampler`` deals the epoch's order out place by place, rank ``r``
    taking places ``r, r + W, ...``, so after ``s`` steps of ``b`` images on ``W`` ranks exactly
    the first ``s * b * W`` places are used.) The rest is dealt out the same way among this run's
    ranks, padded from the start of the order so every rank gets as many: with the same number of
    processes, exactly what the uninterrupted run would have done.
    """

    def __init__(
        self, dataset_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0
    ):
        super().__init__(
            range(dataset_size),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def epoch_order(self) -> list[int]:
        """The epoch's order over all ranks (``DistributedSampler``'s, before its padding)."""
        if not self.shuffle:
            return list(range(len(self.dataset)))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        if not self.skip:
            return super().__iter__()
        order = self.epoch_order()
        remaining = order[self.skip :]
        padding = len(self) * self.num_replicas - len(remaining)
        remaining += (order * (padding // max(len(order), 1) + 1))[:padding]
        return iter(remaining[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        if not self.skip:
            return self.num_samples
        return math.ceil(max(0, len(self.dataset) - self.skip) / self.num_replicas)


class ShardSampler(torch.utils.data.Sampler):
    """Images ``rank, rank + W, rank + 2W, ...`` of a data set of ``dataset_size``, in order: each
    process's share of an evaluation, every image once over all ranks (no padding)."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(
        np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).astype(np.uint64)[0]
    )


@runtime_checkable
class HearsProgress(Protocol):
    """A training set that changes with the share of the training budget spent
    (:class:`detlab.data.mosaic.MosaicDataset`: its mosaics stop at ``data.mosaic_off_after``)."""

    def set_progress(self, fraction: float) -> None: ...


class SeededSamples(Dataset):
    """Wraps a data set so ``dataset[i]`` draws its augmentation from its own seeded generators.

    The global torch and Python generators are seeded per sample inside a fork and restored
    afterwards, so reading a sample never disturbs the model's random state.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.hears_progress = isinstance(dataset, HearsProgress)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_progress(self, fraction: float) -> None:
        """The share of the budget spent, for a data set that :class:`HearsProgress`."""
        if self.hears_progress:
            self.dataset.set_progress(fraction)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        """Sample ``index`` as augmented in epoch ``self.epoch``, or in ``epoch`` for a key
        ``(epoch, index)`` (:class:`EpochIndices`)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        seed = sample_seed(self.seed, epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: it is all fork_rng restores, and torch.manual_seed would
            # also reseed every accelerator's (and costs ~1 ms a sample doing so).
            torch.random.default_generator.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)


def collate_detection(batch: list[tuple]) -> tuple[list, list]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``: images differ in size."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class EpochIndices(torch.utils.data.Sampler):
    """``(epoch, index)`` pairs for :class:`SeededSamples`, the indices ``sampler`` gives, with the
    epoch it was set to. A loader's worker processes keep the copy of the data set they started
    with, so ``SeededSamples.set_epoch`` in the training process never reaches persistent ones;
    the indices do, every epoch."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


GPU_WORKERS = 4  # auto: up to this many loader processes a GPU (and no more than its share of CPUs)
# auto on a CPU: the model's threads already keep every core busy, so a worker only takes cores
# from them (benchmarks/results/loader_bccd.md measures it; docs/engine.md).
CPU_WORKERS = 0


def loader_workers(num_workers: int | None, device: torch.device | str = "auto") -> int:
    """The worker processes a loader uses: ``num_workers`` (``data.num_workers``) when set, else
    (auto) ``min(GPU_WORKERS, CPUs per process)`` for a GPU, where decoding and augmenting in the
    training process would leave the GPU waiting, and ``CPU_WORKERS`` for a CPU."""
    if num_workers is not None:
        if num_workers < 0:
            raise ValueError(
                f"data.num_workers={num_workers}: use 0 (load in the training process), a number of worker "
                "processes, or none (auto)"
            )
        return num_workers
    if resolve_device(device).type == "cuda":
        return min(GPU_WORKERS, cpus_per_process())
    return CPU_WORKERS


def cpus_per_process() -> int:
    """This process's share of the CPUs it may run on (torchrun's processes on one machine share them)."""
    return max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_device(device: torch.device | str) -> torch.device:
    """A device name (``auto``, ``cpu``, ``cuda``, ...; :func:`select_device`) or a device."""
    return select_device(device) if isinstance(device, str) else device


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: torch.utils.data.Sampler,
    num_workers: int | None = None,
    collate: Callable | None = None,
    device: torch.device | str = "auto",
    persistent_workers: bool = False,
) -> DataLoader:
    """A loader for batches that go to ``device``: ``num_workers`` worker processes (``None``:
    :func:`loader_workers` chooses), pinned memory for a GPU (copies to it then run while the
    GPU computes), ``persistent_workers`` kept from one pass to the next when asked (and there are
    workers).

    Its own seed draw comes from a private generator, not the global one: ``DataLoader`` draws a
    base seed each time it starts iterating, and from the global generator that would make the
    model's random stream depend on where an epoch was resumed.
    """
    device = resolve_device(device)
    workers = loader_workers(num_workers, device)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate or collate_detection,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent_workers and workers > 0,
    )


def make_training_loader(
    seeded: SeededSamples,
    batch_size: int,
    sampler: DistributedSampler,
    num_workers: int | None = None,
    collate: Callable | None = None,
    device: torch.device | str = "auto",
) -> DataLoader:
    """:func:`make_loader` for training: ``seeded``'s samples in ``sampler``'s order, each drawn
    for the epoch ``sampler`` was set to (:class:`EpochIndices`), so worker processes can persist
    from one epoch to the next (starting them again every epoch copies the data set each time).
    A training set that hears the share of the budget spent (``set_progress``: mosaics stop) hears
    it in the training process only; fresh workers copy that at each epoch's start, persistent
    ones never would, so for such a set they stay per-epoch."""
    return make_loader(
        seeded,
        batch_size,
        EpochIndices(sampler),
        num_workers,
        collate,
        device,
        persistent_workers=not seeded.hears_progress,
    )


@dataclass
class TrainingData:
    """The run's loaders: the training order (``sampler``, ``seeded`` samples, ``loader``) and, with
    a validation set, each rank's shard of it, scored for ``classes``."""

    loader: DataLoader
    sampler: ResumableSampler
    seeded: SeededSamples
    validation: DataLoader | None
    classes: list[str]
    best_metric: str | None = None


def training_data(
    train_dataset, val_dataset, config: TrainConfig, context: Context, options: FitOptions, classes
) -> TrainingData:
    """The training loader in its resumable, seeded order, and each rank's shard of the validation set."""
    if len(train_dataset) == 0:
        raise ValueError("the training set is empty")
    seeded = SeededSamples(train_dataset, seed=config.seed)
    sampler = ResumableSampler(
        len(train_dataset), context.rank, context.world_size, shuffle=True, seed=config.seed
    )
    loader = make_training_loader(
        seeded, config.batch_size, sampler, options.num_workers, options.collate, context.device
    )
    validation = None
    if val_dataset is not None:
        shard = ShardSampler(len(val_dataset), context.rank, context.world_size)
        validation = make_loader(
            val_dataset, config.batch_size, shard, options.num_workers, options.collate, context.device
        )
    return TrainingData(loader, sampler, seeded, validation, list(classes), options.best_metric)
