import sys
from pathlib import Path

import pytest
import torch

# The tiny detector module is imported by name, also by the processes the DDP test spawns.
sys.path.insert(0, str(Path(__file__).parent))

from tiny_detector import TINY_METHOD, SquaresDataset, TinyDetector  # noqa: E402

from detlab.config import TrainConfig  # noqa: E402
from detlab.engine import RunHeader, fit  # noqa: E402


@pytest.fixture(autouse=True)
def torch_threads():
    """One thread: the engine tests compare weights to 1e-6 across runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_in_models(monkeypatch):
    """Register the tiny detector as MODELS['tiny'] for the duration of a test."""
    from detlab import models

    monkeypatch.setitem(models.MODELS, "tiny", TINY_METHOD)
    return "tiny"


@pytest.fixture
def tiny_run(tmp_path, tiny_in_models):
    """A run folder of the tiny detector trained two epochs on ten images (seeded)."""
    torch.manual_seed(0)
    run_config = {"model_name": "tiny", "data": {}, "train": {}, "model": {"width": 8, "dropout": 0.2}}
    fit(
        TinyDetector(),
        SquaresDataset(10),
        TrainConfig(epochs=2, device="cpu"),
        tmp_path / "run",
        header=RunHeader("tiny", ["red", "green"], run_config),
    )
    return tmp_path / "run"
