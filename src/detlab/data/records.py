"""Turning parsed annotations into validated :class:`Record` objects (shared by every reader).

The checks and repairs are :func:`detlab.data.annotations.check_objects` (documented there and in
the README, "Bad input"); this module only turns what passed into tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from detlab.data.annotations import RawObject, check_objects  # noqa: F401 - RawObject re-exported
from detlab.data.errors import ProblemLog
from detlab.data.schema import Record


def build_record(
    image_id: str | int,
    image_path: Path,
    width: int,
    height: int,
    objects: list[RawObject],
    classes: list[str],
    source: Path,
    problems: ProblemLog,
) -> Record | None:
    """Validate ``objects`` against the image size and class list; ``None`` if the image is skipped."""
    checked = check_objects(objects, width, height, classes, source, problems)
    if checked is None:
        return None
    keypoints = checked.keypoints
    return Record(
        image_id=image_id,
        image_path=Path(image_path),
        width=int(width),
        height=int(height),
        boxes=torch.tensor(checked.boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(checked.labels, dtype=torch.int64),
        difficult=torch.tensor(checked.difficult, dtype=torch.bool),
        iscrowd=torch.tensor(checked.iscrowd, dtype=torch.bool),
        keypoints=torch.tensor(keypoints, dtype=torch.float32).reshape(len(keypoints), -1, 2)
        if keypoints
        else None,
    )
