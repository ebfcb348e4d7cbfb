"""Every trainable method of detlab, and its parts.

``MODELS`` maps a method's name to its :class:`~detlab.models.contract.Method`: one explicit dict,
one entry a method, each defined at the end of the method's own module (its model, config, recipe,
export plan, look-inside view and labels live there too). ``MODELS[name](config, num_classes)``
builds the model; every model obeys :mod:`detlab.models.contract`, which is all the engine,
export, serve and compare ask of a method.
"""

from __future__ import annotations

from torch import nn

from detlab.models import fast_rcnn, faster_rcnn, keypoints, localizer, overfeat, rcnn, yolo, yolov1
from detlab.models.backbones import channels_last_parameters, without_backbone_weights
from detlab.models.contract import Method

MODELS: dict[str, Method] = {
    "localizer": localizer.METHOD,
    "keypoints": keypoints.METHOD,
    "overfeat": overfeat.METHOD,
    "rcnn": rcnn.METHOD,
    "fast_rcnn": fast_rcnn.METHOD,
    "faster_rcnn": faster_rcnn.METHOD,
    "yolov1": yolov1.METHOD,
    "yolo": yolo.METHOD,
}


def method(name: str) -> Method:
    """``MODELS[name]``, or an error naming the methods there are."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; trainable models: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, config, num_classes: int, weights_from_checkpoint: bool = False) -> nn.Module:
    """The model of method ``name`` that ``config`` describes; ``weights_from_checkpoint``: every
    weight will be loaded from a checkpoint next, so the backbone is built without ImageNet's or a
    weights file's (no download, no file that may be gone)."""
    if weights_from_checkpoint:
        config = without_backbone_weights(config)
    model = method(name)(config, num_classes)
    if getattr(config, "channels_last", False):
        channels_last_parameters(model)
    return model
