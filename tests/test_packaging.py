"""The wheel a user installs: ranges, not this project's exact pins, and the extras the README names."""

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"export", "serve", "test", "bench", "tensorboard"}


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> email.message.Message:
    """The METADATA of a wheel built from a copy of the project (the build writes nothing here)."""
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    subprocess.run([*command, str(source)], check=True, timeout=240)
    (wheel,) = out.glob("detlab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA"))
        found = email.message_from_bytes(archive.read(name))
        files = set(archive.namelist())
    found["x-files"] = "\n".join(sorted(files))
    return found


def test_dependencies_are_ranges_not_pins(metadata):
    requirements = metadata.get_all("Requires-Dist")
    core = [line for line in requirements if "extra ==" not in line]
    for package in ("torch", "torchvision"):
        (line,) = [entry for entry in core if entry.split()[0].split(">")[0].split("<")[0] == package]
        assert ">=" in line and "<" in line.replace("<=", "") and "==" not in line, line
    assert not [line for line in requirements if "==" in line.split(";")[0]], requirements
    assert metadata["Requires-Python"].replace(" ", "") in (">=3.10,<3.14", "<3.14,>=3.10")


def test_extras_and_package_data_are_in_the_wheel(metadata):
    assert EXTRAS <= set(metadata.get_all("Provides-Extra"))
    files = metadata["x-files"].splitlines()
    assert "detlab/presets/demo.yaml" in files
    assert "detlab/serve/static/index.html" in files
    assert any(name.startswith("detlab/serve/static/samples/") and name.endswith(".png") for name in files)
    entry_points = [name for name in files if name.endswith("entry_points.txt")]
    assert entry_points, "the detlab command is missing"


def test_the_pins_live_in_the_constraints_file():
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in (ROOT / "constraints-dev.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert "pip install -c $(CONSTRAINTS)" in (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := constraints-dev.txt" in (ROOT / "Makefile").read_text()
