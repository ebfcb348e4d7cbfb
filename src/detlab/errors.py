"""The error every reader raises for a file that cannot be used as it is (torch-free, so the ONNX
runtime raises it too). The data layer's policy for it is in :mod:`detlab.data.errors`."""

from __future__ import annotations

from pathlib import Path


class BadInputError(ValueError):
    """A file that cannot be used as it is. The message names the file, the line and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path, self.problem, self.line = str(path), problem, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
