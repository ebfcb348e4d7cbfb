"""Classification + localization: one network, a class head and a box-regression head.

The localization task of ILSVRC (one object class per image, a box for it) solved as regression,
as in OverFeat (Sermanet et al. 2014, section 4) and the "classification + localization" recipe
the later detectors start from: the conv features feed fully-connected layers; a class head scores
C classes and a regression head outputs a box in coordinates normalised by the image size,
``(x1 / W, y1 / H, x2 / W, y2 / H)``. Because the coordinates are normalised, warping the image to
the network's fixed window does not change the target.

It obeys the detector contract (``detlab.models``): ``model(images, targets)`` in training returns
``{"loss_classifier", "loss_box"}`` for each image's largest object (images without an object
are left out); in eval mode each image gets its ``top_k`` (class, box) guesses as detections in
its own pixels, best first, so ImageNet's top-1/top-5 localization error
(:class:`detlab.eval.localization.LocalizationEvaluator`) and the detection metrics read the same
outputs.

Options:
- ``regression="agnostic"``: one box for every class (R = 1); ``"specific"``: one box per class
  (R = C), the box of class c is used when class c is the guess (OverFeat trains one regressor per
  class, section 4.2);
- ``attach="fc"``: the regression head is one linear layer on the last hidden FC layer, shared with
  the class head; ``attach="conv"``: the regression head has FC layers of its own that start from
  the last conv feature map, so the two tasks share only the convolutions.
- recipes (``train.recipe``): ``joint`` trains both heads and the features together on the sum of
  the losses; ``4step`` is the classification-then-regression recipe of OverFeat (section 4.2):
  1. the classifier alone; 2. a new regression head; 3. only that head, with SGD and the L2 loss,
  everything else frozen (BatchNorm statistics too); 4. test with both heads.

Shape letters: B images, C classes, R box sets (1 or C), S window size, h x w conv feature grid.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.config import choice
from detlab.eval.localization import LocalizationEvaluator
from detlab.models.backbones import POOL_CHOICES, ClassifierNet, build_classifier_net
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    Inside,
    MemoryCost,
    Method,
    Stage,
    Step,
    Trace,
    WindowView,
    set_trainable,
)
from detlab.models.transform import warp_batch

REGRESSION_CHOICES = ("agnostic", "specific")
ATTACH_CHOICES = ("conv", "fc")
BOX_LOSS_CHOICES = ("l2", "smooth_l1")
TRAINING_STAGES = ("joint", "classifier", "regressor")


@dataclasses.dataclass
class LocalizerConfig:
    """The localizer (``model`` section of ``detlab train localizer``).

    The defaults are what trains in minutes on a 2-core CPU from scratch (measured in
    ``benchmarks/results/localization.md``): a 64-pixel window, the small net with four blocks
    (stride 8, a 4x4 grid of 256 channels), its class evidence max-pooled over the grid
    (``pool="max"``; ``none`` flattens the grid as OverFeat and AlexNet do, and learns the shape
    classes several times slower here), the regression head on the conv map (``attach="conv"``:
    the max-pooled FC features no longer say where the object is), padded convolutions
    (``padding: 1``: objects touching the window border keep their evidence). ``box_weight`` 5
    scales the L2 loss, whose gradient is small on coordinates in [0, 1], to the class loss.
    ``backbone``: ``small``, ``alexnet`` or ``vgg16`` (nets with FC layers; the latter two need
    ``window_size: 224`` and can start from ImageNet weights). ``top_k``: guesses an image at test
    time. ``classifier_fraction`` and ``head_lr``: the 4-step recipe's share of the budget for the
    classifier and the regression head's SGD learning rate.
    """

    backbone: str = choice("small", ("small", "alexnet", "vgg16"))
    pretrained_backbone: bool = False
    backbone_weights: str | None = None
    window_size: int = 64
    blocks: int = 4  # conv blocks of the small net
    padding: int = 1  # small net: 1 pads its convolutions, 0 keeps them valid (exact sliding windows)
    strided_blocks: int = 0  # small net: its first N blocks downsample with a stride-2 conv, not a max-pool
    pool: str = choice("max", POOL_CHOICES)  # small net only
    hidden_dim: int = 512
    dropout: float = 0.0
    regression: str = choice("agnostic", REGRESSION_CHOICES)
    attach: str = choice("conv", ATTACH_CHOICES)
    box_loss: str = choice("l2", BOX_LOSS_CHOICES)
    box_weight: float = 5.0
    top_k: int = 5
    classifier_fraction: float = 0.6
    head_lr: float = 0.01
    channels_last: bool = (
        True  # channels-last convolutions: a training step of the default net in 2/3 of the time on a CPU
    )


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


class Localizer(DetectorModule):
    """Class scores and box(es) for one object in a fixed-size window; obeys the detector contract.

    ``raw_outputs(windows: Tensor[B, 3, S, S]) -> {"class_logits": Tensor[B, K], "boxes": Tensor[B, R, 4]}``
    are the raw outputs, boxes as normalised ``(x1, y1, x2, y2)`` (not clamped). Logit ``k`` is
    dataset label ``k + 1``; with ``background`` (OverFeat's detection localizer) there is one more
    logit, ``k = 0`` is the background and logit ``k`` is label ``k``.
    """

    recipes = ("joint", "4step")
    evaluation = "localization"  # scored by ILSVRC top-1/top-5 localization error

    def __init__(
        self,
        net: ClassifierNet,
        num_classes: int,
        window_size: int,
        regression: str = "agnostic",
        attach: str = "fc",
        box_loss: str = "l2",
        box_weight: float = 1.0,
        top_k: int = 5,
        background: bool = False,
        classifier_fraction: float = 0.6,
        head_lr: float = 0.01,
        channels_last: bool = False,
    ):
        super().__init__()
        for name, value, choices in (
            ("regression", regression, REGRESSION_CHOICES),
            ("attach", attach, ATTACH_CHOICES),
            ("box_loss", box_loss, BOX_LOSS_CHOICES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.num_classes = num_classes
        self.background = background
        self.num_logits = num_classes + int(background)
        self.window_size = window_size
        self.regression, self.attach = regression, attach
        self.box_loss, self.box_weight, self.top_k = box_loss, box_weight, top_k
        self.classifier_fraction, self.head_lr = classifier_fraction, head_lr
        self.grid, self.stride, self.feature_channels = net.grid, net.stride, net.out_channels
        self.features = net.features
        self.hidden = net.hidden
        self.class_head = nn.Linear(net.hidden_dim, self.num_logits)
        self.box_head = self.new_box_head()
        self.training_stage = "joint"
        # Channels-last input makes every convolution run channels-last (oneDNN's faster layout on
        # CPUs); the weights stay contiguous, which DistributedDataParallel's gradient buckets expect.
        self.channels_last = channels_last

    @property
    def num_box_sets(self) -> int:
        return self.num_logits if self.regression == "specific" else 1

    def new_box_head(self) -> nn.Module:
        """A freshly initialised regression head (step 2 of the 4-step recipe)."""
        num_outputs = 4 * self.num_box_sets
        if self.attach == "conv":
            return conv_box_head(self.feature_channels, self.grid, num_outputs)
        return nn.Linear(self.class_head.in_features, num_outputs)

    def raw_outputs(self, windows: Tensor, trace: Trace = NO_TRACE) -> dict[str, Tensor]:
        """Windows ``Tensor[B, 3, S, S]`` -> ``{"class_logits": Tensor[B, K], "boxes": Tensor[B, R, 4]}``."""
        if self.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last)
        feature_map = self.features(windows)
        trace("features")
        hidden = self.hidden(feature_map)
        box_input = feature_map if self.attach == "conv" else hidden
        boxes = self.box_head(box_input).view(-1, self.num_box_sets, 4)
        return {"class_logits": self.class_head(hidden), "boxes": boxes}

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        """Training: ``{"loss_classifier", "loss_box"}`` (one of them in the 4-step stages);
        eval: per image ``{"boxes": Tensor[k, 4], "scores": Tensor[k], "labels": int64 Tensor[k]}``."""
        windows, sizes = warp_batch(images, self.window_size)
        if not self.training:
            trace("warp", windows=windows)
            detections = self.postprocess(self.raw_outputs(windows, trace), sizes)
            trace("heads")
            return detections
        if targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        has_object = torch.tensor([len(target["boxes"]) > 0 for target in targets], device=windows.device)
        if not has_object.any():  # a batch of background images teaches the localizer nothing
            return {name: self.class_head.weight.sum() * 0.0 for name in self.loss_names()}
        kept = [target for target in targets if len(target["boxes"])]
        chosen = [largest_object(target["boxes"]) for target in kept]
        labels = torch.stack([target["labels"][index] for target, index in zip(kept, chosen)]).to(
            windows.device
        )
        boxes = torch.stack([target["boxes"][index].float() for target, index in zip(kept, chosen)])
        boxes = boxes.to(windows.device) / sizes[has_object]
        losses = self.losses(self.raw_outputs(windows[has_object]), labels, boxes)
        return {name: losses[name] for name in self.loss_names()}

    def loss_names(self) -> tuple[str, ...]:
        return {
            "joint": ("loss_classifier", "loss_box"),
            "classifier": ("loss_classifier",),
            "regressor": ("loss_box",),
        }[self.training_stage]

    def losses(self, outputs: dict[str, Tensor], labels: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """:func:`localizer_loss` with this model's label mapping and box settings."""
        return localizer_loss(
            outputs,
            self.label_to_logit(labels),
            boxes,
            self.box_loss,
            self.box_weight,
            background=self.background,
        )

    def label_to_logit(self, labels: Tensor) -> Tensor:
        return labels if self.background else labels - 1

    def postprocess(self, outputs: dict[str, Tensor], sizes: Tensor) -> list[dict[str, Tensor]]:
        """Top ``self.top_k`` guesses of each window (:meth:`raw_outputs`), as boxes in the pixels of
        its image (``sizes``: ``(W, H, W, H)`` an image)."""
        guesses = guesses_from_outputs(outputs, self.top_k, skip_first=self.background)
        boxes = guesses["boxes"].clamp(0, 1) * sizes[:, None, :]
        return [
            {"boxes": boxes[index], "scores": guesses["scores"][index], "labels": guesses["labels"][index]}
            for index in range(len(sizes))
        ]

    def recipe(self, name: str) -> list[Stage | Step]:
        if name == "joint":
            return [Stage("joint", lambda model: set_localizer_stage(model, "joint"))]
        return four_step_recipe(lambda model: model, self.classifier_fraction, self.head_lr)

    def training_resize(self) -> tuple[int, int]:
        return (self.window_size, self.window_size)  # the training images are warped to the window once

    def make_evaluator(self, classes: list[str]) -> LocalizationEvaluator:
        return LocalizationEvaluator(classes, top_k=max(5, self.top_k))

    def memory_cost(self) -> MemoryCost:
        """Measured for the default 64-pixel window (``benchmarks/bench_serve_memory.py``), with a
        margin: the warp's copies of the image; the window's pass is small."""
        area = (self.window_size / 64) ** 2
        return MemoryCost(bytes_per_input_pixel=56, fixed_bytes=16 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        """``images [B, 3, S, S]`` (warped, [0, 1]) -> ``probabilities [B, K]`` (softmax over the
        object classes), ``boxes [B, R, 4]`` (normalised xyxy; R = 1 class-agnostic). The batch
        size is free."""
        size = self.window_size
        return ExportPlan(
            WindowGraph(self),
            ("images",),
            ("probabilities", "boxes"),
            (torch.rand(2, 3, size, size) - 0.5,),
            layout="window",
            preprocess={"resize": "warp", "size": size, "mean": [0.0] * 3, "std": [1.0] * 3},
            postprocess={"top_k": self.top_k, "box_offset": int(self.background)},
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}, "boxes": {0: "batch"}},
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Warp to the window -> conv features -> heads; the views: the warped window with the top-k
        guesses, and the guesses on the image."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        size = self.window_size
        height, width = image.shape[-2:]
        in_window = output["boxes"] * torch.tensor(
            [size / width, size / height] * 2, device=output["boxes"].device
        )
        labels = [
            f"{class_name(label)} {score:.2f}"
            for label, score in zip(output["labels"].tolist(), output["scores"].tolist())
        ]
        titles = {
            "warp": f"warp the image to the {size} x {size} window",
            "features": "conv features",
            "heads": f"FC layers, class and box heads, top {len(labels)} guesses",
        }
        views = [
            WindowView(
                f"the network's input: the image warped to {size} x {size}, with its top {len(labels)} guesses",
                trace["warp"]["windows"][0],
                boxes=in_window,
                labels=labels,
            ),
            BoxesView(f"top {len(labels)} guesses", output["boxes"], labels, output["scores"]),
        ]
        return output, Inside(trace.stages(lambda name, values: titles.get(name)), views)


class WindowGraph(nn.Module):
    """What ONNX export traces of a localizer: the window to its class probabilities and boxes."""

    def __init__(self, model: Localizer):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model.raw_outputs(images)
        logits = outputs["class_logits"][:, 1:] if self.model.background else outputs["class_logits"]
        return logits.softmax(-1), outputs["boxes"]


def set_localizer_stage(localizer: Localizer, stage: str) -> None:
    """``joint``: everything trains on both losses; ``classifier``: the features and the class head
    on the class loss; ``regressor``: the regression head alone on the box loss."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"training stage must be one of {TRAINING_STAGES}, got {stage!r}")
    localizer.training_stage = stage
    set_trainable(localizer, stage != "regressor")
    set_trainable(localizer.box_head, stage != "classifier")


def four_step_recipe(get_localizer, classifier_fraction: float, head_lr: float) -> list[Stage | Step]:
    """OverFeat's classification-then-regression recipe (section 4.2) for the localizer that
    ``get_localizer(model)`` returns (the model itself, or OverFeat's inner localizer)."""

    def new_box_head(model, train_dataset) -> None:
        localizer = get_localizer(model)
        localizer.box_head = localizer.new_box_head().to(localizer.class_head.weight.device)

    return [
        Stage(
            "step1_classifier",
            lambda model: set_localizer_stage(get_localizer(model), "classifier"),
            budget=classifier_fraction,
        ),
        Step("step2_new_box_head", new_box_head),
        Stage(
            "step3_regressor",
            lambda model: set_localizer_stage(get_localizer(model), "regressor"),
            budget=1 - classifier_fraction,
            train_changes={"optimizer": "sgd", "lr": head_lr},
        ),
    ]


def largest_object(boxes: Tensor) -> int:
    """Index of the largest box of ``Tensor[N, 4]`` (the one object a localizer is taught)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(areas.argmax())


def guesses_from_outputs(
    outputs: dict[str, Tensor], top_k: int = 5, skip_first: bool = False
) -> dict[str, Tensor]:
    """The ``top_k`` (label, score, box) guesses of each window from :meth:`Localizer.raw_outputs`
    outputs, best first: ``{"labels": int64 Tensor[B, k] (1..C), "scores": Tensor[B, k] (softmax),
    "boxes": Tensor[B, k, 4]}`` normalised xyxy, ``k = min(top_k, C)``. ``skip_first``: logit 0 is
    the background, never guessed (the scores are then over the object classes only)."""
    logits = outputs["class_logits"][:, 1:] if skip_first else outputs["class_logits"]
    probabilities = logits.softmax(dim=1)
    k = min(top_k, probabilities.shape[1])
    scores, indices = probabilities.topk(k, dim=1)
    boxes = outputs["boxes"]
    if boxes.shape[1] == 1:
        chosen = boxes.expand(-1, k, -1)
    else:
        chosen = torch.gather(boxes, 1, (indices + int(skip_first))[..., None].expand(-1, -1, 4))
    return {"labels": indices + 1, "scores": scores, "boxes": chosen}


def localizer_loss(
    outputs: dict[str, Tensor],
    targets: Tensor,
    boxes: Tensor,
    box_loss: str = "l2",
    box_weight: float = 1.0,
    background: bool = False,
) -> dict[str, Tensor]:
    """Cross-entropy on the class scores and a regression loss on the box.

    ``targets``: int64 ``Tensor[B]`` logit indices; ``boxes``: ``Tensor[B, 4]`` normalised xyxy
    targets. Class-specific regression trains only the box of the true class (OverFeat section
    4.2). With ``background``, windows of class 0 train the class head only. ``box_loss="l2"`` is
    the squared error summed over the 4 coordinates (mean over the windows with an object);
    ``"smooth_l1"`` (Fast R-CNN) is less sensitive to outliers.
    """
    if box_loss not in BOX_LOSS_CHOICES:
        raise ValueError(f"box loss must be one of {BOX_LOSS_CHOICES}, got {box_loss!r}")
    pred_boxes = outputs["boxes"]
    rows = torch.arange(len(targets), device=targets.device)
    pred_boxes = pred_boxes[rows, targets] if pred_boxes.shape[1] > 1 else pred_boxes[:, 0]
    if box_loss == "l2":
        errors = ((pred_boxes - boxes) ** 2).sum(dim=1)
    else:
        # beta=0.1 because the coordinates are in [0, 1]: errors above a tenth of the image are "large".
        errors = F.smooth_l1_loss(pred_boxes, boxes, beta=0.1, reduction="none").sum(dim=1)
    objects = targets > 0 if background else torch.ones_like(targets, dtype=torch.bool)
    loss_box = errors[objects].sum() / objects.sum().clamp(min=1)
    loss_classifier = F.cross_entropy(outputs["class_logits"], targets)
    return {"loss_classifier": loss_classifier, "loss_box": box_weight * loss_box}


def build_localizer_module(config: LocalizerConfig, num_classes: int, background: bool = False) -> Localizer:
    """The :class:`Localizer` ``config`` describes (``background``: one more class, index 0)."""
    net = build_classifier_net(
        config.backbone,
        config.window_size,
        config.pretrained_backbone,
        config.backbone_weights,
        config.hidden_dim,
        config.dropout,
        config.pool if config.backbone == "small" else "none",
        config.blocks,
        config.padding,
        config.strided_blocks,
    )
    return Localizer(
        net,
        num_classes,
        config.window_size,
        config.regression,
        config.attach,
        config.box_loss,
        config.box_weight,
        config.top_k,
        background,
        config.classifier_fraction,
        config.head_lr,
        config.channels_last,
    )


def build_localizer(config: LocalizerConfig, num_classes: int) -> Localizer:
    """The localizer ``config`` describes for ``num_classes`` classes."""
    return build_localizer_module(config, num_classes)


METHOD = Method(
    name="localizer",
    config=LocalizerConfig,
    build=build_localizer,
    label="classification + localization",
    # The run this method needs unless told otherwise: the single-object synthetic set (6,000
    # images in their own folder), all eight flips and quarter turns (the shapes have no up; turn
    # them off for real data), decoded images kept in memory; no checkpoint is picked on a
    # validation split, so it trains on train + val and evaluates on test at the end.
    run_defaults={
        "data": {
            "spec": "synthetic-single",
            "root": "data/localizer-single",
            "synthetic_images": 6000,
            "train_split": "trainval",
            "val_split": "test",
            "vertical_flip": True,
            "rotate90": True,
            "cache_images": True,
        },
        "train": {
            "epochs": 20,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 1e-3,
            "warmup_steps": 20,
            "log_every": 20,
            "eval_every": 0,
        },
    },
    compared=False,  # one object an image: scored by localization error, not beside the detectors
)
