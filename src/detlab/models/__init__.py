"""Detectors and their parts.

``MODELS`` maps a model name to its build function; one explicit dict, filled by explicit imports.
"""

from __future__ import annotations

from collections.abc import Callable

from detlab.models.fast_rcnn import build_fast_rcnn
from detlab.models.faster_rcnn import build_faster_rcnn

MODELS: dict[str, Callable] = {
    "fast_rcnn": build_fast_rcnn,
    "faster_rcnn": build_faster_rcnn,
}
