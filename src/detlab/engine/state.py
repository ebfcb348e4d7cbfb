"""Where a training run is (:class:`TrainingState`) and how a call of ``fit`` ended (:class:`FitResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainingState:
    """Where training is. ``epoch`` is the epoch in progress (0-based), ``batch_in_epoch`` the
    batches of it this process trained on and ``images_in_epoch`` the places of the epoch's order
    used by all processes together, so a resumed run starts exactly where this one stopped, also
    on another number of processes (``world_size``). ``schedule_step`` is where the learning-rate
    schedule is, counted in steps of the run's first ``start_world_size`` processes: a step of
    ``W`` processes advances it by ``W / start_world_size``, so the schedule follows the images
    seen whatever the number of processes (with an unchanged number it is ``step``)."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    images_in_epoch: int = 0
    world_size: int = 1
    start_world_size: int = 1
    schedule_step: float = 0.0
    elapsed_s: float = 0.0
    best_metric: float | None = None
    best_epoch: int = -1

    @classmethod
    def starting(cls, resumed: dict | None, batch_size: int, world_size: int) -> TrainingState:
        """Where a run starts on ``world_size`` processes: its resume point's progress, or the start."""
        state = (
            cls.from_progress(resumed["progress"], batch_size)
            if resumed
            else cls(start_world_size=world_size)
        )
        state.world_size = world_size
        return state

    @classmethod
    def from_progress(cls, progress: dict, batch_size: int) -> TrainingState:
        """A checkpoint's ``progress`` (one from before ``images_in_epoch`` and ``schedule_step``
        were kept was written by one process)."""
        progress = dict(progress)
        progress.setdefault("images_in_epoch", progress.get("batch_in_epoch", 0) * batch_size)
        progress.setdefault("schedule_step", float(progress.get("step", 0)))
        return cls(**progress)


@dataclass
class FitResult:
    """``status``: ``finished``, ``already_finished`` (a resumed run whose budget was already
    spent: nothing trained), ``interrupted`` (SIGINT/SIGTERM; resume it) or ``paused``."""

    run_dir: Path
    status: str
    state: TrainingState
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)
    signal_name: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("finished", "already_finished")
