"""The training engine every trainable detector uses.

:func:`fit` trains, evaluates, logs and checkpoints; :func:`train_one_epoch` and :func:`evaluate`
are the two plain steps it runs (:mod:`detlab.engine.train`). Checkpoints
(:mod:`detlab.engine.checkpoint`) load without running code from the file;
:mod:`detlab.engine.distributed` handles devices and torchrun/DDP.
"""

from detlab.engine.checkpoint import load_checkpoint, save_checkpoint
from detlab.engine.options import FitOptions, RunHeader
from detlab.engine.state import FitResult, TrainingState
from detlab.engine.step import NonFiniteLossError
from detlab.engine.train import evaluate, fit, train_one_epoch

__all__ = [
    "FitOptions",
    "FitResult",
    "NonFiniteLossError",
    "RunHeader",
    "TrainingState",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "train_one_epoch",
]
