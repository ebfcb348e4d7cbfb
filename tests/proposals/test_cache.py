"""The proposal cache: round trip, settings check, and resuming after an interrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detlab.proposals import ProposalCache, UniformBoxes

SRC = Path(__file__).resolve().parents[2] / "src"


class CountingMethod(UniformBoxes):
    """Uniform boxes that count calls and can fail on a chosen call, like a run being stopped."""

    def __init__(self, fail_on: int | None = None, **options):
        super().__init__(max_proposals=20, **options)
        self.calls, self.fail_on = 0, fail_on

    def propose(self, image):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return super().propose(image)


def images(count: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"img/{index}", torch.rand(3, 30 + index, 40)) for index in range(count)]


def test_get_or_compute_stores_and_reuses(tmp_path):
    method = CountingMethod()
    cache = ProposalCache(tmp_path / "c", method)
    image = torch.rand(3, 30, 40)
    first = cache.get_or_compute("a", image)
    again = cache.get_or_compute("a", lambda: pytest.fail("a cached image must not be loaded"))
    assert method.calls == 1 and torch.equal(first, again) and first.shape == (20, 4)
    reopened = ProposalCache(tmp_path / "c", CountingMethod())
    assert "a" in reopened and len(reopened) == 1 and torch.equal(reopened.get("a"), first)
    read_only = ProposalCache(tmp_path / "c")
    with pytest.raises(KeyError):
        read_only.get_or_compute("b", image)


def test_different_settings_are_refused_and_opening_writes_nothing(tmp_path):
    ProposalCache(tmp_path / "c", "uniform")  # a method name builds it with defaults (seed 0)
    assert not (tmp_path / "c").exists()  # created when the first proposals are stored
    ProposalCache(tmp_path / "c", UniformBoxes(seed=0)).put("a", torch.zeros(1, 4))
    ProposalCache(tmp_path / "c", UniformBoxes(seed=0))
    with pytest.raises(ValueError, match="another directory"):
        ProposalCache(tmp_path / "c", UniformBoxes(seed=1))


def test_interrupted_fill_resumes_without_redoing_finished_images(tmp_path):
    items = images(8)
    with pytest.raises(KeyboardInterrupt):
        ProposalCache(tmp_path / "c", CountingMethod(fail_on=4)).fill(items)
    resumed = CountingMethod()
    cache = ProposalCache(tmp_path / "c", resumed)
    assert len(cache) == 3
    assert cache.fill(items) == 5 and resumed.calls == 5
    reference = CountingMethod()
    for image_id, image in items:
        assert torch.equal(cache.get(image_id), reference.propose(image))


def test_torn_index_line_and_orphan_temporary_file_are_ignored(tmp_path):
    cache = ProposalCache(tmp_path / "c", CountingMethod())
    cache.fill(images(2))
    with open(tmp_path / "c" / "index.jsonl", "a") as handle:
        handle.write('{"image_id": "img/2", "fi')  # killed mid-write
    (tmp_path / "c" / "boxes" / "half-written.npy.tmp").write_bytes(b"\x93NUMPY")
    method = CountingMethod()
    cache = ProposalCache(tmp_path / "c", method)
    assert len(cache) == 2
    cache.fill(images(3))
    assert method.calls == 1
    assert len(ProposalCache(tmp_path / "c", CountingMethod())) == 3


# A process filling cache argv[1] with 40 seeded images, each taking argv[2] seconds.
WORKER = """
import sys, time
import torch
from detlab.proposals import ProposalCache, UniformBoxes

class Slow(UniformBoxes):
    def propose(self, image):
        time.sleep(float(sys.argv[2]))
        return super().propose(image)

cache = ProposalCache(sys.argv[1], Slow(max_proposals=20))
cache.fill((f"img{index}", torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(index))) for index in range(40))
"""


def test_a_killed_process_resumes_where_it_stopped(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "c"), "0.15"], env=environment)
    index = tmp_path / "c" / "index.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not index.exists() or len(index.read_text().splitlines()) < 5):
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    finished = len(ProposalCache(tmp_path / "c"))
    assert 5 <= finished < 40
    method = UniformBoxes(max_proposals=20)
    calls = []
    method.propose = lambda image, original=method.propose: calls.append(1) or original(image)
    ProposalCache(tmp_path / "c", method).fill((f"img{index}", torch.rand(3, 20, 20)) for index in range(40))
    assert len(calls) == 40 - finished
    assert all(np.load(path).shape == (20, 4) for path in (tmp_path / "c" / "boxes").glob("*.npy"))


def test_record_proposals_fill_in_processes_and_move_with_the_augmentations(tmp_path):
    import torch

    from detlab.data.loading import load_dataset
    from detlab.data.transforms import build_transforms
    from detlab.proposals import ProposalCache, RecordProposals, build_method

    dataset = load_dataset("synthetic", "train", root=tmp_path / "data", num_synthetic=8)
    method = build_method("sliding", max_proposals=30)
    proposals = RecordProposals(ProposalCache(tmp_path / "cache", method))
    assert proposals.fill(dataset.records, workers=2, progress=False) == len(dataset)
    assert proposals.fill(dataset.records, workers=2, progress=False) == 0  # all cached now
    for record in dataset.records:
        torch.testing.assert_close(proposals(record), method.propose(record.image_path))
    # Attached by the data set before the transforms, the boxes follow a flip with the image.
    flipped = dataset.with_options(proposals=proposals).with_transforms(
        build_transforms(True, horizontal_flip=True)
    )
    plain = dataset.with_options(proposals=proposals)
    for index in range(len(dataset)):
        torch.manual_seed(index)
        image, target = flipped[index]
        original, original_target = plain[index]
        if torch.equal(image, original):
            torch.testing.assert_close(target["proposals"], original_target["proposals"])
        else:
            width = image.shape[-1]
            mirrored = original_target["proposals"][:, [2, 1, 0, 3]] * torch.tensor(
                [-1, 1, -1, 1]
            ) + torch.tensor([width, 0, width, 0])
            torch.testing.assert_close(target["proposals"], mirrored)
    # Two data sets with the same image ids do not share boxes: the key holds the image's path.
    other = load_dataset("synthetic", "train", root=tmp_path / "other", num_synthetic=8)
    assert proposals.key(other.records[0]) != proposals.key(dataset.records[0])


def test_two_processes_filling_one_cache_at_once_leave_it_whole(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "c"), "0.02"], env=environment)
        for _ in range(2)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    cache = ProposalCache(tmp_path / "c", UniformBoxes(max_proposals=20))
    assert len(cache) == 40 and not list((tmp_path / "c").rglob("*.tmp"))
    lines = (tmp_path / "c" / "index.jsonl").read_text().splitlines()
    assert len(lines) >= 40 and all(line.startswith("{") and line.endswith("}") for line in lines)
    method = UniformBoxes(max_proposals=20)
    for index in range(40):
        image = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(index))
        torch.testing.assert_close(cache.get(f"img{index}"), method.propose(image))
