"""A method defined outside the package: what a user adds to detlab is this one module and one
line, ``MODELS["outside"] = METHOD`` (``tests/test_outside_method.py`` takes it through every
command). It is a deliberately small one-object detector: the image warped to a window, a conv
stem, a class head and a box head (normalised corners), scored by the COCO evaluator; its export
plan uses the runtime's ``window`` layout, its look-inside view shows the window and the guess.

Shape letters: B images, S window side, C classes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.models.contract import (
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    HeatmapView,
    Inside,
    Method,
    Trace,
)


@dataclasses.dataclass
class OutsideConfig:
    window: int = 32
    width: int = 8


class OutsideDetector(DetectorModule):
    """One guess an image: ``(class, box)``; training: cross-entropy on the largest object's class,
    L1 on its normalised corners."""

    def __init__(self, config: OutsideConfig, num_classes: int):
        super().__init__()
        self.window, self.num_classes = config.window, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(3, config.width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4)
        )
        self.class_head = nn.Linear(config.width * 16, num_classes)
        self.box_head = nn.Linear(config.width * 16, 4)

    def raw_outputs(self, windows: Tensor, trace: Trace = NO_TRACE) -> tuple[Tensor, Tensor]:
        """``Tensor[B, 3, S, S]`` -> ``(class logits [B, C], boxes [B, 1, 4] normalised xyxy)``."""
        features = self.stem(windows)
        trace("stem", features=features)
        flat = features.flatten(1)
        corners = self.box_head(flat).sigmoid()
        boxes = torch.cat(
            [torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1
        )
        return self.class_head(flat), boxes[:, None]

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        windows = torch.stack(
            [
                F.interpolate(
                    image[None],
                    size=(self.window, self.window),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0]
                for image in images
            ]
        )
        sizes = torch.tensor(
            [[image.shape[-1], image.shape[-2]] * 2 for image in images], dtype=windows.dtype
        )
        trace("warp", windows=windows)
        logits, boxes = self.raw_outputs(windows, trace)
        if self.training:
            largest = [
                target["boxes"][(target["boxes"][:, 2:] - target["boxes"][:, :2]).prod(1).argmax()]
                for target in targets
            ]
            labels = torch.stack(
                [
                    target["labels"][(target["boxes"][:, 2:] - target["boxes"][:, :2]).prod(1).argmax()]
                    for target in targets
                ]
            )
            wanted = torch.stack(largest).float() / sizes
            return {
                "loss_classifier": F.cross_entropy(logits, labels - 1),
                "loss_box": F.l1_loss(boxes[:, 0], wanted),
            }
        scores, labels = logits.softmax(-1).max(-1)
        detections = [
            {
                "boxes": boxes[index] * sizes[index],
                "scores": scores[index : index + 1],
                "labels": labels[index : index + 1] + 1,
            }
            for index in range(len(images))
        ]
        trace("heads")
        return detections

    def export_plan(self) -> ExportPlan:
        side = self.window
        return ExportPlan(
            WindowGraph(self),
            ("images",),
            ("probabilities", "boxes"),
            (torch.rand(1, 3, side, side),),
            layout="window",
            preprocess={"resize": "warp", "size": side, "mean": [0.0] * 3, "std": [1.0] * 3},
            postprocess={"top_k": 1, "box_offset": 0},
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        trace = Trace()
        output = self([image], trace=trace)[0]
        activity = trace["stem"]["features"][0].mean(0)
        activity = (activity - activity.min()) / (activity.max() - activity.min()).clamp(min=1e-6)
        height, width = image.shape[-2:]
        titles = {
            "warp": f"warp to {self.window} x {self.window}",
            "stem": "conv stem",
            "heads": "class and box heads",
        }
        views = [
            HeatmapView("the stem's mean activation", activity, (0.0, 0.0, float(width), float(height))),
            BoxesView("the guess", output["boxes"], [class_name(int(output["labels"][0]))], output["scores"]),
        ]
        return output, Inside(trace.stages(lambda name, values: titles[name]), views)


class WindowGraph(nn.Module):
    def __init__(self, model: OutsideDetector):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes = self.model.raw_outputs(images)
        return logits.softmax(-1), boxes


def build_outside(config: OutsideConfig, num_classes: int) -> OutsideDetector:
    return OutsideDetector(config, num_classes)


METHOD = Method(
    name="outside",
    config=OutsideConfig,
    build=build_outside,
    label="a method from outside",
    run_defaults={
        "train": {"batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "warmup_steps": 2, "eval_every": 0}
    },
)
