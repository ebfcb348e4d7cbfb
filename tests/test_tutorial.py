"""The tutorial notebook (``docs/tutorial/``): it runs top to bottom in QUICK mode (every training two
steps) without a failing cell, and the saved full run is a run of the current code, holding every
step's figure and numbers. Only code cells are compared with the saved run, so mending the prose
needs no new 15-minute run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial"
# figures a run draws: 1 IoU, 2 localizer, 3 DeepPose, 4 OverFeat, 5 grouping + recall,
# 6 warp/RoI pool + anchors/RPN, 7 YOLO v1 grid + anchor-free assignment, 8 PR curve
FIGURES = 11
STEPS = (
    "iou",
    "localizer",
    "keypoints",
    "sliding_window",
    "proposals",
    "compare",
    "yolov1_grid",
    "evaluation",
)


def runner():
    spec = importlib.util.spec_from_file_location("tutorial_execute", TUTORIAL / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_cells(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def errors(notebook) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "error"
    ]


def test_the_saved_notebook_is_a_full_run_of_the_current_code():
    source = jupytext.read(TUTORIAL / "lecture.py")
    saved = nbformat.read(TUTORIAL / "lecture.ipynb", as_version=4)
    assert code_cells(saved) == code_cells(source), (
        "docs/tutorial/lecture.ipynb is not a run of lecture.py's code: run `make tutorial`"
    )
    assert all(cell.execution_count for cell in saved.cells if cell.cell_type == "code")
    assert errors(saved) == [] and figures(saved) == FIGURES
    record = json.loads((TUTORIAL / "numbers.json").read_text())
    assert not record["numbers"]["quick"] and set(STEPS) <= set(record["numbers"])
    assert record["wall_s"] <= 15 * 60, "the full run must stay within 15 minutes on a 2-core CPU"
    assert (TUTORIAL / "lecture.ipynb").stat().st_size < 3_000_000


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_in_quick_mode(tmp_path):
    work = tmp_path / "work"
    notebook, seconds = runner().execute(tmp_path / "lecture.ipynb", work, quick=True, cwd=tmp_path)
    assert errors(notebook) == [] and figures(notebook) == FIGURES
    numbers = json.loads((work / "numbers.json").read_text())
    assert numbers["quick"] and set(STEPS) <= set(numbers)
    # what the steps compute holds even after two training steps
    assert numbers["iou"]["shifted by 40 px"] == pytest.approx(0.5)
    assert all(row["max |crops - conv|"] < 1e-4 for row in numbers["sliding_window"])
    assert [row["method"] for row in numbers["compare"]] == ["rcnn", "fast_rcnn", "faster_rcnn", "yolo"]
    evaluation = numbers["evaluation"]
    assert evaluation["COCO 101-point"] == pytest.approx(
        evaluation["COCO AP50 of the class (the evaluator)"], abs=1e-6
    )
    print(f"QUICK run: {seconds:.1f} s")
