import sys
from pathlib import Path

import pytest
import torch

# The tiny detector module is imported by name, also by the processes the DDP test spawns.
sys.path.insert(0, str(Path(__file__).parent))

from tiny_detector import TINY_METHOD  # noqa: E402


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
