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
