"""Checkpoints: written atomically, verified when read, loaded without ever running code from the file.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data (dicts, lists,
str, int, float, bool, None)::

    {"format": "detlab-checkpoint", "version": 2,
     "model_name": str, "classes": [str, ...], "config": {resolved run config as a plain dict},
     "model": state_dict, "optimizer": state_dict | None, "schedule": dict | None,
     "scaler": dict | None, "progress": {"epoch", "step", "batch_in_epoch", "images_in_epoch",
     "world_size", "start_world_size", "schedule_step", "elapsed_s", "best_metric", "best_epoch"},
     "rng": {"python", "numpy", "torch", "cuda"} (rank 0's), "rng_ranks": [rng of each rank],
     "metrics": dict, "sha256": hex digest of everything above}

It is read with ``torch.load(weights_only=True)`` only, so a file that smuggles a pickled object
(whose ``__reduce__`` could run anything) is refused before any of it is built. The digest is of
the values (:func:`content_digest`), not of the file's bytes: it does not depend on how torch lays
the file out, and a damaged file that still loads gives other values, hence another digest, so it
is refused. Version 1 files (no digest) still load, unverified. Every way a file can fail to be a
checkpoint ends in one :class:`CheckpointError` naming it, never in another exception.

Writing goes to a temporary file in the same folder, then ``os.replace``: a crash mid-write leaves
the previous checkpoint intact, never a truncated one, and a failed write (a full disk) raises one
:class:`~detlab.errors.SaveError` naming the file. The temporary files a killed process leaves are
removed when the run starts or resumes again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import hashlib
import hmac
import io
import os
import pickle
import random
import re
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from detlab.engine.distributed import Context, gather_to_main, read_on_main
from detlab.engine.state import FitResult, TrainingState
from detlab.errors import BadInputError, SaveError, is_disk_full

FORMAT = "detlab-checkpoint"
VERSION = 2  # 2: a SHA-256 digest of the contents; 1 (legacy): none
DIGEST_KEY = "sha256"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
TEMPORARY_SUFFIX = ".tmp"  # write_atomically's temporary files: .<name>.<random><suffix>


class CheckpointError(BadInputError):
    """A file that is not a usable detlab checkpoint: unreadable, damaged, of another kind, or
    holding what detlab never writes. The message is one line naming the file."""


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


def content_digest(checkpoint: dict) -> str:
    """The SHA-256 (hex) of everything ``checkpoint`` holds but its digest: each tensor's dtype,
    shape and bytes in row-major order, each plain value with its type, dicts in their order.
    Computed from the values rather than the file's bytes, so it is the same whatever torch
    version or zip layout wrote the file, and a file whose damage still loads gives other values.
    Raises ``TypeError`` for a value a checkpoint never holds."""
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in checkpoint.items() if key != DIGEST_KEY})
    return hasher.hexdigest()


def _feed(hasher, value) -> None:
    # Every value is framed by a type tag and a length, so two different contents never feed the
    # same bytes (an int 1 is not True, a list is not a tuple, "ab", "c" is not "a", "bc").
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{flat.dtype}{tuple(value.shape)};".encode())
        hasher.update(flat.view(torch.uint8).numpy())
    elif value is None:
        hasher.update(b"N;")
    elif isinstance(value, bool):
        hasher.update(b"B1;" if value else b"B0;")
    elif isinstance(value, int):
        hasher.update(b"I%d;" % value)
    elif isinstance(value, float):
        hasher.update(b"F" + struct.pack("<d", value))  # the exact bits pickle keeps, NaN included
    elif isinstance(value, (str, bytes)):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        hasher.update(b"%s%d;" % (b"S" if isinstance(value, str) else b"Y", len(data)) + data)
    elif isinstance(value, (list, tuple)):
        hasher.update(b"%s%d;" % (b"L" if isinstance(value, list) else b"U", len(value)))
        for item in value:
            _feed(hasher, item)
    elif isinstance(value, dict):
        hasher.update(b"D%d;" % len(value))
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
        # a state dict's _metadata (its modules' versions) steers load_state_dict: it counts too
        attributes = vars(value) if isinstance(value, collections.OrderedDict) else {}
        if attributes:
            hasher.update(b"A")
            _feed(hasher, dict(attributes))
    else:
        raise TypeError(f"a value of type {type(value).__name__}")


def stamped(checkpoint: dict) -> dict:
    """``checkpoint`` with this format's tag and version first and the digest of it all last
    (replacing any it held: a checkpoint read, changed and saved again is stamped anew)."""
    contents = {"format": FORMAT, "version": VERSION}
    contents.update((key, value) for key, value in checkpoint.items() if key not in (*contents, DIGEST_KEY))
    contents[DIGEST_KEY] = content_digest(contents)
    return contents


def serialize(checkpoint: dict) -> bytes:
    """The bytes of ``checkpoint`` as ``torch.save`` writes them."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def temporary_files(path: Path) -> list[Path]:
    """The temporary files :func:`write_atomically` makes on its way to ``path`` (one a write in
    progress; any other was left by a process killed mid-write)."""
    pattern = f".{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}"
    return sorted(path.parent.glob(pattern)) if path.parent.is_dir() else []


