"""Shared fixtures: the real data sets (skipped where absent) and a small synthetic set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # the tests' shared helpers (fuzzing.py) import by name
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "Annotations").is_dir():
        pytest.skip(f"real data set {path} not present (it lives in ../shared/data beside the project)")
    return path


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    return shared_dataset("bccd")


@pytest.fixture(scope="session")
def raccoon_root() -> Path:
    return shared_dataset("raccoon")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from detlab.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=24, seed=3)


@pytest.fixture(autouse=True)
def torch_threads():
    """Two threads in every test (tests that train compare numbers, which the thread count may
    change); a folder's conftest overrides the count by defining a fixture of the same name."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory):
    """Image checks of the test session are cached in a temporary folder, never in ~/.cache."""
    import os

    previous = os.environ.get("DETLAB_CACHE_DIR")
    os.environ["DETLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("detlab-cache"))
    yield
    if previous is None:
        os.environ.pop("DETLAB_CACHE_DIR", None)
    else:
        os.environ["DETLAB_CACHE_DIR"] = previous


# Makes torch unimportable in a fresh interpreter, as on a machine without it.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
"""
TORCH_MODULES = 'sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision"))'


@pytest.fixture
def run_without_torch():
    """``run(code) -> its last printed line``: ``code`` run by a fresh Python that cannot import
    torch (``TORCH_MODULES`` is an expression listing the torch modules it loaded)."""

    def run(code: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-c", NO_TORCH + code.replace("TORCH_MODULES", TORCH_MODULES)],
            capture_output=True,
            text=True,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        return completed.stdout.strip().splitlines()[-1]

    return run
