"""Learning-rate schedule values by hand; data order and augmentation seeding."""

import math
import random

import pytest
import torch

from detlab.config import TrainConfig
from detlab.engine.optimization import LearningRateSchedule, build_optimizer
from detlab.engine.sampling import ResumableSampler, SeededSamples


def test_warmup_then_cosine():
    schedule = LearningRateSchedule(base_lr=0.1, kind="cosine", total_steps=100, warmup_steps=10)
    assert schedule.factor(0) == pytest.approx(0.001)
    assert schedule.factor(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert schedule.factor(50) == pytest.approx(0.5)
    assert schedule.factor(100) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_and_time_horizon():
    schedule = LearningRateSchedule(base_lr=1.0, kind="step", total_steps=100, milestones=(0.5, 0.75))
    assert [schedule.factor(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    timed = LearningRateSchedule(base_lr=1.0, kind="cosine", time_budget_s=60.0)
    assert timed.factor(1000, elapsed_s=30.0) == pytest.approx(0.5)  # progress is the clock's, not the step's


def test_optimizers_exclude_biases_from_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    for name, kind in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.01))
        assert isinstance(optimizer, kind)
        decays = {p.ndim: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        assert decays == {4: 0.01, 1: 0.0}
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, TrainConfig(optimizer="lbfgs"))


def test_ranks_share_the_data_and_a_skip_resumes_the_same_order():
    per_rank = []
    for rank in range(2):
        sampler = ResumableSampler(11, rank=rank, world_size=2, seed=3)
        sampler.set_epoch(4)
        per_rank.append(list(sampler))
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(11))
    assert len(per_rank[0]) == len(per_rank[1]) == 6  # padded to an equal share
    sampler = ResumableSampler(11, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 7
    sampler.set_epoch(5)
    assert list(sampler) != full


def test_seeded_samples_repeat_per_epoch_and_leave_global_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.rand(2), random.random()

    samples = SeededSamples(Noise(), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = samples[2]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # whatever else happened in between does not matter
    assert torch.equal(samples[2][0], first[0]) and samples[2][1] == first[1]
    assert not torch.equal(samples[1][0], first[0])
    samples.set_epoch(1)
    assert not torch.equal(samples[2][0], first[0])


def test_the_sampler_skips_places_of_the_epoch_order_whatever_the_number_of_processes():
    from detlab.engine.sampling import ResumableSampler

    for world_size in (1, 2, 3):
        uninterrupted = [list(ResumableSampler(11, rank, world_size, seed=5)) for rank in range(world_size)]
        for steps in range(4):  # the same number of processes: exactly the uninterrupted rest
            for rank in range(world_size):
                sampler = ResumableSampler(11, rank, world_size, seed=5)
                sampler.set_epoch(0, skip=steps * world_size)
                assert list(sampler) == uninterrupted[rank][steps:] and len(sampler) == len(
                    uninterrupted[rank][steps:]
                )
    order = list(ResumableSampler(11, 0, 1, seed=5))
    for world_size in (2, 3):  # another number: the rest of the order, dealt out evenly
        shares = []
        for rank in range(world_size):
            sampler = ResumableSampler(11, rank, world_size, seed=5)
            sampler.set_epoch(0, skip=4)
            shares.append(list(sampler))
        assert len({len(share) for share in shares}) == 1
        dealt = [index for group in zip(*shares) for index in group]
        assert dealt[: 11 - 4] == order[4:]  # in order; the rest is padding from the start
