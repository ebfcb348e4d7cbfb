"""The demo's note on a slower machine: said when this machine made clearly fewer steps in the
measured budget than the README's, and only then."""

from __future__ import annotations

from detlab.demo import MEASURED_DEMO, speed_note


def test_a_slower_machine_is_told_what_its_fewer_steps_cost():
    budget, steps = MEASURED_DEMO["seconds"], MEASURED_DEMO["steps"]
    note = speed_note({"steps": steps // 2}, budget)
    assert note is not None and f"made {steps // 2} steps" in note and str(steps) in note
    assert "--train-seconds" in note
    assert speed_note({"steps": steps}, budget) is None  # as fast: nothing to say
    assert speed_note({"steps": int(steps * 0.95)}, budget) is None  # within the machines' noise
    assert speed_note({"steps": steps // 4}, 60) is None  # another budget: steps not comparable
    # a run that train.max_steps ended before its budget: its step count is the cap's
    assert speed_note({"steps": steps // 2, "train_seconds": 0.57 * budget}, budget) is None
    assert speed_note({"steps": steps // 2, "train_seconds": float(budget)}, budget) is not None
