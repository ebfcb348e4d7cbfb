"""Checkpoints: written atomically, loaded without ever running code from the file.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data (dicts, lists,
str, int, float, bool, None)::

    {"format": "detlab-checkpoint", "version": 1,
     "model_name": str, "classes": [str, ...], "config": {resolved run config as a plain dict},
     "model": state_dict, "optimizer": state_dict | None, "schedule": dict | None,
     "scaler": dict | None, "progress": {"epoch", "step", "batch_in_epoch", "images_in_epoch",
     "world_size", "start_world_size", "schedule_step", "elapsed_s", "best_metric", "best_epoch"},
     "rng": {"python", "numpy", "torch", "cuda"} (rank 0's), "rng_ranks": [rng of each rank],
     "metrics": dict}

It is read with ``torch.load(weights_only=True)`` only, so a file that smuggles a pickled object
(whose ``__reduce__`` could run anything) is refused before any of it is built. Writing goes to a
temporary file in the same folder, then ``os.replace``: a crash mid-write leaves the previous
checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import random
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from detlab.engine.distributed import Context, gather_to_main, read_on_main
from detlab.engine.state import FitResult, TrainingState

FORMAT = "detlab-checkpoint"
VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def capture_rng_state() -> dict:
    """Every random generator this process draws from, as plain data (tensors, ints, lists): the
    CUDA state of this process's own device only (another machine may have fewer devices)."""
    numpy_state = np.random.get_state(legacy=False)
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()]
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # this process's device; a checkpoint of an older detlab held every visible device's state
        torch.cuda.set_rng_state(state["cuda"][min(torch.cuda.current_device(), len(state["cuda"]) - 1)])
    elif state["cuda"]:
        warnings.warn(
            "the checkpoint holds a CUDA random state but CUDA is not available here: the GPU's "
            "random numbers are not restored (the CPU's are)",
            stacklevel=2,
        )


def rank_rng_state(checkpoint: dict, rank: int, world_size: int) -> dict | None:
    """The random state rank ``rank`` of ``world_size`` processes resumes with: its own when the
    checkpoint was written by as many processes; otherwise its own if it had one (a warning says
    the others start afresh), else ``None`` (start from a fresh seed). Checkpoints of one process,
    or from before per-rank states, hold rank 0's only."""
    states = checkpoint.get("rng_ranks") or [checkpoint["rng"]]
    if len(states) != world_size and rank == 0:
        warnings.warn(
            f"the checkpoint was written by {len(states)} process(es), this run has {world_size}: "
            f"ranks below {len(states)} keep their random state, the others are seeded afresh; the data "
            "order and augmentations still continue exactly",
            stacklevel=2,
        )
    return states[rank] if rank < len(states) else None


def serialize(checkpoint: dict) -> bytes:
    """The bytes of ``checkpoint`` as ``torch.save`` writes them."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def write_atomically(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Stamp ``checkpoint`` with the format tag and write it atomically to ``path``."""
    checkpoint = {"format": FORMAT, "version": VERSION, **checkpoint}
    return write_atomically(serialize(checkpoint), path)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a file, a file without its ``.pt`` suffix (``RUN/best``) or a run folder.

    A run folder resolves to its ``best.pt`` when one exists (evaluation ran), else ``last.pt``.
    """
    path = Path(path)
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".pt")
    if with_suffix.is_file():
        return with_suffix
    if path.is_dir():
        for name in (BEST_NAME, LAST_NAME):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: run folder holds no checkpoint ({BEST_NAME} or {LAST_NAME})")
    raise FileNotFoundError(
        f"{path}: no such checkpoint (give a .pt file, RUN/best, RUN/last or a run folder)"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a detlab checkpoint safely (``weights_only=True``: tensors and plain data only).

    Raises ``ValueError`` naming the file when it holds anything else (a pickled object, which
    could run code while loading) or is not a detlab checkpoint, ``FileNotFoundError`` when missing.
    """
    path = resolve_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain data, "
            f"and loading them could run code ({first_line}). detlab checkpoints never need that; "
            "only load files you made with detlab or trust completely."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path}: not a detlab checkpoint (no '{FORMAT}' format tag)")
    if checkpoint.get("version", 0) > VERSION:
        raise ValueError(
            f"{path}: checkpoint version {checkpoint['version']} is newer than this detlab reads ({VERSION}); "
            "upgrade detlab"
        )
    return checkpoint


def existing(path: Path) -> Path | None:
    return path if path.exists() else None


def already_finished(run_dir: Path, stored: dict, state: TrainingState) -> FitResult:
    """The result of resuming a run whose budget is spent (``stored``: its ``last.pt``): nothing trained."""
    metrics = dict(stored.get("metrics") or {})
    return FitResult(
        run_dir, "already_finished", state, run_dir / LAST_NAME, existing(run_dir / BEST_NAME), metrics
    )


