"""Every trainable method of detlab, and its parts.

``MODELS`` maps a method's name to its build function, one explicit dict filled by explicit imports:
``MODELS[name](config, num_classes) -> nn.Module``, where ``config`` is the method's typed config
dataclass (the annotation of the build function's ``config`` argument, which
``detlab.engine.run`` reads; its ``RUN_DEFAULTS`` give the method's own data and training defaults).
Every model obeys the contract of ``ARCHITECTURE.md``: ``model(images, targets)`` in training mode
returns ``{"loss_<name>": scalar}``; in eval mode ``model(images)`` returns one dict an image,
detections ``{"boxes", "scores", "labels"}`` in the frame of the images as given (the localizer:
its top-k guesses; DeepPose adds ``"keypoints"``). A model with several training stages says so
with ``RECIPES`` and ``recipe(name)`` (:mod:`detlab.engine.stages`); one whose outputs are not
scored as detections says how with ``evaluation`` (``"localization"`` or ``"keypoints"``).
"""

from __future__ import annotations

from collections.abc import Callable

from detlab.models.fast_rcnn import build_fast_rcnn
from detlab.models.faster_rcnn import build_faster_rcnn
from detlab.models.keypoints import build_keypoints
from detlab.models.localizer import build_localizer
from detlab.models.overfeat import build_overfeat
from detlab.models.rcnn import build_rcnn
from detlab.models.yolo import build_yolo, build_yolov1

MODELS: dict[str, Callable] = {
    "localizer": build_localizer,
    "keypoints": build_keypoints,
    "overfeat": build_overfeat,
    "rcnn": build_rcnn,
    "fast_rcnn": build_fast_rcnn,
    "faster_rcnn": build_faster_rcnn,
    "yolov1": build_yolov1,
    "yolo": build_yolo,
}
