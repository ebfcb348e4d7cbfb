"""OverFeat (Sermanet et al. 2014): a trained localizer slid over many positions and scales.

Section 3.5 of the paper: a fully-connected layer over an ``h x w`` feature grid is the same
function as an ``h x w`` convolution, and the FC layers after it are 1x1 convolutions. Rewriting
the layers that way (same weights, reshaped; nothing retrained) turns the fixed-window network into
one that takes any larger image and returns a map of outputs, one per window, sharing the
convolutions of overlapping windows instead of recomputing them. With the small net's valid
(unpadded) convolutions the map is exactly the per-window network; cell ``(i, j)`` is the window
whose top-left corner is ``(j * stride, i * stride)`` in the input.

Detection (sections 4.3 and 5): run the converted net on the image at several scales, turn each
cell's regression output into a box in image pixels, keep cells whose best object class is
confident, and merge the boxes across locations and scales with :func:`detlab.boxes.merge_boxes`.
The localizer used for detection is trained with an extra "background" class (index 0) on windows
cut from multi-object images (:func:`detection_windows`), as OverFeat's detection model is trained
with negative windows.

Shape letters: B images, C classes, R box sets (1 or C), h' x w' the map of window positions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab import config as config_module
from detlab.boxes import merge_boxes
from detlab.config import DataConfig, TrainConfig
from detlab.models.localizer import Localizer
from detlab.models.localizer_training import LocalizerModelConfig

BACKGROUND = "background"


def linear_as_conv(linear: nn.Linear, in_channels: int, kernel: tuple[int, int]) -> nn.Conv2d:
    """The convolution equal to ``linear`` applied to a flattened ``in_channels x kernel`` grid.

    ``nn.Flatten`` orders a ``[C, h, w]`` map channel-major, which is exactly the layout of a
    ``Conv2d`` weight ``[out, C, h, w]``: the weight matrix is only reshaped.
    """
    expected = in_channels * kernel[0] * kernel[1]
    if linear.in_features != expected:
        raise ValueError(
            f"linear layer takes {linear.in_features} inputs, a {in_channels}x{kernel} grid has {expected}"
        )
    conv = nn.Conv2d(in_channels, linear.out_features, kernel, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, *kernel))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def convert_layers(layers: nn.Module, in_channels: int, grid: tuple[int, int]) -> tuple[nn.Sequential, int]:
    """Rewrite a head ``[conv..., (grid max-pool), Flatten, Linear, ReLU, Dropout, Linear, ...]`` (or
    one Linear, taken to follow a flattened 1x1 map) as convolutions. Returns the new ``nn.Sequential`` and
    its number of output channels."""
    modules = list(layers) if isinstance(layers, nn.Sequential) else [layers]
    converted: list[nn.Module] = []
    channels, kernel = in_channels, grid
    for module in modules:
        if isinstance(module, nn.Flatten):
            continue
        if isinstance(module, nn.Linear):
            converted.append(linear_as_conv(module, channels, kernel))
            channels, kernel = module.out_features, (1, 1)
        elif isinstance(module, nn.Conv2d):
            converted.append(copy.deepcopy(module))
            channels = module.out_channels
        elif isinstance(module, nn.MaxPool2d):
            # A max over the whole window grid becomes the same max-pool sliding with stride 1.
            size = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
            if tuple(size) != tuple(kernel):
                raise ValueError(f"a {size} max-pool over a {kernel} grid cannot be converted")
            converted.append(nn.MaxPool2d(kernel, stride=1))
            kernel = (1, 1)
        elif isinstance(module, nn.ReLU | nn.Dropout | nn.BatchNorm2d):
            converted.append(copy.deepcopy(module))
        else:
            raise ValueError(f"cannot convert a {type(module).__name__} layer to a convolution")
    return nn.Sequential(*converted), channels


class FullyConvolutionalLocalizer(nn.Module):
    """The localizer with its FC layers as convolutions (a copy: the original is untouched).

    ``forward(images: Tensor[B, 3, H, W]) -> {"class_logits": Tensor[B, C, h', w'],
    "boxes": Tensor[B, R, 4, h', w']}`` with H, W >= the window size; the boxes are normalised to
    the window of their cell, as the localizer's are to its input.
    """

    def __init__(self, localizer: Localizer):
        super().__init__()
        self.window_size = localizer.window_size
        self.stride = localizer.features.stride
        self.num_classes = localizer.num_classes
        self.num_box_sets = localizer.num_box_sets
        self.attach = localizer.attach
        self.features = copy.deepcopy(localizer.features)
        channels = localizer.features.out_channels
        self.hidden, hidden_channels = convert_layers(localizer.hidden, channels, localizer.grid)
        self.class_head, _ = convert_layers(localizer.class_head, hidden_channels, (1, 1))
        if localizer.attach == "conv":
            self.box_head, _ = convert_layers(localizer.box_head, channels, localizer.grid)
        else:
            self.box_head, _ = convert_layers(localizer.box_head, hidden_channels, (1, 1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        feature_map = self.features(images)
        hidden = self.hidden(feature_map)
        boxes = self.box_head(feature_map if self.attach == "conv" else hidden)
        batch, _, height, width = boxes.shape
        return {
            "class_logits": self.class_head(hidden),
            "boxes": boxes.view(batch, self.num_box_sets, 4, height, width),
        }

    def window_origins(self, map_height: int, map_width: int) -> Tensor:
        """``Tensor[h', w', 2]``: the ``(x, y)`` top-left pixel of each cell's window."""
        ys = torch.arange(map_height, dtype=torch.float32) * self.stride
        xs = torch.arange(map_width, dtype=torch.float32) * self.stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y], dim=-1)