def remove_temporaries(path: Path) -> list[Path]:
    """Remove what a killed write to ``path`` left behind; returns the files removed. Call it only
    when no write to ``path`` is in progress (a run's start, on the rank that writes)."""
    removed = []
    for leftover in temporary_files(path):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: it is only space
            leftover.unlink()
            removed.append(leftover)
    return removed


def write_atomically(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.
    A failed write (a full disk) removes its temporary file, leaves ``path`` as it was and raises
    :class:`~detlab.errors.SaveError` naming ``path``."""
    path = Path(path)
    existed = path.exists()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
        )
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, SaveError):
            note = "the file there is unchanged" if existed else "nothing was written there"
            raise SaveError(path, error, note) from error
        raise
    return path


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Stamp ``checkpoint`` (format tag, version, digest: :func:`stamped`) and write it atomically
    to ``path``."""
    return write_atomically(serialize(stamped(checkpoint)), path)


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
    """Read a detlab checkpoint safely (``weights_only=True``: tensors and plain data only) and
    verify it: its digest (version 2; a version 1 file has none and loads unverified), its format
    tag and version, and the types of the fields detlab reads.

    Raises :class:`CheckpointError` (a ``ValueError``) naming the file for everything else: a file
    that would run code when loaded, a truncated or damaged one, one that is not a checkpoint;
    ``FileNotFoundError`` when it is missing.
    """
    path = resolve_checkpoint_path(path)
    checkpoint = read_checkpoint_file(path, map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(path, f"not a detlab checkpoint (no '{FORMAT}' format tag)")
    if "version" not in checkpoint:  # every detlab checkpoint has one: a damaged key
        raise CheckpointError(path, "damaged: it holds no version")
    version = checkpoint["version"]
    if type(version) is not int:
        raise CheckpointError(path, f"damaged: its version is {version!r}, not a number")
    if version > VERSION:
        raise CheckpointError(
            path, f"checkpoint version {version} is newer than this detlab reads ({VERSION}); upgrade detlab"
        )
    verify_digest(checkpoint, path)
    check_fields(checkpoint, path)
    return checkpoint


# Lines of torch.load's errors that say what was wrong (the rest is advice about torch.load itself).
_INFORMATIVE = re.compile(r"WeightsUnpickler error:\s*(.*)|(.*unsupported GLOBAL.*)|(Unsupported global.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON = 160


def short_reason(error: BaseException) -> str:
    """The informative first line of ``error``, with its type, at most ``MAX_REASON`` characters."""
    text = _ANSI.sub("", str(error))
    match = _INFORMATIVE.search(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # "Error(s) in loading state_dict for X:" says what follows; the next line says what is wrong
    first = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    line = next((group for group in match.groups() if group and group.strip()), first) if match else first
    if len(line) > MAX_REASON // 2:  # torch's long messages say what failed first, then give advice
        line = line.split(". ")[0]
    reason = f"{type(error).__name__}: {line.strip()}" if line.strip() else type(error).__name__
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def read_checkpoint_file(path: Path, map_location) -> object:
    """``torch.load(path, weights_only=True)``, every failure a :class:`CheckpointError`."""
    if path.stat().st_size == 0:
        raise CheckpointError(path, "an empty file, not a checkpoint (a copy or a save that did not finish?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except Exception as error:
        # Damaged bytes make torch.load fail in every way there is (RuntimeError, KeyError,
        # struct.error, UnicodeDecodeError, EOFError...): each is the file's fault, said in one line.
        reason = short_reason(error)
        if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in str(error):
            raise CheckpointError(
                path,
                f"refused to load: the file holds Python objects other than tensors and plain data, and "
                f"loading them could run code ({reason}). detlab checkpoints never need that; only load "
                "files you made with detlab or trust completely",
            ) from None
        raise CheckpointError(
            path, f"not a readable checkpoint, damaged or of another kind ({reason})"
        ) from None


def verify_digest(checkpoint: dict, path: Path) -> None:
    """Compare the digest stored in ``checkpoint`` with its contents' (:func:`content_digest`)."""
    stored = checkpoint.get(DIGEST_KEY)
    if stored is None:
        if checkpoint["version"] >= 2:  # damage to the digest's own name would otherwise pass as legacy
            raise CheckpointError(
                path, f"damaged: a version {checkpoint['version']} checkpoint without its digest"
            )
        return  # version 1: written before digests, loaded unverified
    try:
        found = content_digest(checkpoint)
    except TypeError as error:
        raise CheckpointError(path, f"damaged: it holds {error}, which detlab never writes") from None
    if not isinstance(stored, str) or not hmac.compare_digest(found, stored):
        raise CheckpointError(
            path,
            "damaged: its contents do not match the SHA-256 digest saved with them (changed bytes or an "
            "incomplete copy); use another copy or an earlier checkpoint",
        )


# The fields detlab reads and what each holds (None: may be None).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model_name": (str,),
    "classes": (list,),
    "config": (dict,),
    "model": (dict,),
    "training_model": (dict,),
    "ema_updates": (int,),
    "optimizer": (dict, type(None)),
    "schedule": (dict, type(None)),
    "scaler": (dict, type(None)),
    "progress": (dict,),
    "rng": (dict,),
    "rng_ranks": (list,),
    "metrics": (dict,),
}
PROGRESS_FIELDS = {field.name for field in dataclasses.fields(TrainingState)}


def check_fields(checkpoint: dict, path: Path) -> None:
    """Raise :class:`CheckpointError` when a field detlab reads holds another type than it writes
    (what damage to an unverified, version 1 file can do)."""
    problems = [
        f"'{key}' holds {type(checkpoint[key]).__name__}"
        for key, types in FIELD_TYPES.items()
        if key in checkpoint and not isinstance(checkpoint[key], types)
    ]
    if not problems and isinstance(checkpoint.get("classes"), list):
        problems += [
            f"a class name is {type(name).__name__}"
            for name in checkpoint["classes"]
            if type(name) is not str
        ]
    for key in ("model", "training_model"):
        if not problems and isinstance(checkpoint.get(key), dict):
            problems += [
                f"'{key}' holds {name!r}: {type(value).__name__}"
                for name, value in checkpoint[key].items()
                if not isinstance(name, str) or not isinstance(value, torch.Tensor)
            ]
    if not problems and isinstance(checkpoint.get("progress"), dict):
        problems += [
            f"its progress holds {name!r}: {value!r}"
            for name, value in checkpoint["progress"].items()
            if name not in PROGRESS_FIELDS or not isinstance(value, (int, float, type(None)))
        ]
    if problems:
        raise CheckpointError(path, f"damaged or not written by detlab: {problems[0]}")


@contextlib.contextmanager
def put_to_use(checkpoint: dict, path: str | Path):
    """Around code that builds a model from ``checkpoint`` (read from ``path``) and loads its
    weights: a failure becomes a one-line :class:`CheckpointError` naming the file. Weights that do
    not fit (``RuntimeError``, ``KeyError``, ``ValueError``) always; any ``Exception`` for a
    checkpoint without a digest, whose contents nothing verified (damage may have made any value)."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:
        verified = DIGEST_KEY in checkpoint
        if verified and not isinstance(error, (RuntimeError, KeyError, ValueError)):
            raise
        note = "" if verified else "; it has no digest (version 1), so damage may be the cause"
        raise CheckpointError(
            path, f"its model cannot be built or does not take its weights ({short_reason(error)}){note}"
        ) from None


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
        # the step last.pt holds, for the message when a save fails (-1: none of this run yet)
        self.written_step = self.state.step if resumed else -1
        if context.is_main:  # no write is in progress yet: what is there, a killed run left
            removed = remove_temporaries(self.run_dir / LAST_NAME) + remove_temporaries(
                self.run_dir / BEST_NAME
            )
            if removed:
                print(
                    f"removed {len(removed)} temporary file(s) a killed run left in {self.run_dir}: "
                    + ", ".join(path.name for path in removed),
                    file=sys.stderr,
                )

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
            stamped(
                {
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
        )
        try:
            self.last_path = write_atomically(data, self.run_dir / LAST_NAME)
            self.written_step = self.state.step
            if include_best:
                self.best_path = write_atomically(data, self.run_dir / BEST_NAME)
        except SaveError as error:
            raise SaveError(error.filename, error, self.after_failed_save()) from error

    def after_failed_save(self) -> str:
        """What a failed save leaves and what to do (the note of its :class:`SaveError`)."""
        if self.written_step < 0:
            return "no checkpoint of this run was saved; free some space and start it again"
        return (
            f"{self.run_dir / LAST_NAME} is intact and holds step {self.written_step}: free some space, then "
            f"resume with: detlab train --resume {self.run_dir}"
        )

    def result(self, status: str, signal_name: str | None = None) -> FitResult:
        """What ``fit`` returns when the run ends with ``status``: its checkpoints and last metrics."""
        return FitResult(
            self.run_dir, status, self.state, self.last_path, self.best_path, self.metrics, signal_name
        )

    def save_after_error(self, model: torch.nn.Module, training, error: Exception) -> None:
        """After ``error`` in training: save the last finished step, this rank's alone (the error
        may be this rank's only: no collective), and say how to resume. Not after a failed save or
        on a full disk, where a second save would fail too and its error hide the first; and a
        failure of this save is told in a line, so that ``error`` is what propagates."""
        if self.state.step == 0 or isinstance(error, SaveError) or is_disk_full(error):
            return
        try:
            self.save(model, training, include_best=False, gather=False)
        except OSError as failure:
            print(f"\ntraining stopped by an error, and saving it failed too: {failure}", file=sys.stderr)
            return
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
    source = Path(resume) / LAST_NAME if Path(resume).is_dir() else Path(resume)
    missing = [key for key in ("model", "progress") if key not in resumed]
    if missing:
        raise CheckpointError(source, f"holds no '{missing[0]}': not the checkpoint of a training run")
    with put_to_use(resumed, source):
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
