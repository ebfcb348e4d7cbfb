"""OverFeat (Sermanet et al. 2014): a localizer slid over many positions and scales.

Section 3.5 of the paper: a fully-connected layer over an ``h x w`` feature grid is the same
function as an ``h x w`` convolution, and the FC layers after it are 1x1 convolutions. Rewriting
the layers that way (same weights, reshaped; nothing retrained) turns the fixed-window network into
one that takes any larger image and returns a map of outputs, one per window, sharing the
convolutions of overlapping windows instead of recomputing them. With the small net's valid
(unpadded) convolutions the map is exactly the per-window network; cell ``(i, j)`` is the window
whose top-left corner is ``(j * stride, i * stride)`` in the input.

The detector (:class:`OverFeat`, ``MODELS["overfeat"]``) obeys the detector contract. Training
(sections 4.2 and 5): a localizer with an extra "background" class (logit 0) learns from windows
cut from the training images at every step, half around an object (sized so it fills
``min_fill``..``max_fill`` of the window, shifted at random; target its class and its box in
window coordinates) and half background (squares holding no object over 10% of them). Test time:
run the converted net on the image at several scales, turn each cell's regression output into a
box in image pixels, keep cells whose best object class is confident, and merge the boxes across
locations and scales with :func:`detlab.boxes.merge_boxes`. Its recipes are the localizer's
(``joint``, or ``4step``: the classifier, then the class-specific regressor on frozen features).

Shape letters: B images, C classes, R box sets (1 or C), h' x w' the map of window positions,
N windows.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab.boxes import area, batched_nms, intersection, merge_boxes
from detlab.config import choice
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    DetectorModule,
    ExportPlan,
    HeatmapView,
    Inside,
    MemoryCost,
    Method,
    NotExportable,
    Stage,
    Step,
    Trace,
)
from detlab.models.localizer import (
    REGRESSION_CHOICES,
    Localizer,
    LocalizerConfig,
    build_localizer_module,
    four_step_recipe,
    set_localizer_stage,
)
from detlab.models.tensor_memory import peak_tensor_bytes

MAX_MERGE_ROUNDS = 10
# Votes merged at most (the best-scoring ones): a large image at the large scales has millions of
# cells, and merging is a loop over groups, so a crowd of confident cells would otherwise hold a
# server for minutes. An image of the test sets casts a few hundred.
MAX_VOTES_MERGED = 10_000
# A pass's resident memory is up to 1.3 times its tensors' (oneDNN's scratch space, the
# allocator), plus a part that does not grow with the image (kernels' buffers, threads' arenas):
# measured on the default network at 256 to 1024 pixels a side, and on the tests' small one;
# stated with a margin (benchmarks/results/robustness_serve.md).
TENSOR_MEMORY_MARGIN = 1.75
FIXED_PASS_BYTES = 128 * MIB
# A mined hard negative holds under this share of every object's area: clearly background (the
# windows that hold part of an object or one at the wrong size are labelled background too, but
# mining them teaches the classifier to doubt every object window).
MINED_MAX_COVER = 0.1


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

    ``forward(images: Tensor[B, 3, H, W]) -> {"class_logits": Tensor[B, K, h', w'],
    "boxes": Tensor[B, R, 4, h', w']}`` with H, W >= the window size; the boxes are normalised to
    the window of their cell, as the localizer's are to its input (K logits, as the localizer's).
    """

    def __init__(self, localizer: Localizer):
        super().__init__()
        self.window_size = localizer.window_size
        self.stride = localizer.stride
        self.num_box_sets = localizer.num_box_sets
        self.attach = localizer.attach
        self.channels_last = localizer.channels_last
        self.features = copy.deepcopy(localizer.features)
        channels = localizer.feature_channels
        self.hidden, hidden_channels = convert_layers(localizer.hidden, channels, localizer.grid)
        self.class_head, _ = convert_layers(localizer.class_head, hidden_channels, (1, 1))
        if localizer.attach == "conv":
            self.box_head, _ = convert_layers(localizer.box_head, channels, localizer.grid)
        else:
            self.box_head, _ = convert_layers(localizer.box_head, hidden_channels, (1, 1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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


def scaled_image(image: Tensor, scale: float, window_size: int) -> Tensor:
    """``Tensor[3, H, W]`` resized by ``scale`` (each side at least ``window_size``): one scale of
    the test pass, antialiased when shrinking, as the training crops (RoIAlign, 2x2 samples a
    pixel) average."""
    _, height, width = image.shape
    size = (max(window_size, round(height * scale)), max(window_size, round(width * scale)))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]


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
    """Run the original localizer on each crop of :func:`crop_windows` (the stride of its features).

    Returns the same layout as :class:`FullyConvolutionalLocalizer` for one image:
    ``{"class_logits": Tensor[C, h', w'], "boxes": Tensor[R, 4, h', w']}``.
    """
    localizer.eval()
    stride = localizer.stride
    windows, _ = crop_windows(image, localizer.window_size, stride)
    outputs = [
        localizer.raw_outputs(windows[start : start + batch_size])
        for start in range(0, len(windows), batch_size)
    ]
    logits = torch.cat([o["class_logits"] for o in outputs])
    boxes = torch.cat([o["boxes"] for o in outputs])
    map_height = (image.shape[1] - localizer.window_size) // stride + 1
    map_width = (image.shape[2] - localizer.window_size) // stride + 1
    return {
        "class_logits": logits.T.reshape(-1, map_height, map_width),
        "boxes": boxes.permute(1, 2, 0).reshape(boxes.shape[1], 4, map_height, map_width),
    }


@dataclasses.dataclass
class OverFeatConfig(LocalizerConfig):
    """OverFeat: the localizer's fields (with class-specific boxes from the conv map and valid
    convolutions, so every cell of the converted net is exactly the localizer on its window; the
    first two blocks downsample with stride-2 convolutions instead of max-pools, which trains
    about half as fast again on a CPU), and the detector's.

    Training windows: ``windows_per_image`` an image and step, ``positive_fraction`` of them
    around an object filling ``min_fill``..``max_fill`` of the window, the others drawn as the
    test pass sees windows (sides of ``window_size / scale`` for the test ``scales``, anywhere) and
    labelled by what they hold (:func:`sample_windows`). Test time: the image at each of
    ``scales`` (a window of S pixels then covers ``S / scale`` image pixels, so large scales find
    small objects: 0.35 reaches 160-pixel shapes with a 64-pixel window, 3 reaches 8-pixel ones);
    a cell votes when its best object class has probability ``score_threshold``; votes
    overlapping by ``merge_iou`` merge, again until no two do; a merged box scores
    ``1 - exp(-votes / max_votes)`` (``votes``: the sum of its members' probabilities, so more and
    surer votes rank higher); merged boxes of a class overlapping by ``nms_iou`` keep the best; at
    most ``max_detections`` an image. Ablations (test time): ``combine: nms`` keeps the best vote
    of each cluster (per-class NMS at ``merge_iou``, scored by its probability) instead of merging;
    ``window_boxes`` makes each vote's box its window instead of the regressed box.
    """

    regression: str = choice("specific", REGRESSION_CHOICES)
    padding: int = 0
    strided_blocks: int = (
        2  # stride-2 convs, not max-pools, in the first two blocks: cheaper steps (docs/localization.md)
    )
    windows_per_image: int = 16
    positive_fraction: float = 0.35  # windows around an object; the rest as the test pass sees them
    min_fill: float = 0.35
    max_fill: float = 0.9
    scales: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    score_threshold: float = 0.5
    merge_iou: float = 0.5
    nms_iou: float = 0.3  # after merging, per-class NMS of the merged boxes (0: none)
    combine: str = choice("merge", ("merge", "nms"))  # test time: merge the votes, or keep NMS's survivors
    window_boxes: bool = False  # test time: a vote's box is its window, not the regressed box (ablation)
    max_votes: float = 4.0
    max_detections: int = 100
    # Hard negatives: draw this many background candidates for each background window of a step,
    # score the clear ones (holding under MINED_MAX_COVER of every object) with the current network
    # (no gradient) and train on the highest-scoring half of the background windows, the other half
    # drawn as before (1: no mining)
    hard_negative_pool: int = 1


class OverFeat(DetectorModule):
    """Multi-scale sliding-window detector around a :class:`~detlab.models.localizer.Localizer`
    with a background class; obeys the detector contract.

    Training: ``model(images, targets) -> {"loss_classifier", "loss_box"}`` on windows sampled from
    the images (:func:`sample_windows`). Eval: ``model(images) -> [{"boxes": Tensor[N, 4] xyxy
    pixels, "scores": Tensor[N], "labels": int64 Tensor[N] (1..C)}]``, from the converted
    network (rebuilt whenever the weights changed).
    """

    recipes = ("joint", "4step")

    def __init__(self, localizer: Localizer, config: OverFeatConfig):
        super().__init__()
        if not localizer.background:
            raise ValueError("OverFeat's localizer needs a background class (background=True)")
        self.localizer = localizer
        self.windows_per_image = config.windows_per_image
        self.positive_fraction = config.positive_fraction
        self.fill = (config.min_fill, config.max_fill)
        self.scales = tuple(config.scales)
        self.score_threshold = config.score_threshold
        self.merge_iou, self.nms_iou = config.merge_iou, config.nms_iou
        self.combine, self.window_boxes = config.combine, config.window_boxes
        self.max_votes = config.max_votes
        self.max_detections = config.max_detections
        self.classifier_fraction, self.head_lr = config.classifier_fraction, config.head_lr
        self.hard_negative_pool = config.hard_negative_pool
        self._dense: tuple[int, FullyConvolutionalLocalizer] | None = None  # (weights version, net)
        self._memory_cost: MemoryCost | None = None  # measured once (the maps' sizes never change)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        if not self.training:
            return [self.detect(image, trace) for image in images]
        if targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        window = self.localizer.window_size
        sides = (window / max(self.scales), window / min(self.scales))
        crops, labels, boxes = [], [], []
        for image, target in zip(images, targets):
            image_size, object_boxes, object_labels = (
                tuple(image.shape[-2:]),
                target["boxes"].float().cpu(),
                target["labels"].cpu(),
            )
            windows, image_labels, image_boxes = sample_windows(
                image_size,
                object_boxes,
                object_labels,
                self.windows_per_image,
                self.fill,
                self.positive_fraction,
                sides,
            )
            image_crops = cut_windows(image, windows, window)
            if self.hard_negative_pool > 1:
                candidates = sample_windows(
                    image_size,
                    object_boxes,
                    object_labels,
                    int((image_labels == 0).sum()) * (self.hard_negative_pool - 1),
                    self.fill,
                    0.0,
                    sides,
                )
                clear = candidates[0][object_cover(candidates[0], object_boxes) < MINED_MAX_COVER]
                image_crops, image_labels, image_boxes = self.with_hard_negatives(
                    image, (image_crops, image_labels, image_boxes), clear
                )
            crops.append(image_crops)
            labels.append(image_labels)
            boxes.append(image_boxes)
        device = images[0].device
        if not sum(len(crop) for crop in crops):  # no window could be placed in any image
            return {
                name: self.localizer.class_head.weight.sum() * 0.0 for name in self.localizer.loss_names()
            }
        outputs = self.localizer.raw_outputs(torch.cat(crops))
        losses = self.localizer.losses(outputs, torch.cat(labels).to(device), torch.cat(boxes).to(device))
        return {name: losses[name] for name in self.localizer.loss_names()}

    @torch.no_grad()
    def object_scores(self, crops: Tensor) -> Tensor:
        """The best object class's probability of each window, by the network as it is now (eval
        mode, so scoring leaves BatchNorm's statistics alone)."""
        was_training = self.localizer.training
        self.localizer.eval()
        try:
            return self.localizer.raw_outputs(crops)["class_logits"].float().softmax(dim=1)[:, 1:].amax(dim=1)
        finally:
            self.localizer.train(was_training)

    def with_hard_negatives(
        self, image: Tensor, sampled: tuple, candidates: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``sampled`` (crops, labels, box targets) with the first half of its background windows
        replaced by the highest-scoring windows among them and the background ``candidates``
        (``Tensor[M, 4]`` windows): the windows the network most wrongly takes for objects."""
        crops, labels, targets = sampled
        background = torch.where(labels == 0)[0]
        pool = cut_windows(image, candidates, self.localizer.window_size)
        if len(background) < 2 or not len(pool):
            return crops, labels, targets
        half = len(background) // 2  # the first half is replaced, the second stays as drawn
        pool = torch.cat([crops[background[:half]], pool])
        hardest = self.object_scores(pool).argsort(descending=True)[:half]
        keep = torch.cat([torch.where(labels != 0)[0], background[half:]])
        crops = torch.cat([crops[keep], pool[hardest]])
        labels = torch.cat([labels[keep], labels.new_zeros(len(hardest))])
        targets = torch.cat(
            [targets[keep], targets.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(hardest), 4)]
        )
        return crops, labels, targets

    def dense_network(self) -> FullyConvolutionalLocalizer:
        """The localizer converted to convolutions, reconverted when any weight changed since."""
        version = sum(tensor._version for tensor in self.localizer.state_dict().values())
        if self._dense is None or self._dense[0] != version:
            self._dense = (version, to_fully_convolutional(self.localizer))
        return self._dense[1]

    @torch.no_grad()
    def votes(self, image: Tensor, trace: Trace = NO_TRACE) -> tuple[Tensor, Tensor, Tensor]:
        """Every confident cell at every scale: ``(boxes Tensor[V, 4] image pixels, scores Tensor[V],
        labels Tensor[V])``."""
        network = self.dense_network()
        all_boxes, all_scores, all_labels = [], [], []
        for scale in self.scales:
            windows, scores, labels, boxes = self.scale_pass(network, image, scale, trace)
            keep = scores >= self.score_threshold
            if not keep.any():
                continue
            all_boxes.append(windows[keep] if self.window_boxes else boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        if not all_boxes:
            return (
                image.new_zeros(0, 4),
                image.new_zeros(0),
                torch.zeros(0, dtype=torch.int64, device=image.device),
            )
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        if len(scores) > MAX_VOTES_MERGED:
            best = scores.topk(MAX_VOTES_MERGED).indices
            boxes, scores, labels = boxes[best], scores[best], labels[best]
        return boxes, scores, labels

    @staticmethod
    def scale_pass(
        network: FullyConvolutionalLocalizer, image: Tensor, scale: float, trace: Trace = NO_TRACE
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The converted ``network`` on ``image`` resized by ``scale``, one row a cell, in image
        pixels: ``(windows Tensor[N, 4], best object probability Tensor[N], its label Tensor[N]
        (1..C), regressed box of that class Tensor[N, 4])``."""
        window = network.window_size
        _, height, width = image.shape
        scaled = scaled_image(image, scale, window)
        scaled_height, scaled_width = scaled.shape[-2:]
        outputs = network(scaled[None])
        trace(
            "scale",
            scale=scale,
            class_logits=outputs["class_logits"],
            scaled_size=(scaled_height, scaled_width),
        )
        probabilities = outputs["class_logits"][0].float().softmax(dim=0)[1:]  # drop background: [C, h', w']
        scores, indices = probabilities.max(dim=0)
        boxes = outputs["boxes"][0].float()  # [R, 4, h', w']
        if boxes.shape[0] > 1:
            boxes = torch.gather(boxes, 0, (indices + 1)[None, None].expand(1, 4, -1, -1))
        boxes = boxes[0].permute(1, 2, 0).reshape(-1, 4).clamp(0, 1) * window  # [N, 4] in window pixels
        origins = network.window_origins(*scores.shape).to(boxes).reshape(-1, 2).repeat(1, 2)
        to_image = torch.tensor([scaled_width / width, scaled_height / height] * 2).to(boxes)
        windows = (origins + torch.tensor([0.0, 0.0, window, window]).to(boxes)) / to_image
        # row i of the object probabilities is label i + 1
        return windows, scores.reshape(-1), indices.reshape(-1) + 1, (boxes + origins) / to_image

    @torch.no_grad()
    def window_scores(self, image: Tensor, scale: float, convolutional: bool) -> Tensor:
        """The localizer's object class probabilities ``Tensor[C, h', w']`` for every window of
        ``image`` resized by ``scale`` (windows at steps of the feature stride): its FC layers as
        convolutions in one pass (``convolutional``), or the original network on each crop."""
        window, stride = self.localizer.window_size, self.localizer.stride
        scaled = scaled_image(image, scale, window)
        if convolutional:
            # the windows wholly inside the image: a net that reads less than its whole window
            # (valid strided convolutions) has a few more cells at the far edges
            rows, columns = ((side - window) // stride + 1 for side in scaled.shape[-2:])
            logits = self.dense_network()(scaled[None])["class_logits"][0, :, :rows, :columns]
        else:
            logits = naive_sliding_window(self.localizer, scaled)["class_logits"]
        return logits.float().softmax(dim=0)[1:]

    def detect(self, image: Tensor, trace: Trace = NO_TRACE) -> dict[str, Tensor]:
        """One image's detections: every scale's confident cells vote, the votes are merged."""
        boxes, scores, labels = self.votes(image, trace)
        if self.combine == "nms":
            keep = batched_nms(boxes, scores, labels, self.merge_iou)[: self.max_detections]
            trace("merge")
            return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].to(torch.int64)}
        for _ in range(MAX_MERGE_ROUNDS):  # merge merged boxes again until no two overlap by merge_iou
            count = len(boxes)
            boxes, scores, labels = merge_boxes(boxes, scores, labels, self.merge_iou)
            if len(boxes) == count:
                break
        height, width = image.shape[-2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        if self.nms_iou > 0 and len(boxes):
            keep = batched_nms(boxes, scores, labels, self.nms_iou)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        scores = 1.0 - torch.exp(-scores / self.max_votes)  # ranks as the vote sums do, within (0, 1)
        limit = self.max_detections
        trace("merge")
        return {"boxes": boxes[:limit], "scores": scores[:limit], "labels": labels[:limit].to(torch.int64)}

    def recipe(self, name: str) -> list[Stage | Step]:
        if name == "joint":
            return [Stage("joint", lambda model: set_localizer_stage(model.localizer, "joint"))]
        return four_step_recipe(lambda model: model.localizer, self.classifier_fraction, self.head_lr)

    def memory_cost(self) -> MemoryCost:
        """The network runs on the whole image at every scale, so its memory grows with the image
        times the largest scale's area, by what its maps hold (fewer downsampling blocks: larger
        maps). Measured on its own network once: the tensors of a pass over a probe image
        (:func:`~detlab.models.tensor_memory.peak_tensor_bytes`), per pixel, times
        :data:`TENSOR_MEMORY_MARGIN` for what kernels and the allocator hold beside them, plus
        :data:`FIXED_PASS_BYTES` (``benchmarks/bench_robustness_serve.py`` checks both against
        the resident memory of the default network on images up to 1024 x 1024)."""
        if self._memory_cost is None:
            side = 3 * self.localizer.window_size
            device = next(self.localizer.parameters()).device
            probe = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                self.detect(probe)  # converts the network once, outside the count
                peak = peak_tensor_bytes(lambda: self.detect(probe))
            self._memory_cost = MemoryCost(TENSOR_MEMORY_MARGIN * peak / side**2, FIXED_PASS_BYTES)
        return self._memory_cost

    def export_plan(self) -> ExportPlan:
        raise NotExportable(
            "OverFeat's detections come from a Python loop over scales and window offsets followed by box "
            "merging; not exportable as one graph"
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """The converted (fully convolutional) network at every scale -> boxes merged; the views:
        each scale's map of window scores (best object class probability)."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        height, width = image.shape[-2:]
        network = self.dense_network()
        window, stride = network.window_size, network.stride
        views = []
        for values in trace.all("scale"):
            scores = values["class_logits"][0].softmax(dim=0)[1:].amax(dim=0)  # [h', w'], background dropped
            map_height, map_width = scores.shape
            scaled_height, scaled_width = values["scaled_size"]
            # Cell (i, j) is the window at (j, i) * stride of the scaled image; drawn as a
            # stride-sized tile around the window's centre.
            factor_x, factor_y, offset = scaled_width / width, scaled_height / height, (window - stride) / 2
            region = (
                offset / factor_x,
                offset / factor_y,
                (offset + map_width * stride) / factor_x,
                (offset + map_height * stride) / factor_y,
            )
            title = f"scale {values['scale']:g}: {map_height} x {map_width} windows, best class probability"
            views.append(HeatmapView(title, scores, region))

        def title(name: str, values: dict) -> str:
            if name == "scale":
                cells = values["class_logits"].shape[-2] * values["class_logits"].shape[-1]
                return f"scale {values['scale']:g}: {cells} windows of {window} px in one pass"
            return "merge window boxes across positions and scales"

        return output, Inside(trace.stages(title), views)


def object_cover(windows: Tensor, boxes: Tensor) -> Tensor:
    """``Tensor[N]``: the largest share of any object's area (``boxes`` ``Tensor[M, 4]``) that each
    window (``Tensor[N, 4]``, xyxy pixels) holds; 0 without objects."""
    if not len(boxes) or not len(windows):
        return windows.new_zeros(len(windows))
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6).prod(-1)
    return (intersection(windows, boxes) / areas).amax(dim=1)


def cut_windows(image: Tensor, windows: Tensor, size: int, samples: int = 2) -> Tensor:
    """``Tensor[N, 3, size, size]``: the square ``windows`` (``Tensor[N, 4]`` xyxy pixels, inside
    the image) of ``image`` resampled to ``size`` pixels: each output pixel the mean of ``samples``
    x ``samples`` bilinear samples spread over its bin, which is RoIAlign's sampling (``aligned``,
    ``sampling_ratio=samples``; equal to torchvision's ``roi_align`` within float rounding, a
    test checks) done by one ``grid_sample`` and an average pool, faster on a CPU
    (``benchmarks/bench_overfeat_step.py``)."""
    if not image.is_floating_point():
        raise TypeError(f"cut_windows needs a floating-point image, got {image.dtype}")
    count, points = len(windows), size * samples
    if not count:
        return image.new_zeros(0, image.shape[0], size, size)
    source = image.to(torch.promote_types(image.dtype, torch.float32))  # sample points in float32 at least
    steps = (torch.arange(points, dtype=source.dtype, device=image.device) + 0.5) / points
    windows = windows.to(source)
    height, width = image.shape[-2:]
    xs = (windows[:, 0:1] + steps * (windows[:, 2:3] - windows[:, 0:1])) / width * 2 - 1  # [N, points]
    ys = (windows[:, 1:2] + steps * (windows[:, 3:4] - windows[:, 1:2])) / height * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(-1, points, -1), ys[:, :, None].expand(-1, -1, points)], dim=-1)
    spread = F.grid_sample(
        source[None].expand(count, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return F.avg_pool2d(spread, samples).to(image.dtype)


def sample_windows(
    image_size: tuple[int, int],
    boxes: Tensor,
    labels: Tensor,
    count: int,
    fill: tuple[float, float] = (0.35, 0.9),
    positive_fraction: float = 0.5,
    side_range: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` square training windows of one image: ``(windows Tensor[N, 4] xyxy pixels, logit
    labels int64 Tensor[N] (0 = background), box targets Tensor[N, 4] normalised to the window)``.
    Random draws come from torch's global generator (so a resumed run draws the same windows).

    The first ``round(count * positive_fraction)`` are around an object (chosen at random): a
    square whose side the object's longer side fills ``fill[0]``..``fill[1]`` of, placed at random
    where it holds the object whole and stays in the image. The others are drawn as the test pass
    meets windows: a side log-uniform in ``side_range`` (default 0.3-1 times the shorter image
    side; at most that side), anywhere in the image, labelled with the object it holds (at least
    90% of the object inside, filling ``fill`` of the window; the largest such object) or else
    background, so parts of objects and objects too small for the window are background, as
    they must be at test time. A positive window that cannot be placed is left out.
    """
    height, width = image_size
    shorter = min(height, width)
    low, high = side_range if side_range is not None else (0.3 * shorter, shorter)
    low, high = min(low, shorter), min(high, shorter)

    def uniform(lower: float, upper: float) -> float:
        return lower + (upper - lower) * float(torch.rand(()))

    windows, window_labels, targets = [], [], []
    positives = round(count * positive_fraction) if len(boxes) else 0
    for _ in range(positives):
        which = int(torch.randint(len(boxes), ()))
        x1, y1, x2, y2 = boxes[which].tolist()
        longest = max(x2 - x1, y2 - y1)
        side = min(longest / uniform(*fill), height, width)
        if side < longest:
            continue
        x = uniform(max(0.0, x2 - side), min(x1, width - side))
        y = uniform(max(0.0, y2 - side), min(y1, height - side))
        windows.append([x, y, x + side, y + side])
        window_labels.append(int(labels[which]))
        targets.append(((boxes[which] - torch.tensor([x, y, x, y])) / side).clamp(0, 1).tolist())
    for _ in range(count - positives):
        side = math.exp(uniform(math.log(low), math.log(high)))
        x, y = uniform(0, width - side), uniform(0, height - side)
        windows.append([x, y, x + side, y + side])
    if not windows:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)
    windows = torch.tensor(windows)
    drawn_labels, drawn_targets = label_windows(windows[len(targets) :], boxes, labels, fill)
    return (
        windows,
        torch.cat([torch.tensor(window_labels, dtype=torch.int64), drawn_labels]),
        torch.cat([torch.tensor(targets).view(-1, 4), drawn_targets]),
    )


def label_windows(
    windows: Tensor, boxes: Tensor, labels: Tensor, fill: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """What each square window (``Tensor[N, 4]`` xyxy pixels) should say: ``(logit labels int64
    Tensor[N], box targets Tensor[N, 4] normalised to the window)``. A window holding at least 90%
    of an object whose longer side fills ``fill`` of the window is that object (the largest such
    one); any other window is background (label 0, target the whole window)."""
    window_labels = torch.zeros(len(windows), dtype=torch.int64)
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(len(windows), 1)
    if not len(boxes) or not len(windows):
        return window_labels, targets
    areas = area(boxes)
    longest_sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    sides = (windows[:, 2] - windows[:, 0])[:, None]
    fills = longest_sides[None] / sides
    held = (intersection(windows, boxes) >= 0.9 * areas) & (fills >= fill[0]) & (fills <= fill[1])
    which = torch.where(held, areas, torch.full_like(held, -1.0, dtype=areas.dtype)).argmax(dim=1)
    found = held.any(dim=1)
    window_labels[found] = labels[which[found]].to(torch.int64)
    targets[found] = ((boxes[which[found]] - windows[found, :2].repeat(1, 2)) / sides[found]).clamp(0, 1)
    return window_labels, targets


def build_overfeat(config: OverFeatConfig, num_classes: int) -> OverFeat:
    """The detector ``config`` describes for ``num_classes`` object classes."""
    return OverFeat(build_localizer_module(config, num_classes, background=True), config)


METHOD = Method(
    name="overfeat",
    config=OverFeatConfig,
    build=build_overfeat,
    label="OverFeat",
    # The multi-object synthetic set, whose shapes have no up and down; windows are small and many.
    run_defaults={
        "data": {"vertical_flip": True, "rotate90": True},
        "train": {
            "epochs": 10,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-3,
            "warmup_steps": 20,
            "log_every": 50,
            "eval_every": 0,
            "amp_cpu_bf16": True,
        },
    },
    # Checkpoints saved before strided_blocks existed were trained with max-pools in every block.
    stored_defaults={"strided_blocks": 0},
)
