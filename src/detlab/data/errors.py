"""Bad input: one error type and one policy, shared by every reader.

Policy (``on_bad``): ``"error"`` (default) raises :class:`BadInputError` naming the file (and line)
and what is wrong; ``"skip"`` drops the bad item with a warning and counts it, so a reader can
print a summary at the end. Box-level problems that have an obvious repair (a box sticking out of
the image, a zero-size box) are fixed up with a warning instead; see the README, "Bad input".
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

from detlab.errors import BadInputError  # noqa: F401 - re-exported: the data layer's error

ON_BAD_CHOICES = ("error", "skip")


class BadInputWarning(UserWarning):
    """A bad item was skipped or repaired."""


@dataclass
class ProblemLog:
    """Applies the ``on_bad`` policy and remembers what was skipped or fixed."""

    on_bad: str = "error"
    skipped: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    skipped_errors: list[BadInputError] = field(default_factory=list)  # the errors of ``skipped``

    def __post_init__(self):
        if self.on_bad not in ON_BAD_CHOICES:
            raise ValueError(f"on_bad must be one of {ON_BAD_CHOICES}, got {self.on_bad!r}")

    def bad(self, error: BadInputError, kind: str = "bad item") -> None:
        """Raise ``error`` under ``on_bad='error'``; otherwise warn and count it as skipped."""
        if self.on_bad == "error":
            raise error
        self.skipped.append(str(error))
        self.skipped_errors.append(error)
        self.kinds[kind] += 1
        warnings.warn(f"skipped {error}", BadInputWarning, stacklevel=3)

    def fix(self, message: str, kind: str) -> None:
        """A documented repair: always applied, always reported."""
        self.fixed.append(message)
        self.kinds[kind] += 1
        warnings.warn(message, BadInputWarning, stacklevel=3)

    def summary(self) -> str:
        if not self.skipped and not self.fixed:
            return "no bad input found"
        parts = [f"{count} {kind}" for kind, count in sorted(self.kinds.items())]
        return f"skipped {len(self.skipped)}, fixed {len(self.fixed)} ({', '.join(parts)})"
