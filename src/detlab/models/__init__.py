"""Detectors and their parts.

``MODELS`` maps a model name to its build function; one explicit dict, filled by explicit imports.
"""

from __future__ import annotations

from collections.abc import Callable

MODELS: dict[str, Callable] = {}
