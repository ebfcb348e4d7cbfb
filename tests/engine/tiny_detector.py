"""A detector small enough for engine tests: it obeys the detector contract and trains in seconds.

It predicts one box and one class an image (a conv stem, global pooling, dropout, two linear
heads). Dropout and a random horizontal flip in :class:`SquaresDataset` make sure the tests see
every source of randomness a real run has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detlab.models.contract import NO_TRACE, DetectorModule, Method, Trace


class TinyDetector(DetectorModule):
    def __init__(self, num_classes: int = 2, width: int = 8, dropout: float = 0.2, nan_after_step: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4)
        )
        self.dropout = nn.Dropout(dropout)
        self.class_head = nn.Linear(width * 16, num_classes + 1)
        self.box_head = nn.Linear(width * 16, 4)
        # For the non-finite-loss test: after this many training calls the loss becomes NaN.
        self.nan_after_step = nan_after_step
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def make_evaluator(self, classes: list[str]) -> CountingEvaluator:
        return CountingEvaluator()

    def _features(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.dropout(torch.stack([self.stem(image[None]).flatten() for image in images]))

    def forward(self, images, targets=None, *, trace: Trace = NO_TRACE):
        features = self._features(images)
        class_logits = self.class_head(features)
        boxes_normalised = self.box_head(features).sigmoid()
        sizes = torch.tensor(
            [[i.shape[-1], i.shape[-2], i.shape[-1], i.shape[-2]] for i in images], dtype=torch.float32
        )
        if self.training:
            self.calls += 1
            labels = torch.stack([t["labels"][0] if len(t["labels"]) else torch.tensor(0) for t in targets])
            loss_classifier = F.cross_entropy(class_logits, labels)
            has_box = [k for k, t in enumerate(targets) if len(t["boxes"])]
            if has_box:
                wanted = torch.stack([targets[k]["boxes"][0] for k in has_box]) / sizes[has_box]
                loss_box = F.l1_loss(boxes_normalised[has_box], wanted)
            else:
                loss_box = boxes_normalised.sum() * 0.0
            if self.nan_after_step and int(self.calls) > self.nan_after_step:
                loss_box = loss_box * float("nan")
            return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box}
        scores, labels = class_logits[:, 1:].softmax(-1).max(-1)
        corners = boxes_normalised * sizes
        # the box head's corners are unordered until trained: order them to keep x1 <= x2, y1 <= y2
        boxes = torch.cat(
            [torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1
        )
        return [
            {"boxes": boxes[k : k + 1], "scores": scores[k : k + 1], "labels": labels[k : k + 1] + 1}
            for k in range(len(images))
        ]


class SquaresDataset(torch.utils.data.Dataset):
    """``num_images`` 32x32 images: a bright square of class 1 (red) or 2 (green) on black; every
    fifth image is empty (background only). Random horizontal flip drawn from the torch generator."""

    def __init__(self, num_images: int = 10, flip: bool = True):
        self.num_images, self.flip = num_images, flip
        self.classes = ["red", "green"]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        image = torch.zeros(3, 32, 32)
        if index % 5 == 4:
            target = {
                "boxes": torch.zeros((0, 4)),
                "labels": torch.zeros((0,), dtype=torch.int64),
                "image_id": index,
            }
        else:
            label = 1 + index % 2
            x1, y1 = 2 + (index * 3) % 14, 3 + (index * 5) % 12
            image[label - 1, y1 : y1 + 12, x1 : x1 + 14] = 1.0
            box = torch.tensor([[x1, y1, x1 + 14, y1 + 12]], dtype=torch.float32)
            target = {"boxes": box, "labels": torch.tensor([label]), "image_id": index}
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = 32 - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return image, target


class CountingEvaluator:
    """Stands in for detlab.eval in engine tests: 'AP50' is the fraction of images whose top box
    has IoU >= 0.5 with the first ground-truth box and the right label (empty images are skipped)."""

    def __init__(self):
        self.hits, self.total, self.iou_sum = 0, 0, 0.0

    def update(self, predictions, targets):
        from torchvision.ops import box_iou

        for prediction, target in zip(predictions, targets):
            if len(target["boxes"]) == 0:
                continue
            self.total += 1
            iou = box_iou(prediction["boxes"][:1], target["boxes"][:1])
            self.iou_sum += float(iou.sum())
            if iou.numel() and iou.item() >= 0.5 and prediction["labels"][0] == target["labels"][0]:
                self.hits += 1

    def compute(self):
        # mean_iou depends on every prediction: a distributed evaluation must reproduce it exactly
        return {
            "AP50": self.hits / max(self.total, 1),
            "images": self.total,
            "mean_iou": self.iou_sum / max(self.total, 1),
        }


@dataclass
class TinyConfig:
    width: int = 8
    dropout: float = 0.2


def build_tiny(config: TinyConfig, num_classes: int) -> TinyDetector:
    """A ``MODELS``-style build function, so tests can go through checkpoints and the Predictor."""
    return TinyDetector(num_classes, width=config.width, dropout=config.dropout)


TINY_METHOD = Method(name="tiny", config=TinyConfig, build=build_tiny, label="tiny", compared=False)


class RecordingSquares(SquaresDataset):
    """:class:`SquaresDataset` that appends every index it is asked for to ``record`` (a file; one
    per process)."""

    def __init__(self, num_images: int, record: str):
        super().__init__(num_images)
        self.record = record

    def __getitem__(self, index: int):
        with open(self.record, "a") as handle:
            handle.write(f"{index}\n")
        return super().__getitem__(index)
