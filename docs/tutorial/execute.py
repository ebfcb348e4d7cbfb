"""Run the tutorial notebook top to bottom and save it with its outputs: what ``make tutorial`` does.

    python docs/tutorial/execute.py                   # the full run: lecture.ipynb and numbers.json here
    python docs/tutorial/execute.py --quick --out /tmp/lecture.ipynb --work /tmp/tutorial

``lecture.py`` (jupytext's percent format) is the notebook's source; this reads it, runs it in a
fresh Python kernel (nbclient) with ``DETLAB_TUTORIAL_QUICK`` and ``DETLAB_TUTORIAL_WORK`` set, and
writes the executed notebook, paired with ``lecture.py``. A full run also writes ``numbers.json``
beside it: the numbers the notebook reports, with the command, date, machine and wall time.
A cell that fails stops the run with the cell and its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lecture.py"
SAVED = HERE / "lecture.ipynb"
NUMBERS = HERE / "numbers.json"
CELL_TIMEOUT_S = 900  # the longest cell of a full run (the comparison) takes about 6 minutes


def execute(out: Path, work: Path, quick: bool, cwd: Path | None = None) -> tuple[object, float]:
    """Run ``lecture.py`` in a new kernel started in ``cwd`` (default: the current folder), write
    the executed notebook to ``out`` and return ``(notebook, seconds)``; the kernel's data, runs
    and caches go under ``work``."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(SOURCE)
    environment = {"DETLAB_TUTORIAL_QUICK": "1" if quick else "0", "DETLAB_TUTORIAL_WORK": str(work)}
    previous = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)  # the kernel inherits this process's environment
    started = time.perf_counter()
    try:
        client = NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd or Path.cwd())}},
        )
        client.execute()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    seconds = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, out)
    return notebook, seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="every training two steps (the test suite's run)"
    )
    parser.add_argument(
        "--out", type=Path, default=SAVED, help="the executed notebook (default: lecture.ipynb here)"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/tutorial"), help="data, runs and caches")
    args = parser.parse_args()
    _, seconds = execute(args.out, args.work.resolve(), args.quick)
    print(f"{args.out}: ran in {seconds / 60:.1f} minutes")
    if not args.quick and args.out.resolve() == SAVED:
        numbers = json.loads((args.work / "numbers.json").read_text())
        record = {
            "command": "make tutorial (" + " ".join([Path(sys.executable).name, *sys.argv]) + ")",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "wall_s": round(seconds, 1),
            "numbers": numbers,
        }
        NUMBERS.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{NUMBERS}: the run's numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
