"""Data order and augmentation randomness that a resumed run reproduces exactly.

Two things decide which pixels a training step sees: the order of the samples and the random
draws of the augmentations. Both are made functions of ``(seed, epoch, sample index)`` only:

- :class:`ResumableSampler` permutes the indices with a generator seeded by ``seed + epoch``
  (torch's ``DistributedSampler`` does the shuffling and the split between ranks) and can start
  mid-epoch, after the samples an interrupted run already consumed;
- :class:`SeededSamples` draws each sample's augmentation from a generator seeded by
  ``(seed, epoch, index)``, so neither a resume point nor the number of loader workers changes it.

The model's own randomness (dropout) stays on the global generators, which checkpoints save.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded per epoch, split between ranks) that can skip a prefix.

    ``set_epoch(epoch, skip=k)`` drops the first ``k`` indices of this rank's share for that
    epoch: the samples an interrupted run had already trained on.
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

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(
        np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).astype(np.uint64)[0]
    )


class SeededSamples(Dataset):
    """Wraps a data set so ``dataset[i]`` draws its augmentation from its own seeded generators.

    The global torch and Python generators are seeded per sample inside a fork and restored
    afterwards, so reading a sample never disturbs the model's random state.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = sample_seed(self.seed, self.epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)


def collate_detection(batch: list[tuple]) -> tuple[list, list]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``: images differ in size."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: torch.utils.data.Sampler,
    num_workers: int = 0,
    collate: Callable | None = None,
) -> DataLoader:
    """A loader whose own seed draw comes from a private generator, not the global one.

    (``DataLoader`` draws a base seed each time it starts iterating; from the global generator that
    would make the model's random stream depend on where an epoch was resumed.)
    """
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate or collate_detection,
        generator=generator,
        persistent_workers=False,
    )
