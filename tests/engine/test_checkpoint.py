"""Checkpoints: atomic writes, RNG round trip, and refusal of files that would run code."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from detlab.engine import checkpoint as checkpoints


class WritesAMarker:
    """A pickle payload: unpickling it calls os.mkdir(marker), creating the marker (a folder, so no
    file handle is left open to warn about)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_refuses_a_pickled_payload_and_runs_none_of_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": checkpoints.FORMAT, "version": 1, "model": {}, "extra": WritesAMarker(marker)}, path
    )
    with pytest.raises(ValueError, match="refused to load") as error:
        checkpoints.load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    # the payload is real: an unsafe load does create the marker
    torch.load(path, weights_only=False)
    assert marker.exists()


# torch warns that a protocol-4 pickle is not what torch.save writes: true, and the point here
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_plain_pickle_file_is_refused_too(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": checkpoints.FORMAT, "x": WritesAMarker(marker)}))
    with pytest.raises(ValueError):
        checkpoints.load_checkpoint(path)
    assert not marker.exists()


def test_not_a_detlab_checkpoint_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a detlab checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        checkpoints.load_checkpoint(tmp_path / "nothing")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "run")


def test_paths_resolve_run_best_and_folders(tmp_path):
    run = tmp_path / "run"
    checkpoints.save_checkpoint({"progress": {"step": 1}}, run / "last.pt")
    assert checkpoints.resolve_checkpoint_path(run) == run / "last.pt"
    checkpoints.save_checkpoint({"progress": {"step": 2}}, run / "best.pt")
    assert checkpoints.resolve_checkpoint_path(run) == run / "best.pt"
    assert checkpoints.load_checkpoint(run / "last")["progress"]["step"] == 1


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint({"progress": {"step": 1}}, path)

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint({"progress": {"step": 2}}, path)
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["progress"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    checkpoints.save_checkpoint({"rng": checkpoints.capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoints.restore_rng_state(checkpoints.load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert expected[:3] == again[:3]
    assert torch.equal(expected[3], again[3])


def test_each_rank_resumes_with_its_own_random_state_and_a_changed_count_warns():
    from detlab.engine.checkpoint import capture_rng_state, rank_rng_state

    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(capture_rng_state())
    checkpoint = {"rng": states[0], "rng_ranks": states}
    assert rank_rng_state(checkpoint, 1, 2) is states[1]
    with pytest.warns(UserWarning, match="written by 2 process"):
        assert rank_rng_state(checkpoint, 0, 3) is states[0]
    assert rank_rng_state(checkpoint, 2, 3) is None  # a new rank: seeded afresh
    assert rank_rng_state({"rng": states[0]}, 0, 1) is states[0]  # a checkpoint of one process


def test_a_gpu_random_state_on_a_machine_without_one_restores_the_rest_and_warns():
    from detlab.engine.checkpoint import capture_rng_state, restore_rng_state

    torch.manual_seed(5)
    state = capture_rng_state()
    expected = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as a GPU run saves it
    torch.manual_seed(6)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        restore_rng_state(state)
    torch.testing.assert_close(torch.rand(3), expected)
