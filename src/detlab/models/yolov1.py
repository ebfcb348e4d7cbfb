"""YOLO v1 (Redmon et al. 2016), as the paper describes it: detection as one regression over a grid.

The image is warped to ``input_size`` square; an ``S x S`` grid; per cell ``B`` boxes ``(x, y,
sqrt(w), sqrt(h), confidence)`` (x, y relative to the cell, w, h to the image) and ``C`` class
probabilities; the sum-squared loss of the paper's equation 3 (``lambda_coord``,
``lambda_noobj``), the responsible predictor being the one whose box overlaps the object more and
its confidence target that IoU; class-specific confidence at test time, then NMS. A cell holds one
object: when several objects' centres fall in one cell, the largest is its target and the others
are lost (what crowded small objects suffer from).

Shape letters: B images, C classes, S grid side, P predictors a cell.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlab import boxes as box_ops
from detlab.models.backbones import BackboneConfig, backbone_body
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    BoxesView,
    DetectorModule,
    ExportPlan,
    HeatmapView,
    Inside,
    MemoryCost,
    Method,
    NotExportable,
    Trace,
    View,
)
from detlab.models.transform import IMAGENET_MEAN, IMAGENET_STD, warp_batch


@dataclasses.dataclass
class YOLOv1Config(BackboneConfig):
    """YOLO v1 as the paper has it: ``input_size`` 448, ``grid`` 7, ``boxes_per_cell`` 2, the
    loss weights ``lambda_coord`` 5 and ``lambda_noobj`` 0.5. The network: a detlab backbone
    (its C5, stride 32), a 1x1 convolution to ``grid_channels``, the grid pooled to ``grid x
    grid``, then the paper's two fully-connected layers (``hidden`` units, leaky ReLU, dropout
    0.5) to the ``S x S x (5B + C)`` output. Test: class-specific confidence above
    ``score_threshold``, NMS at ``nms_threshold`` a class, the best ``detections_per_image``."""

    input_size: int = 448
    grid: int = 7
    boxes_per_cell: int = 2
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    grid_channels: int = 64
    hidden: int = 512
    dropout: float = 0.5
    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    detections_per_image: int = 100


class YOLOv1(DetectorModule):
    """Backbone -> 1x1 conv -> S x S pool -> FC -> FC: ``[B, S, S, 5P + C]``; the detector contract."""

    def __init__(self, body: nn.Module, num_classes: int, config: YOLOv1Config):
        super().__init__()
        self.config, self.num_classes, self.body = config, num_classes, body
        self.outputs = 5 * config.boxes_per_cell + num_classes
        self.reduce = nn.Sequential(
            nn.Conv2d(body.channels[-1], config.grid_channels, 1, bias=False),
            nn.BatchNorm2d(config.grid_channels),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.grid_channels * config.grid**2, config.hidden),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.grid**2 * self.outputs),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def grid_output(self, images: list[Tensor], trace: Trace = NO_TRACE) -> tuple[Tensor, Tensor]:
        """-> ``(Tensor[B, S, S, 5P + C], sizes Tensor[B, 4] (W, H, W, H) of the images as given)``."""
        windows, sizes = warp_batch(images, self.config.input_size)
        windows = (windows - self.mean) / self.std
        if self.config.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last)
        trace("warp")
        return self.network(windows, trace), sizes

    def network(self, windows: Tensor, trace: Trace = NO_TRACE) -> Tensor:
        """Normalised windows ``Tensor[B, 3, S_in, S_in]`` -> the grid ``Tensor[B, S, S, 5P + C]``."""
        grid = self.config.grid
        features = self.body(windows)[-1]
        trace("body")
        output = self.fc(self.pool(self.reduce(features))).view(-1, grid, grid, self.outputs).float()
        trace("fc", grid=output)
        return output

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        output, sizes = self.grid_output(images, trace)
        if self.training:
            return yolov1_loss(
                output,
                encode_yolov1_targets(targets, sizes, self.config.grid, self.num_classes),
                self.config.boxes_per_cell,
                self.config.lambda_coord,
                self.config.lambda_noobj,
            )
        detections = [self.postprocess(prediction, size) for prediction, size in zip(output, sizes)]
        trace("postprocess")
        return detections

    def input_side(self) -> int:
        return self.config.input_size

    def merge_settings(self) -> tuple[float, int]:
        return self.config.nms_threshold, self.config.detections_per_image

    def memory_cost(self) -> MemoryCost:
        """Measured for the default 448-pixel input (``benchmarks/bench_serve_memory.py``), with a
        margin; the network's part grows with the input's area."""
        area = (self.config.input_size / 448) ** 2
        return MemoryCost(bytes_per_input_pixel=80, fixed_bytes=48 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        """``images [N, 3, S_in, S_in]`` (warped, normalised) -> ``grid [N, S, S, 5B + C]``; the
        runtime decodes the boxes and runs NMS. The batch size ``N`` is free."""
        config = self.config
        with torch.no_grad():
            side = self.body(torch.zeros(1, 3, config.input_size, config.input_size))[-1].shape[-1]
        if side % config.grid:  # ONNX has no adaptive pooling between sizes that do not divide
            raise NotExportable(
                f"yolov1 with input_size {config.input_size} cannot be exported to ONNX: its {side}x{side} feature "
                f"map does not divide into the {config.grid}x{config.grid} grid; input sizes that are multiples "
                f"of {config.input_size // side * config.grid} export (the default 448 does)"
            )
        size = config.input_size
        return ExportPlan(
            GridGraph(self),
            ("images",),
            ("grid",),
            (torch.rand(2, 3, size, size) - 0.5,),
            layout="grid",
            preprocess={
                "resize": "warp",
                "size": size,
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
            },
            postprocess={
                "score_threshold": config.score_threshold,
                "nms_threshold": config.nms_threshold,
                "detections_per_image": config.detections_per_image,
                "boxes_per_cell": config.boxes_per_cell,
            },
            dynamic_axes={"images": {0: "batch"}, "grid": {0: "batch"}},
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Warp -> backbone -> FC layers to the S x S grid -> boxes, NMS; the view: the grid, each
        cell's confidence (its most confident predictor) and most likely class."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        side, predictors, input_size = self.config.grid, self.config.boxes_per_cell, self.config.input_size
        grid = trace["fc"]["grid"][0]
        confidence = grid[..., 4 : 5 * predictors : 5].clamp(0, 1).amax(dim=-1)  # [S, S]
        probability, best = grid[..., 5 * predictors :].clamp(0, 1).max(dim=-1)
        labels = [
            [f"{class_name(c + 1)} {p:.2f}" for c, p in zip(row_classes, row_probabilities)]
            for row_classes, row_probabilities in zip(best.tolist(), probability.tolist())
        ]
        height, width = image.shape[-2:]
        view = HeatmapView(
            f"{side} x {side} grid: cell confidence (shading), most likely class and its probability",
            confidence,
            (0.0, 0.0, float(width), float(height)),
            labels,
            grid=True,
        )
        titles = {
            "warp": f"warp to {input_size} x {input_size}, normalise",
            "body": "backbone",
            "fc": f"1x1 conv, pool to {side} x {side}, two FC layers",
            "postprocess": "boxes from the grid, class-specific confidence, NMS",
        }
        return output, Inside(trace.stages(lambda name, values: titles[name]), [view])

    def assignment(self, image: Tensor, target: dict, class_name) -> list[View]:
        """The S x S grid over the image, each object's responsible cell labelled with its class;
        the objects whose cell holds a larger object's centre are lost to training (red)."""
        height, width = image.shape[-2:]
        side = self.config.grid
        size = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = target["boxes"].float().cpu().reshape(-1, 4)
        cells, learnt = responsible_cells(boxes / size, side)
        values, labels = torch.zeros(side, side), [["" for _ in range(side)] for _ in range(side)]
        for (column, row), label, kept in zip(cells.tolist(), target["labels"].tolist(), learnt.tolist()):
            values[row, column] = max(float(values[row, column]), 1.0 if kept else 0.5)
            labels[row][column] = " + ".join(filter(None, [labels[row][column], class_name(int(label))]))
        names = [class_name(int(label)) for label in target["labels"].tolist()]
        lost = ~learnt
        return [
            HeatmapView(
                f"{side} x {side} grid: the cell responsible for each object (its centre's)",
                values,
                (0.0, 0.0, float(width), float(height)),
                labels,
                grid=True,
            ),
            BoxesView(
                f"{int(learnt.sum())} objects learnt", boxes[learnt], [n for n, k in zip(names, learnt) if k]
            ),
            BoxesView(
                f"{int(lost.sum())} lost: their centre's cell holds a larger object",
                boxes[lost],
                [n for n, k in zip(names, lost) if k],
            ),
        ]

    def postprocess(self, prediction: Tensor, size: Tensor) -> dict[str, Tensor]:
        """One image's ``[S, S, 5P + C]`` -> detections in its pixels (class-specific confidence =
        class probability x box confidence, both clipped to [0, 1]; NMS a class)."""
        grid, predictors = self.config.grid, self.config.boxes_per_cell
        boxes = cell_boxes(
            prediction[..., : 5 * predictors].view(grid, grid, predictors, 5), grid
        )  # [S, S, P, 4]
        confidence = prediction[..., 4 : 5 * predictors : 5].clamp(0, 1)  # [S, S, P]
        probabilities = prediction[..., 5 * predictors :].clamp(0, 1)  # [S, S, C]
        scores = (probabilities[:, :, None, :] * confidence[..., None]).reshape(
            -1, self.num_classes
        )  # [S*S*P, C]
        boxes = (boxes.reshape(-1, 4) * size).clamp(min=0)
        boxes = torch.minimum(boxes, size)
        candidates = torch.where(scores.flatten() > self.config.score_threshold)[0]
        index, label = candidates // self.num_classes, candidates % self.num_classes
        found_boxes, found_scores = boxes[index], scores.flatten()[candidates]
        kept = box_ops.batched_nms(found_boxes, found_scores, label, self.config.nms_threshold)[
            : self.config.detections_per_image
        ]
        return {"boxes": found_boxes[kept], "scores": found_scores[kept], "labels": label[kept] + 1}


