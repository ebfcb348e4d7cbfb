"""The errors detlab raises for users (torch-free, so the ONNX runtime and the command line use
them without importing torch): a file that cannot be used as it is (:class:`BadInputError`, whose
policy in the data layer is :mod:`detlab.data.errors`), and a file that could not be written
(:class:`SaveError`). The command line prints both as one line, without a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

# Conditions of the disk rather than of the program: writing again on it fails the same way.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class BadInputError(ValueError):
    """A file that cannot be used as it is. The message names the file, the line and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path, self.problem, self.line = str(path), problem, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class SaveError(OSError):
    """Writing ``path`` failed (``error``: the ``OSError`` of the write, e.g. no space left on the
    device); ``note`` says what is still there and what to do. An ``OSError`` with the write's
    ``errno``, whose message is one line naming the file."""

    def __init__(self, path: str | Path, error: OSError, note: str = ""):
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(error.errno, reason, str(path))
        self.message = f"{path}: could not be written ({reason}){'; ' + note if note else ''}"

    def __str__(self) -> str:
        return self.message


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota on it) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL
