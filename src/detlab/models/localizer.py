"""Classification + localization: one network, a class head and a box-regression head.

The localization task of ILSVRC (one object class per image, a box for it) solved as regression,
as in OverFeat (Sermanet et al. 2014, section 4) and the "classification + localization" recipe
the later detectors start from: the conv features feed fully-connected layers; a class head scores
C classes and a regression head outputs a box in coordinates normalised by the image size,
``(x1 / W, y1 / H, x2 / W, y2 / H)``. Because the coordinates are normalised, resizing the image to
the network's fixed window size does not change the target.

Options:
- ``regression="agnostic"``: one box for every class (R = 1); ``"specific"``: one box per class
  (R = C), the box of class c is used when class c is the guess (OverFeat trains one regressor per
  class, section 4.2);
- ``attach="fc"``: the regression head is one linear layer on the last hidden FC layer, shared with
  the class head; ``attach="conv"``: the regression head has FC layers of its own that start from
  the last conv feature map, so the two tasks share only the convolutions.

Shape letters: B images, C classes, R box sets (1 or C), S window size, h x w conv feature grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.models.backbones import ClassifierNet, build_classifier_net

REGRESSION_CHOICES = ("agnostic", "specific")
ATTACH_CHOICES = ("conv", "fc")
BOX_LOSS_CHOICES = ("l2", "smooth_l1")


def conv_box_head(
    in_channels: int,
    grid: tuple[int, int],
    num_outputs: int,
    reduced_channels: int = 64,
    hidden_dim: int = 256,
) -> nn.Sequential:
    """Regression head on the conv map: 1x1 conv (fewer channels), then two FC layers.

    ``Tensor[B, in_channels, h, w] -> Tensor[B, num_outputs]``; ``grid`` is ``(h, w)`` of one window.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, reduced_channels, 1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(reduced_channels * grid[0] * grid[1], hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, num_outputs),
    )


class Localizer(nn.Module):
    """Class scores and box(es) for one object in a fixed-size window.

    ``forward(images: Tensor[B, 3, S, S]) -> {"class_logits": Tensor[B, C],
    "boxes": Tensor[B, R, 4]}``, boxes as normalised ``(x1, y1, x2, y2)`` in [0, 1] (not clamped).
    Class index ``c`` of the logits is dataset label ``c + 1`` (label 0, background, is not scored).
    """

    def __init__(
        self,
        net: ClassifierNet,
        num_classes: int,
        window_size: int,
        regression: str = "agnostic",
        attach: str = "fc",
    ):
        super().__init__()
        if regression not in REGRESSION_CHOICES:
            raise ValueError(f"regression must be one of {REGRESSION_CHOICES}, got {regression!r}")
        if attach not in ATTACH_CHOICES:
            raise ValueError(f"attach must be one of {ATTACH_CHOICES}, got {attach!r}")
        self.num_classes = num_classes
        self.window_size = window_size
        self.regression = regression
        self.attach = attach
        self.grid = net.grid
        self.features = net.features
        self.hidden = net.hidden
        self.class_head = nn.Linear(net.hidden_dim, num_classes)
        self.box_head = self.new_box_head()

    @property
    def num_box_sets(self) -> int:
        return self.num_classes if self.regression == "specific" else 1

    def new_box_head(self) -> nn.Module:
        """A freshly initialised regression head (step 2 of the 4-step recipe)."""
        num_outputs = 4 * self.num_box_sets
        if self.attach == "conv":
            return conv_box_head(self.features.out_channels, self.grid, num_outputs)
        return nn.Linear(self.class_head.in_features, num_outputs)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        feature_map = self.features(images)
        hidden = self.hidden(feature_map)
        box_input = feature_map if self.attach == "conv" else hidden
        boxes = self.box_head(box_input).view(len(images), self.num_box_sets, 4)
        return {"class_logits": self.class_head(hidden), "boxes": boxes}

    @torch.no_grad()
    def guesses(self, images: Tensor, top_k: int = 5) -> dict[str, Tensor]:
        """The ``top_k`` (class, box) guesses of each window, best first (ILSVRC localization).

        Returns ``{"labels": int64 Tensor[B, k] (1..C), "scores": Tensor[B, k] (softmax),
        "boxes": Tensor[B, k, 4]}`` normalised xyxy, ``k = min(top_k, C)``.
        """
        outputs = self(images)
        return guesses_from_outputs(outputs, top_k)

    def detect(self, images: list[Tensor], top_k: int = 1) -> list[dict[str, Tensor]]:
        """Detector-contract output: each image (any size) is resized to the window; per image
        ``{"boxes": Tensor[k, 4] absolute xyxy, "scores": Tensor[k], "labels": int64 Tensor[k]}``."""
        windows = torch.stack([resize_to_window(image, self.window_size) for image in images])
        found = self.guesses(windows, top_k)
        results = []
        for index, image in enumerate(images):
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            boxes = found["boxes"][index].clamp(0, 1) * scale
            results.append(
                {"boxes": boxes, "scores": found["scores"][index], "labels": found["labels"][index]}
            )
        return results


