"""Saving under faults (issue 38): a full disk while a checkpoint is written, and a process killed
mid-write. Each ends in one clear error (or none), the previous ``last.pt`` intact, no temporary
file left for good, and the run resumes exactly."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_detector import SquaresDataset, TinyDetector

from detlab.config import TrainConfig
from detlab.engine import RunHeader, fit, load_checkpoint
from detlab.engine import checkpoint as checkpoints
from detlab.errors import SaveError

HERE = Path(__file__).parent
SOURCE = HERE.parents[1] / "src"
CONFIG = TrainConfig(epochs=3, batch_size=2, lr=0.05, warmup_steps=3, log_every=1, eval_every=0, device="cpu")


class FullDisk:
    """A disk that fills up: from the ``fail_from``-th file opened for writing by
    :func:`~detlab.engine.checkpoint.write_atomically` on, writing to it fails with ``ENOSPC`` (the
    temporary file exists by then, as on a real full disk). ``failed``: the writes refused."""

    def __init__(self, monkeypatch, fail_from: int):
        self.opened, self.failed, self.fail_from = 0, 0, fail_from
        real_fdopen = os.fdopen

        def fdopen(handle, *args, **kwargs):
            self.opened += 1
            file = real_fdopen(handle, *args, **kwargs)
            return file if self.opened < self.fail_from else self.Refusing(file, self)

        monkeypatch.setattr(checkpoints.os, "fdopen", fdopen)

    class Refusing:
        def __init__(self, file, disk):
            self.file, self.disk = file, disk

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

        def write(self, data):
            self.disk.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def train_tiny(run_dir, resume=None):
    torch.manual_seed(0)
    model = TinyDetector()
    header = RunHeader("tiny", ["red", "green"], {"model_name": "tiny"})
    result = fit(model, SquaresDataset(10), CONFIG, run_dir, header=header, resume=resume)
    return model, result


def assert_same_weights(found: TinyDetector, expected: TinyDetector) -> None:
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(found.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)


def test_a_full_disk_ends_in_one_error_keeps_last_pt_and_the_run_resumes_exactly(
    tmp_path, monkeypatch, capsys
):
    straight, _ = train_tiny(tmp_path / "straight")
    run = tmp_path / "run"
    disk = FullDisk(monkeypatch, fail_from=2)  # epoch 1's last.pt is written; epoch 2's is not
    with pytest.raises(SaveError) as error:
        train_tiny(run)
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and "\n" not in message
    assert message.startswith(f"{run / 'last.pt'}: could not be written (No space left on device)")
    assert f"holds step 5: free some space, then resume with: detlab train --resume {run}" in message
    assert disk.failed == 1  # no second full save on the full disk
    assert "saving it failed too" not in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 5  # the previous last.pt, intact
    assert sorted(path.name for path in run.iterdir() if path.name.endswith(".tmp")) == []
    monkeypatch.undo()  # space freed
    resumed, result = train_tiny(run, resume=run)
    assert result.status == "finished" and result.state.step == 15
    assert_same_weights(resumed, straight)


def test_the_command_line_shows_a_full_disk_as_one_line(tmp_path, monkeypatch, capsys):
    from detlab import api
    from detlab.cli import main

    FullDisk(monkeypatch, fail_from=1)
    monkeypatch.setattr(api, "train", lambda *args, **kwargs: train_tiny(tmp_path / "run")[1])
    assert main(["train", "faster_rcnn", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"detlab train: error: {tmp_path / 'run' / 'last.pt'}: could not be written")
    assert "No space left on device" in error and "no checkpoint of this run was saved" in error
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_error_whose_save_fails_too_propagates_itself(tmp_path, monkeypatch, capsys):
    """An error of training (not of the disk) saves last.pt; when that save fails as well, the
    error that stopped training is what the caller gets, and the failed save is one more line."""

    class FailingRead(SquaresDataset):
        reads = 0

        def __getitem__(self, index):
            FailingRead.reads += 1
            if FailingRead.reads == 13:  # epoch 2, after its first step
                raise ValueError(f"image {index}: corrupt or truncated image")
            return super().__getitem__(index)

    FullDisk(monkeypatch, fail_from=2)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fit(TinyDetector(), FailingRead(10), CONFIG, tmp_path / "run", header=RunHeader(classes=["a", "b"]))
    assert "saving it failed too" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 5


KILLED_SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
import torch
from tiny_detector import SquaresDataset, TinyDetector
from detlab.config import TrainConfig
from detlab.engine import RunHeader, fit
from detlab.engine import checkpoint as checkpoints

torch.set_num_threads(1)
saves = []
real_fsync = os.fsync

def fsync_then_hang(handle):
    # the second checkpoint's bytes are in its temporary file: the process is killed here
    saves.append(handle)
    if len(saves) == 2:
        Path({marker!r}).touch()
        time.sleep(600)
    real_fsync(handle)

checkpoints.os.fsync = fsync_then_hang
config = TrainConfig(epochs=3, batch_size=2, lr=0.05, warmup_steps=3, log_every=1, eval_every=0, device="cpu")
torch.manual_seed(0)
fit(TinyDetector(), SquaresDataset(10), config, {run!r}, header=RunHeader("tiny", ["red", "green"], {{"model_name": "tiny"}}))
"""


def test_temporary_files_of_a_killed_run_are_removed_when_it_resumes(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "writing"
    script = tmp_path / "train.py"
    script.write_text(KILLED_SCRIPT.format(here=str(HERE), run=str(run), marker=str(marker)))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": str(SOURCE)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline and not marker.exists() and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), process.stderr.read() if process.poll() is not None else "no second save"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    leftovers = sorted(path.name for path in run.glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1  # the killed write's
    (run / ".unrelated.tmp").write_text("not detlab's")
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 5
    straight, _ = train_tiny(tmp_path / "straight")
    resumed, result = train_tiny(run, resume=run)
    assert (
        f"removed 1 temporary file(s) a killed run left in {run}: {leftovers[0]}" in capsys.readouterr().err
    )
    assert sorted(path.name for path in run.glob(".*.tmp")) == [".unrelated.tmp"]
    assert result.state.step == 15
    assert_same_weights(resumed, straight)


def test_resuming_from_a_checkpoint_whose_weights_do_not_fit_ends_in_one_line(tmp_path):
    train_tiny(tmp_path / "run")
    header = RunHeader("tiny", ["red", "green"], {"model_name": "tiny"})
    with pytest.raises(checkpoints.CheckpointError) as error:
        fit(
            TinyDetector(width=4),
            SquaresDataset(10),
            CONFIG,
            tmp_path / "run",
            header=header,
            resume=tmp_path / "run",
        )
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'run' / 'last.pt'}: its model cannot be built or does not take its weights"
    )
    assert "size mismatch" in message and "\n" not in message