class Checkpointer:
    """Writes a run's ``last.pt`` (and ``best.pt``) on rank 0: the weights (the averaged ones as
    ``model`` when the run keeps an average, the trained ones as ``training_model``), optimiser,
    schedule, scaler, progress and random state, with the run's ``header`` (model name, classes,
    config) and the latest evaluation ``metrics``."""

    def __init__(
        self, run_dir: Path, context: Context, state: TrainingState, header: dict, resumed: dict | None
    ):
        self.run_dir, self.context, self.state, self.header = Path(run_dir), context, state, header
        self.metrics = dict(resumed.get("metrics") or {}) if resumed else {}
        self.last_path = self.run_dir / LAST_NAME if resumed and context.is_main else None
        self.best_path = existing(self.run_dir / BEST_NAME) if resumed else None
        self.saved_at_step = self.evaluated_at_step = -1

    def save(self, model: torch.nn.Module, training, include_best: bool, gather: bool = True) -> None:
        """On every rank (``gather``: each rank's random state goes to rank 0 for the file);
        ``training``: the run's :class:`~detlab.engine.train.Optimisation` (optimiser, schedule,
        scaler, weight average)."""
        self.saved_at_step = self.state.step
        rng = capture_rng_state()
        rng_ranks = gather_to_main(rng, self.context) if gather else [rng]
        if not self.context.is_main:
            return
        weights = {"model": model.state_dict()}
        if training.average is not None:  # "model" is what evaluation uses; the trained weights resume
            weights = {
                "model": training.average.model.state_dict(),
                "training_model": model.state_dict(),
                "ema_updates": training.average.updates,
            }
        data = serialize(
            {
                "format": FORMAT,
                "version": VERSION,
                **self.header,
                **weights,
                "optimizer": training.optimizer.state_dict(),
                "schedule": training.schedule.state_dict(),
                "scaler": training.scaler.state_dict() if training.scaler.is_enabled() else None,
                "progress": dataclasses.asdict(self.state),
                "rng": rng,
                "rng_ranks": rng_ranks,
                "metrics": self.metrics,
            }
        )
        self.last_path = write_atomically(data, self.run_dir / LAST_NAME)
        if include_best:
            self.best_path = write_atomically(data, self.run_dir / BEST_NAME)

    def result(self, status: str, signal_name: str | None = None) -> FitResult:
        """What ``fit`` returns when the run ends with ``status``: its checkpoints and last metrics."""
        return FitResult(
            self.run_dir, status, self.state, self.last_path, self.best_path, self.metrics, signal_name
        )

    def save_after_error(self, model: torch.nn.Module, training) -> None:
        """After an error in training: save the last finished step, this rank's alone (the error
        may be this rank's only: no collective), and say how to resume."""
        if self.state.step == 0:
            return
        self.save(model, training, include_best=False, gather=False)
        if self.context.is_main:
            print(
                f"\ntraining stopped by an error after step {self.state.step}; {self.run_dir / LAST_NAME} holds "
                f"that step: fix the cause, then resume with: detlab train --resume {self.run_dir}",
                file=sys.stderr,
            )


def read_resume_point(resume: str | Path | None, run_dir: Path) -> dict | None:
    """The checkpoint ``resume`` names (a file or run folder), or ``None`` for a fresh run, which
    refuses a ``run_dir`` that already holds one."""
    if resume is None:
        if (run_dir / LAST_NAME).exists():
            raise ValueError(
                f"{run_dir} already holds a run ({LAST_NAME}); resume it with --resume {run_dir} "
                "or choose another output folder"
            )
        return None
    resume = Path(resume)
    return load_checkpoint(resume / LAST_NAME if resume.is_dir() else resume)


def load_resume_point(
    resume, run_dir: Path, model: torch.nn.Module, training, context: Context
) -> dict | None:
    """The checkpoint to continue from, its weights and optimiser state loaded into ``model`` and
    ``training`` (the run's :class:`~detlab.engine.train.Optimisation`); ``None`` for a fresh run.
    Rank 0 reads the run folder and sends what it found to the other ranks (their machines may not
    share its disk)."""
    resumed = read_on_main(lambda: read_resume_point(resume, run_dir), context)
    if resumed is None:
        return None
    model.load_state_dict(resumed.get("training_model") or resumed["model"])
    if resumed.get("optimizer"):
        training.optimizer.load_state_dict(resumed["optimizer"])
    if resumed.get("scaler"):
        training.scaler.load_state_dict(resumed["scaler"])
    return resumed


def seed_model_randomness(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def restore_random_state(resumed: dict | None, state: TrainingState, config, context: Context) -> None:
    """A resumed run's random state for this rank, or a fresh seed for a rank it did not have."""
    if resumed is None:
        return
    own = rank_rng_state(resumed, context.rank, context.world_size)
    if own is not None:
        restore_rng_state(own)
    else:
        seed_model_randomness(config.seed + context.rank + 7919 * state.step)
