"""What a caller hands :func:`detlab.engine.fit` beyond the training config: what every checkpoint
says about the run (:class:`RunHeader`) and how the call runs (:class:`FitOptions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from detlab import config as config_io
from detlab.config import TrainConfig
from detlab.engine.distributed import Context


@dataclass
class RunHeader:
    """What every checkpoint of the run says about it: the method's name, the class names (labels
    1..C) and the resolved run config (a plain dict)."""

    model_name: str = ""
    classes: list[str] = field(default_factory=list)
    run_config: dict | None = None

    def fields(self, config: TrainConfig) -> dict:
        return {
            "model_name": self.model_name,
            "classes": list(self.classes),
            "config": self.run_config or {"train": config_io.to_dict(config)},
        }


@dataclass
class FitOptions:
    """How :func:`fit` runs beyond its config: ``context`` (devices, processes; default from
    ``config.device``), ``collate``, ``num_workers`` (the loaders' worker processes; ``None``:
    chosen by device), ``best_metric`` (the result key that picks ``best.pt``; default: the first of
    :data:`~detlab.engine.evaluation.BEST_METRIC_CANDIDATES` present), ``stop_at_step`` (save and
    return with status ``paused`` after that step, as an interruption would) and ``data_report``
    (what checking the data found: the first record of a fresh run's log)."""

    context: Context | None = None
    collate: Callable | None = None
    num_workers: int | None = None
    best_metric: str | None = None
    stop_at_step: int | None = None
    data_report: dict | None = None
