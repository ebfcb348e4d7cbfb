"""detlab writes its figure files on matplotlib's Agg backend without taking over the backend of a
program that chose one first (a notebook's inline backend: the tutorial's figures)."""

from __future__ import annotations

import subprocess
import sys

WRITE_A_REPORT = (
    "from detlab.eval.plots import plot_precision_recall\n"
    "plot_precision_recall([0.0, 0.5, 1.0], [1.0, 0.8, 0.5], 'pr.png', 'a class', 0.7)\n"
)


def backend_after(prelude: str, tmp_path) -> str:
    code = prelude + WRITE_A_REPORT + "import matplotlib\nprint(matplotlib.get_backend().lower())\n"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert (tmp_path / "pr.png").stat().st_size > 0
    return done.stdout.strip().splitlines()[-1]


def test_reports_use_agg_when_nothing_chose_a_backend(tmp_path):
    assert backend_after("", tmp_path) == "agg"


def test_a_backend_chosen_before_is_kept(tmp_path):
    prelude = "import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot\n"
    assert backend_after(prelude, tmp_path) == "svg"