def cell_boxes(values: Tensor, grid: int) -> Tensor:
    """``[..., S, S, P, 5]`` predictions (x, y in the cell, sqrt w, sqrt h relative to the image)
    -> xyxy boxes normalised to the image, ``[..., S, S, P, 4]``."""
    rows = torch.arange(grid, device=values.device, dtype=values.dtype).view(grid, 1, 1)
    columns = torch.arange(grid, device=values.device, dtype=values.dtype).view(1, grid, 1)
    centre_x = (columns + values[..., 0]) / grid
    centre_y = (rows + values[..., 1]) / grid
    width, height = values[..., 2].clamp(min=0) ** 2, values[..., 3].clamp(min=0) ** 2
    return torch.stack(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2], -1
    )


def responsible_cells(boxes: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """The cell responsible for each object (section 2: the one its centre falls in) and whether
    the object is the one that cell learns: of several objects whose centres share a cell, only the
    largest is its target; the others are lost. ``boxes`` ``Tensor[N, 4]`` xyxy normalised to the
    image -> ``(cells int64 Tensor[N, 2] as (column, row), learnt bool Tensor[N])``."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    cells = (centres * grid).floor().clamp(0, grid - 1).long()
    owner: dict[tuple[int, int], int] = {}
    for box in (extent[:, 0] * extent[:, 1]).argsort().tolist():  # the largest comes last and stays
        owner[tuple(cells[box].tolist())] = box
    learnt = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    learnt[list(owner.values())] = True
    return cells, learnt


def encode_yolov1_targets(targets: list[dict], sizes: Tensor, grid: int, num_classes: int) -> Tensor:
    """Targets -> ``[B, S, S, 5 + C]``: per cell ``(object?, x, y, sqrt w, sqrt h)`` and the one-hot
    class of the object it is responsible for (:func:`responsible_cells`)."""
    encoded = sizes.new_zeros(len(targets), grid, grid, 5 + num_classes)
    for index, (target, size) in enumerate(zip(targets, sizes)):
        boxes = target["boxes"].float().to(sizes.device).reshape(-1, 4) / size  # normalised xyxy
        if len(boxes) == 0:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        cells, learnt = responsible_cells(boxes, grid)
        for box in torch.where(learnt)[0].tolist():
            column, row = cells[box].tolist()
            offset = centres[box] * grid - cells[box]
            encoded[index, row, column, :5] = torch.cat([offset.new_ones(1), offset, extent[box].sqrt()])
            encoded[index, row, column, 5 + int(target["labels"][box]) - 1] = 1.0
    return encoded


def yolov1_loss(
    output: Tensor, encoded: Tensor, predictors: int, lambda_coord: float, lambda_noobj: float
) -> dict[str, Tensor]:
    """The sum-squared error of the paper's equation 3, summed over the grid and averaged over the
    images, as four named terms: ``loss_box`` (x, y, sqrt w, sqrt h of responsible predictors,
    times ``lambda_coord``), ``loss_object`` (their confidence against the IoU of their box with
    the object), ``loss_noobject`` (every other predictor's confidence against 0, times
    ``lambda_noobj``) and ``loss_classifier`` (class probabilities of the cells holding an object)."""
    batch, grid = output.shape[:2]
    values = output[..., : 5 * predictors].view(batch, grid, grid, predictors, 5)
    has_object = encoded[..., 0] > 0  # [B, S, S]
    target_box = encoded[..., 1:5]  # x, y, sqrt w, sqrt h
    with torch.no_grad():
        predicted = cell_boxes(values, grid)  # [B, S, S, P, 4]
        truth = cell_boxes(
            torch.cat([target_box, target_box.new_zeros(batch, grid, grid, 1)], -1)[..., None, :], grid
        )
        iou = box_ops.iou(predicted[..., None, :], truth.expand_as(predicted)[..., None, :])[
            ..., 0, 0
        ]  # [B, S, S, P]
    coordinates = values[..., :4]
    box_error = ((coordinates - target_box[..., None, :]) ** 2).sum(-1)  # [B, S, S, P]
    with torch.no_grad():
        # The predictor overlapping the object most; where none overlaps it (early on), the one
        # whose coordinates are closest, so every predictor gets to specialise.
        choice = torch.where(iou.amax(-1) > 0, iou.argmax(-1), box_error.argmin(-1))
        responsible = F.one_hot(choice, predictors).bool() & has_object[..., None]  # [B, S, S, P]
    confidence = values[..., 4]
    loss_box = lambda_coord * (box_error * responsible).sum()
    loss_object = (((confidence - iou) ** 2) * responsible).sum()
    loss_noobject = lambda_noobj * ((confidence**2) * ~responsible).sum()
    class_error = ((output[..., 5 * predictors :] - encoded[..., 5:]) ** 2).sum(-1)
    loss_classifier = (class_error * has_object).sum()
    return {
        name: value / batch
        for name, value in (
            ("loss_box", loss_box),
            ("loss_object", loss_object),
            ("loss_noobject", loss_noobject),
            ("loss_classifier", loss_classifier),
        )
    }


class GridGraph(nn.Module):
    """What ONNX export traces of YOLO v1 (:meth:`YOLOv1.export_plan`): the network to its grid."""

    def __init__(self, model: YOLOv1):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.network(images)


def build_yolov1(config: YOLOv1Config, num_classes: int) -> YOLOv1:
    """YOLO v1 as ``config`` describes it for ``num_classes`` classes."""
    return YOLOv1(backbone_body(config), num_classes, config)


METHOD = Method(
    name="yolov1",
    config=YOLOv1Config,
    build=build_yolov1,
    label="YOLO v1",
    run_defaults={
        "train": {
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 5e-4,
            "batch_size": 8,
            "warmup_steps": 100,
        },
        "data": {"photometric": True},
    },
)