def to_fully_convolutional(localizer: Localizer) -> FullyConvolutionalLocalizer:
    """Convert a trained :class:`Localizer` (weights reshaped, no retraining); eval mode."""
    return FullyConvolutionalLocalizer(localizer).eval()


def crop_windows(image: Tensor, window_size: int, stride: int) -> tuple[Tensor, Tensor]:
    """Every ``window_size`` square at steps of ``stride`` pixels, row by row (the naive sliding
    window). ``Tensor[3, H, W] -> (Tensor[N, 3, S, S], origins Tensor[N, 2] as (x, y))``."""
    _, height, width = image.shape
    ys = range(0, height - window_size + 1, stride)
    xs = range(0, width - window_size + 1, stride)
    windows = [image[:, y : y + window_size, x : x + window_size] for y in ys for x in xs]
    origins = torch.tensor([[x, y] for y in ys for x in xs], dtype=torch.float32)
    return torch.stack(windows), origins


@torch.no_grad()
def naive_sliding_window(localizer: Localizer, image: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    """Run the original localizer on each crop of :func:`crop_windows` (stride of its features).

    Returns the same layout as :class:`FullyConvolutionalLocalizer` for one image:
    ``{"class_logits": Tensor[C, h', w'], "boxes": Tensor[R, 4, h', w']}``.
    """
    localizer.eval()
    stride = localizer.features.stride
    windows, _ = crop_windows(image, localizer.window_size, stride)
    outputs = [localizer(windows[start : start + batch_size]) for start in range(0, len(windows), batch_size)]
    logits = torch.cat([o["class_logits"] for o in outputs])
    boxes = torch.cat([o["boxes"] for o in outputs])
    map_height = (image.shape[1] - localizer.window_size) // stride + 1
    map_width = (image.shape[2] - localizer.window_size) // stride + 1
    return {
        "class_logits": logits.T.reshape(-1, map_height, map_width),
        "boxes": boxes.permute(1, 2, 0).reshape(boxes.shape[1], 4, map_height, map_width),
    }


class OverFeatDetector(nn.Module):
    """Multi-scale sliding-window detector built from a localizer with a background class.

    ``forward(images: list[Tensor[3, H, W]]) -> list[{"boxes": Tensor[N, 4] xyxy pixels,
    "scores": Tensor[N], "labels": int64 Tensor[N] (1..C)}]`` (eval only: train the localizer).

    ``scales``: factors applied to the image before the pass (a window of S pixels then covers
    ``S / scale`` image pixels, so large scales find small objects); ``score_threshold``: minimum
    object-class probability for a cell to vote; ``merge_iou``: overlap at which votes merge. The
    merged score (a sum of votes) is divided by ``max_votes`` and clipped to 1 so it stays a
    probability-like confidence for ranking.
    """

    def __init__(
        self,
        localizer: Localizer,
        scales: tuple[float, ...] = (1.0, 1.5, 2.0),
        score_threshold: float = 0.5,
        merge_iou: float = 0.5,
        max_votes: float = 4.0,
        max_detections: int = 100,
    ):
        super().__init__()
        self.network = to_fully_convolutional(localizer)
        self.scales = tuple(scales)
        self.score_threshold = score_threshold
        self.merge_iou = merge_iou
        self.max_votes = max_votes
        self.max_detections = max_detections

    def train(self, mode: bool = True):  # the converted network only ever runs in eval mode
        return super().train(False)

    @torch.no_grad()
    def votes(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every confident cell at every scale: ``(boxes Tensor[V, 4] image pixels, scores Tensor[V],
        labels Tensor[V])``."""
        window = self.network.window_size
        _, height, width = image.shape
        all_boxes, all_scores, all_labels = [], [], []
        for scale in self.scales:
            scaled_height = max(window, round(height * scale))
            scaled_width = max(window, round(width * scale))
            scaled = F.interpolate(
                image[None], size=(scaled_height, scaled_width), mode="bilinear", align_corners=False
            )
            outputs = self.network(scaled)
            probabilities = outputs["class_logits"][0].softmax(dim=0)[1:]  # drop background: [C-1, h', w']
            scores, indices = probabilities.max(dim=0)
            keep = scores >= self.score_threshold
            if not keep.any():
                continue
            boxes = outputs["boxes"][0]  # [R, 4, h', w']
            if boxes.shape[0] > 1:
                boxes = torch.gather(boxes, 0, (indices + 1)[None, None].expand(1, 4, -1, -1))
            boxes = boxes[0].permute(1, 2, 0)[keep].clamp(0, 1) * window  # [V, 4] in window pixels
            origins = self.network.window_origins(*scores.shape)[keep]
            boxes = (boxes + origins.repeat(1, 2)) / torch.tensor(
                [scaled_width / width, scaled_height / height] * 2
            )
            all_boxes.append(boxes)
            all_scores.append(scores[keep])
            # Row i of the object probabilities is the localizer's class index i + 1 (0 is
            # background), which is dataset label i + 1.
            all_labels.append(indices[keep] + 1)
        if not all_boxes:
            return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None) -> list[dict[str, Tensor]]:
        if targets is not None:
            raise ValueError("OverFeatDetector is evaluation-only; train its localizer with train_overfeat")
        results = []
        for image in images:
            boxes, scores, labels = self.votes(image)
            boxes, scores, labels = merge_boxes(boxes, scores, labels, self.merge_iou)
            height, width = image.shape[-2:]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            scores = (scores / self.max_votes).clamp(max=1.0)
            results.append(
                {
                    "boxes": boxes[: self.max_detections],
                    "scores": scores[: self.max_detections],
                    "labels": labels[: self.max_detections].to(torch.int64),
                }
            )
        return results


def detection_windows(
    dataset,
    window_size: int,
    windows_per_image: int = 8,
    seed: int = 0,
    min_fill: float = 0.35,
    max_fill: float = 0.9,
):
    """Training windows for the detection localizer, cut from multi-object images.

    Half the windows are positives: a square around one object, sized so the object's longer side
    fills ``min_fill``..``max_fill`` of it, shifted at random; its label is the object's (1..C) and
    its box target that object in window coordinates. The other half are random squares that hold
    no object filling more than 10% of them: label 1, the background class (dataset labels
    shift up by one, so the localizer's class list is ``["background", *classes]``).
    Returns a :class:`~detlab.models.localizer_training.WindowData`.
    """
    from detlab.data.images import load_image
    from detlab.models.localizer_training import WindowData

    generator = torch.Generator().manual_seed(seed)
    images, labels, boxes = [], [], []

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def add(image: Tensor, x: float, y: float, side: float, label: int, box: Tensor) -> None:
        crop = image[:, int(y) : int(y + side), int(x) : int(x + side)]
        window = F.interpolate(
            crop[None], size=(window_size, window_size), mode="bilinear", align_corners=False
        )[0]
        images.append((window * 255).round().clamp(0, 255).to(torch.uint8))
        labels.append(label)
        boxes.append(box)

    for record in dataset.records:
        image = load_image(record.image_path)
        _, height, width = image.shape
        object_boxes = record.boxes.float()
        for index in range(windows_per_image):
            if index % 2 == 0 and len(object_boxes):
                which = int(torch.randint(len(object_boxes), (), generator=generator))
                x1, y1, x2, y2 = object_boxes[which].tolist()
                longest = max(x2 - x1, y2 - y1)
                side = min(longest / uniform(min_fill, max_fill), height, width)
                if side < longest:
                    continue
                x = uniform(max(0.0, x2 - side), min(x1, width - side))
                y = uniform(max(0.0, y2 - side), min(y1, height - side))
                box = (object_boxes[which] - torch.tensor([x, y, x, y])) / side
                add(image, x, y, side, int(record.labels[which]) + 1, box.clamp(0, 1))
            else:
                for _attempt in range(10):
                    side = uniform(0.3, 1.0) * min(height, width)
                    x, y = uniform(0, width - side), uniform(0, height - side)
                    window = torch.tensor([x, y, x + side, y + side])
                    if len(object_boxes):
                        top_left = torch.maximum(object_boxes[:, :2], window[:2])
                        bottom_right = torch.minimum(object_boxes[:, 2:], window[2:])
                        inside = (bottom_right - top_left).clamp(min=0).prod(dim=1)
                        if float(inside.max()) > 0.1 * side * side:
                            continue
                    add(image, x, y, side, 1, torch.tensor([0.0, 0.0, 1.0, 1.0]))
                    break
    return WindowData(
        torch.stack(images), torch.tensor(labels), torch.stack(boxes), [BACKGROUND, *dataset.classes]
    )


@dataclasses.dataclass
class DetectorConfig:
    """How the converted network is applied: image ``scales``, the class probability a cell needs
    to vote (``score_threshold``), the overlap at which votes merge (``merge_iou``); and the
    training windows cut from each image (``windows_per_image``). ``eval_images``: test images
    evaluated (0 = all)."""

    # A 64-pixel window finds objects of about 22-58 pixels (35-90% of it, as trained) at each
    # scale: 0.35 reaches 160-pixel shapes, 3 reaches 8-pixel ones.
    scales: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    score_threshold: float = 0.5
    merge_iou: float = 0.5
    windows_per_image: int = 8
    eval_images: int = 0


def _default_model() -> LocalizerModelConfig:
    # 600 images: the same synthetic set the other detectors use under data/synthetic. The box head
    # sits on the conv map, as OverFeat's regressor sits on its pool-5 features.
    # Valid convolutions: every cell of the converted net is exactly the localizer on its window.
    return LocalizerModelConfig(
        recipe="joint", regression="specific", attach="conv", synthetic_images=600, padding=0
    )


@dataclasses.dataclass
class OverFeatConfig:
    model: LocalizerModelConfig = dataclasses.field(default_factory=_default_model)
    detector: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    data: DataConfig = dataclasses.field(
        default_factory=lambda: DataConfig(
            spec="synthetic", root="data/synthetic", vertical_flip=True, rotate90=True
        )
    )
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            out_dir="runs/overfeat",
            epochs=10,
            batch_size=32,
            optimizer="adamw",
            lr=1e-3,
            warmup_steps=20,
            log_every=50,
        )
    )


def evaluate_detector(detector: nn.Module, dataset, num_images: int = 0) -> dict:
    """VOC mAP@0.5 of ``detector`` on the first ``num_images`` (0 = all) records of ``dataset``."""
    from detlab.data.images import load_image
    from detlab.eval.voc import VOCEvaluator

    records = dataset.records[:num_images] if num_images > 0 else dataset.records
    evaluator = VOCEvaluator(dataset.classes, iou_threshold=0.5)
    start = time.perf_counter()
    for record in records:
        evaluator.update(detector([load_image(record.image_path)]), [record.target()])
    seconds = time.perf_counter() - start
    result = evaluator.compute()
    return {
        "mAP@0.5": result.mean_ap,
        "per_class_AP": {row["class"]: row["AP"] for row in result.per_class()},
        "images": len(records),
        "seconds_per_image": seconds / max(1, len(records)),
    }


def train_overfeat(
    config: OverFeatConfig, log: Callable[[str], None] = print, checkpoint: str | None = None
) -> dict:
    """Train the detection localizer on windows of ``config.data`` (train split), convert it, and
    evaluate the multi-scale detector with VOC mAP@0.5 on the test split. With ``checkpoint`` (a
    localizer trained with a background class) training is skipped.

    Writes ``overfeat.yaml`` and ``detection.json`` (plus the localizer's run files) under
    ``train.out_dir``; returns the results.
    """
    from detlab.models.localizer_training import (
        LocalizerConfig,
        evaluate_localizer,
        load_detection_dataset,
        load_localizer,
        train_localizer,
    )

    out_dir = Path(config.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_module.save(config, out_dir / "overfeat.yaml")
    data, detector_config = config.data, config.detector
    test_set = load_detection_dataset(data, data.test_split, config.model.synthetic_images, config.train.seed)
    results: dict = {}
    test_windows = None
    if checkpoint is None:
        train_set = load_detection_dataset(
            data, data.train_split, config.model.synthetic_images, config.train.seed
        )
        window = config.model.window_size
        train_windows = detection_windows(
            train_set, window, detector_config.windows_per_image, config.train.seed
        )
        test_windows = detection_windows(test_set, window, 4, config.train.seed + 1)
        log(
            f"overfeat: {len(train_windows)} training windows ({int((train_windows.labels == 1).sum())} background)"
        )
        localizer_config = LocalizerConfig(model=config.model, data=data, train=config.train)
        trained = train_localizer(localizer_config, log, data=(train_windows, test_windows))
        results["training_seconds"] = trained["training_seconds"]
        results["train_windows"] = len(train_windows)
        checkpoint = str(out_dir / "model.pt")
    localizer, _, classes = load_localizer(checkpoint)
    if classes[0] != BACKGROUND or classes[1:] != list(test_set.classes):
        raise ValueError(
            f"{checkpoint}: the localizer's classes {classes} are not ['background', *{test_set.classes}]; "
            "train it with detlab overfeat on this data set"
        )
    if test_windows is not None:
        results["window_test"] = evaluate_localizer(localizer, test_windows)
    detector = OverFeatDetector(
        localizer, detector_config.scales, detector_config.score_threshold, detector_config.merge_iou
    )
    results["detection"] = evaluate_detector(detector, test_set, detector_config.eval_images)
    results["scales"] = list(detector_config.scales)
    (out_dir / "detection.json").write_text(json.dumps(results, indent=2))
    log(f"overfeat: mAP@0.5 {results['detection']['mAP@0.5']:.4f} on {results['detection']['images']} images")
    return results
