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


def test_a_checkpoint_carries_the_digest_of_its_contents_and_a_changed_value_is_refused(tmp_path):
    path = checkpoints.save_checkpoint(
        {"model": {"w": torch.arange(4.0)}, "classes": ["a"]}, tmp_path / "c.pt"
    )
    stored = torch.load(path, weights_only=True)
    assert stored["version"] == 2 and stored["sha256"] == checkpoints.content_digest(stored)
    assert torch.equal(checkpoints.load_checkpoint(path)["model"]["w"], torch.arange(4.0))
    for change in (
        {"w": torch.tensor([0.0, 1.0, 2.0, 3.5])},
        {"w": torch.arange(4)},
        {"v": torch.arange(4.0)},
    ):
        torch.save({**stored, "model": change}, path)  # the old digest, other contents
        with pytest.raises(checkpoints.CheckpointError, match="do not match the SHA-256 digest") as error:
            checkpoints.load_checkpoint(path)
        assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_a_checkpoint_saved_again_is_stamped_anew():
    first = checkpoints.stamped({"metrics": {}, "version": 1})
    again = checkpoints.stamped({**first, "metrics": {"AP": 0.5}})  # what a recipe's last step does
    assert again["version"] == checkpoints.VERSION
    assert again["sha256"] == checkpoints.content_digest(again) != first["sha256"]


def test_the_digest_tells_apart_what_pickle_tells_apart():
    digest = checkpoints.content_digest
    assert digest({"a": 1}) != digest({"a": True}) != digest({"a": 1.0})
    assert digest({"a": [1, 2]}) != digest({"a": (1, 2)})
    assert digest({"a": ["ab", "c"]}) != digest({"a": ["a", "bc"]})
    assert (
        digest({"a": torch.zeros(2, 3)}) != digest({"a": torch.zeros(3, 2)}) != digest({"a": torch.zeros(6)})
    )
    assert digest({"a": torch.zeros(2)}) != digest({"a": torch.zeros(2, dtype=torch.float64)})
    state = torch.nn.BatchNorm2d(2).state_dict()
    older = state.copy()
    older._metadata = {"": {"version": 1}}  # steers load_state_dict: it counts
    assert digest({"model": state}) != digest({"model": older})
    with pytest.raises(TypeError, match="set"):
        digest({"a": {1, 2}})


def test_a_version_1_checkpoint_without_a_digest_loads_unverified(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoints.FORMAT, "version": 1, "model": {"w": torch.ones(2)}}, path)
    assert torch.equal(checkpoints.load_checkpoint(path)["model"]["w"], torch.ones(2))
    torch.save({"format": checkpoints.FORMAT, "version": 2, "model": {"w": torch.ones(2)}}, path)
    with pytest.raises(checkpoints.CheckpointError, match="without its digest"):
        checkpoints.load_checkpoint(path)


def zip_without(data: bytes, dropped: str) -> bytes:
    """A torch zip file without its entries whose names end in ``dropped``."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith(dropped):
                target.writestr(info, source.read(info.filename))
    return buffer.getvalue()


def damaged_files(good: bytes) -> dict:
    """Every kind of file that is not a usable checkpoint, by what it is."""
    plain = {"format": checkpoints.FORMAT, "version": 1}
    return {
        "empty": b"",
        "text": b"hello world\n",
        "random bytes": bytes(range(256)) * 8,
        "truncated": good[: len(good) // 2],
        "zip without a tensor": zip_without(good, "data/0"),
        "zip without its pickle": zip_without(good, "data.pkl"),
        "not a dict": checkpoints.serialize([1, 2, 3]),
        "version is text": checkpoints.serialize({**plain, "version": "2"}),
        "classes is a number": checkpoints.serialize({**plain, "classes": 3}),
        "a class name is a number": checkpoints.serialize({**plain, "classes": ["a", 7]}),
        "weights hold text": checkpoints.serialize({**plain, "model": {"w": "x"}}),
        "progress holds text": checkpoints.serialize({**plain, "progress": {"step": "x"}}),
        "progress holds an unknown field": checkpoints.serialize({**plain, "progress": {"steps": 1}}),
        "digest is a number": checkpoints.serialize({**plain, "version": 2, "sha256": 7}),
    }


GOOD_FILE = checkpoints.serialize(checkpoints.stamped({"model": {"w": torch.arange(50.0)}}))


@pytest.mark.parametrize("kind", list(damaged_files(GOOD_FILE)))
def test_every_kind_of_damaged_checkpoint_ends_in_one_line_naming_it(tmp_path, kind, capsys):
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged_files(GOOD_FILE)[kind])
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    from detlab.cli import main

    assert (
        main(["predict", "--checkpoint", str(path), "--input", str(tmp_path), "--out", str(tmp_path / "o")])
        == 2
    )
    printed = capsys.readouterr().err.strip()
    assert printed == f"detlab predict: error: {message}"