def guesses_from_outputs(outputs: dict[str, Tensor], top_k: int = 5) -> dict[str, Tensor]:
    """Top-k (label, score, box) from :class:`Localizer` outputs; see :meth:`Localizer.guesses`."""
    probabilities = outputs["class_logits"].softmax(dim=1)
    k = min(top_k, probabilities.shape[1])
    scores, indices = probabilities.topk(k, dim=1)
    boxes = outputs["boxes"]
    if boxes.shape[1] == 1:
        chosen = boxes.expand(-1, k, -1)
    else:
        chosen = torch.gather(boxes, 1, indices[..., None].expand(-1, -1, 4))
    return {"labels": indices + 1, "scores": scores, "boxes": chosen}


def resize_to_window(image: Tensor, window_size: int) -> Tensor:
    """``Tensor[3, H, W] -> Tensor[3, S, S]`` (bilinear, aspect ratio not kept: normalised box
    coordinates are unchanged by the warp)."""
    return F.interpolate(image[None], size=(window_size, window_size), mode="bilinear", align_corners=False)[
        0
    ]


def localizer_loss(
    outputs: dict[str, Tensor],
    labels: Tensor,
    boxes: Tensor,
    box_loss: str = "l2",
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Cross-entropy on the class scores and a regression loss on the box.

    ``labels``: int64 ``Tensor[B]`` in 1..C; ``boxes``: ``Tensor[B, 4]`` normalised xyxy targets.
    Class-specific regression trains only the box of the true class (OverFeat section 4.2).
    ``box_loss="l2"`` is the squared error summed over the 4 coordinates (mean over images);
    ``"smooth_l1"`` (Fast R-CNN) is less sensitive to outliers.
    """
    if box_loss not in BOX_LOSS_CHOICES:
        raise ValueError(f"box loss must be one of {BOX_LOSS_CHOICES}, got {box_loss!r}")
    pred_boxes = outputs["boxes"]
    if pred_boxes.shape[1] > 1:
        pred_boxes = pred_boxes[torch.arange(len(labels)), labels - 1]
    else:
        pred_boxes = pred_boxes[:, 0]
    if box_loss == "l2":
        loss_box = ((pred_boxes - boxes) ** 2).sum(dim=1).mean()
    else:
        # beta=0.1 because the coordinates are in [0, 1]: errors above a tenth of the image are "large".
        loss_box = F.smooth_l1_loss(pred_boxes, boxes, beta=0.1, reduction="none").sum(dim=1).mean()
    loss_classifier = F.cross_entropy(outputs["class_logits"], labels - 1)
    return {"loss_classifier": loss_classifier, "loss_box": box_weight * loss_box}


@torch.no_grad()
def localization_metrics(
    guesses: dict[str, Tensor], labels: Tensor, boxes: Tensor, iou_threshold: float = 0.5
) -> dict[str, float]:
    """ILSVRC-style metrics over B images with one ground-truth object each, computed by
    :func:`detlab.eval.localization.localization_metrics`.

    ``guesses``: from :func:`guesses_from_outputs`; ``boxes``: ``Tensor[B, 4]`` normalised xyxy.
    (IoU of normalised boxes equals IoU in pixels: scaling x and y scales both areas alike.)
    A guess is correct when its label is the true label and its box has IoU >= ``iou_threshold``.
    Returns ``classification_accuracy`` (top-1), ``mean_iou`` (top-1 guess's box),
    ``top1_localization`` and ``top5_localization`` (any of the first five guesses correct; with
    fewer than five classes, any guess).
    """
    from detlab.eval.localization import localization_metrics as ilsvrc_metrics

    num_guesses = min(5, guesses["labels"].shape[1])
    result = ilsvrc_metrics(
        guesses["labels"][:, :num_guesses], guesses["boxes"][:, :num_guesses], list(labels[:, None]),
        list(boxes[:, None]), iou_threshold,
    )  # fmt: skip
    return {
        "classification_accuracy": result["classification_top1"],
        "mean_iou": result["mean_iou"],
        "top1_localization": result["localization_top1"],
        "top5_localization": result[f"localization_top{num_guesses}"],
    }


def build_localizer(
    num_classes: int,
    backbone: str = "small",
    window_size: int = 128,
    regression: str = "agnostic",
    attach: str = "fc",
    hidden_dim: int = 512,
    dropout: float = 0.5,
    pretrained: bool = False,
    weights_path: str | None = None,
    pool: str = "none",
    num_blocks: int = 5,
    padding: int = 0,
) -> Localizer:
    """A :class:`Localizer` on ``backbone`` (``small``, ``alexnet`` or ``vgg16``: nets with FC layers);
    ``pool``, ``num_blocks`` and ``padding`` shape the small net (see :func:`build_classifier_net`)."""
    net = build_classifier_net(
        backbone, window_size, pretrained, weights_path, hidden_dim, dropout, pool, num_blocks, padding
    )
    return Localizer(net, num_classes, window_size, regression, attach)
