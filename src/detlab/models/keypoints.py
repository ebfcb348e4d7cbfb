"""DeepPose (Toshev & Szegedy 2014): keypoints by regression, refined by a cascade.

Stage 1 (section 3.1): a CNN regresses the K joints ``(x, y)`` of the whole image from its last
fully-connected layer, in coordinates normalised to the image (``[0, 1]``), trained with the L2
loss. Refinement stages (section 3.2): for each joint, a crop around its current estimate (side
``crop_factor x`` the pose's size, as the paper's ``sigma * diam(y)``) is resized to the window and
a stage network regresses the joint inside the crop, at a finer resolution than stage 1 saw. One
network per stage serves every joint: it outputs all K joints of its crop and the one the crop was
centred on is used. Stage s is trained on crops around *simulated* estimates, the true joint plus
a displacement drawn from the normal distribution of stage s-1's training errors for that joint
(section 3.2), which gives unlimited varied examples.

It obeys the detector contract (``detlab.models``) with keypoints: training on targets with
``"keypoints": Tensor[N, K, 2]`` (the first object of an image; NaN marks a joint that is not
labelled) returns the loss of the stage being trained; eval returns per image ``{"keypoints":
Tensor[1, K, 2], "keypoints_per_stage": Tensor[S, 1, K, 2], "scores", "boxes", "labels"}`` (the box
around the estimated joints, so detection tools can draw it). Its recipe ``cascade`` trains stage 1,
then for each refinement measures the cascade's training errors (a non-gradient step whose result,
the error statistics, is stored in the model) and trains that stage's network.

Metrics: PCK@t and the mean error (:class:`detlab.eval.keypoints.KeypointEvaluator`).

Shape letters: B images, K joints, S stages, W window side, N crops.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from detlab.eval.keypoints import KeypointEvaluator
from detlab.models.backbones import build_classifier_net
from detlab.models.contract import (
    MIB,
    NO_TRACE,
    DetectorModule,
    ExportPlan,
    Inside,
    MemoryCost,
    Method,
    NotExportable,
    PointsView,
    Stage,
    Step,
    Trace,
    WindowView,
    set_trainable,
)
from detlab.models.transform import warp_batch


@dataclasses.dataclass
class KeypointConfig:
    """DeepPose (``model`` section of ``detlab train keypoints``). ``num_joints``: keypoints an
    object in the data (7 for the stick figures, 17 for COCO people); ``stages``: refinement stages
    after the first; ``crop_factor``: crop side over pose size; ``refine_fraction``: share of the
    training budget given to the refinements."""

    backbone: str = "small"
    pretrained_backbone: bool = False
    backbone_weights: str | None = None
    window_size: int = 96
    num_joints: int = 7
    stages: int = 1
    crop_factor: float = 0.6
    hidden_dim: int = 256
    dropout: float = 0.2
    refine_fraction: float = 0.5

    # The synthetic stick figures (3,000, generated in COCO keypoint format on first use); no
    # horizontal flips, which would swap left and right joints; trained on train + val, evaluated
    # on test at the end.


class PoseRegressor(nn.Module):
    """``Tensor[B, 3, W, W] -> Tensor[B, K, 2]``: joints normalised to the input (x / W, y / W)."""

    def __init__(self, num_joints: int, config: KeypointConfig):
        super().__init__()
        net = build_classifier_net(
            config.backbone,
            config.window_size,
            config.pretrained_backbone,
            config.backbone_weights,
            hidden_dim=config.hidden_dim,
            dropout=config.dropout,
        )
        self.num_joints = num_joints
        self.window_size = config.window_size
        self.features, self.hidden = net.features, net.hidden
        self.joint_head = nn.Linear(net.hidden_dim, 2 * num_joints)

    def forward(self, images: Tensor) -> Tensor:
        return self.joint_head(self.hidden(self.features(images))).view(len(images), self.num_joints, 2)


def pose_size(keypoints: Tensor) -> Tensor:
    """``Tensor[B, K, 2] -> Tensor[B]``: longer side of the box around each pose's labelled joints
    (NaN joints ignored), at least 1."""
    valid = torch.isfinite(keypoints).all(dim=-1, keepdim=True)
    high = keypoints.masked_fill(~valid, float("-inf")).amax(dim=1)
    low = keypoints.masked_fill(~valid, float("inf")).amin(dim=1)
    return torch.nan_to_num((high - low).amax(dim=1), nan=1.0, posinf=1.0, neginf=1.0).clamp(min=1.0)


def crop_boxes(centres: Tensor, sides: Tensor) -> Tensor:
    """Square crops: centres ``Tensor[N, 2]`` and sides ``Tensor[N]`` -> xyxy ``Tensor[N, 4]``."""
    half = sides[:, None] / 2
    return torch.cat([centres - half, centres + half], dim=1)


def crop_around(images: list[Tensor], image_index: Tensor, boxes: Tensor, window_size: int) -> Tensor:
    """Resample crops ``boxes`` (xyxy pixels, may leave the image: zeros there) of
    ``images[image_index]`` to ``Tensor[N, 3, W, W]`` (bilinear, ``roi_align``)."""
    if len({tuple(image.shape) for image in images}) == 1:
        rois = torch.cat([image_index[:, None].to(boxes), boxes], dim=1)
        return roi_align(
            torch.stack(images),
            rois,
            output_size=window_size,
            spatial_scale=1.0,
            sampling_ratio=2,
            aligned=True,
        )
    crops = boxes.new_zeros(len(boxes), 3, window_size, window_size)
    for index, image in enumerate(images):
        chosen = torch.where(image_index == index)[0]
        if len(chosen):
            rois = torch.cat([boxes.new_zeros(len(chosen), 1), boxes[chosen]], dim=1)
            crops[chosen] = roi_align(image[None], rois, window_size, 1.0, sampling_ratio=2, aligned=True)
    return crops


class DeepPose(DetectorModule):
    """Stage 1 on the whole image plus ``len(refiners)`` refinement stages; obeys the contract.

    ``estimates(images) -> list of Tensor[B, K, 2]``: the estimate in pixels after each stage
    (element 0: stage 1). Images are warped to the window for stage 1; crops are taken from the
    full-resolution images. ``training_stage``: the stage a training forward trains (0 = stage 1).
    """

    recipes = ("cascade",)
    evaluation = "keypoints"  # scored by PCK and the mean joint error

    def __init__(
        self,
        initial: PoseRegressor,
        refiners: list[PoseRegressor],
        crop_factor: float,
        refine_fraction: float,
    ):
        super().__init__()
        self.initial = initial
        self.refiners = nn.ModuleList(refiners)
        self.crop_factor = crop_factor
        self.refine_fraction = refine_fraction
        num_joints = initial.num_joints
        # Section 3.2: each refinement is trained around estimates displaced like the cascade's
        # errors before it; measured by the recipe's non-gradient steps, saved with the weights.
        self.register_buffer("error_mean", torch.zeros(len(refiners), num_joints, 2))
        self.register_buffer("error_std", torch.ones(len(refiners), num_joints, 2))
        self.training_stage = 0

    def initial_estimate(self, images: list[Tensor], trace: Trace = NO_TRACE) -> Tensor:
        windows, sizes = warp_batch(images, self.initial.window_size)
        trace("warp", windows=windows)
        estimate = self.initial(windows) * sizes[:, None, :2]
        trace("stage1")
        return estimate

    def refine(self, refiner: PoseRegressor, images: list[Tensor], estimate: Tensor) -> Tensor:
        """One cascade stage: a crop around every joint of ``estimate`` -> new ``Tensor[B, K, 2]``."""
        batch, num_joints, _ = estimate.shape
        sides = (self.crop_factor * pose_size(estimate)).repeat_interleave(num_joints)
        boxes = crop_boxes(estimate.reshape(-1, 2), sides)
        image_index = torch.arange(batch, device=estimate.device).repeat_interleave(num_joints)
        crops = crop_around(images, image_index, boxes, refiner.window_size)
        rows = torch.arange(batch * num_joints, device=estimate.device)
        in_crop = refiner(crops)[rows, torch.arange(num_joints, device=estimate.device).repeat(batch)]
        return (boxes[:, :2] + in_crop * sides[:, None]).view(batch, num_joints, 2)

    def estimates(
        self, images: list[Tensor], num_stages: int | None = None, trace: Trace = NO_TRACE
    ) -> list[Tensor]:
        found = [self.initial_estimate(images, trace)]
        for refiner in list(self.refiners)[: None if num_stages is None else num_stages - 1]:
            found.append(self.refine(refiner, images, found[-1]))
            trace("refinement")
        return found

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE):
        if not self.training:
            return outputs_per_image(self.estimates(images, trace=trace))
        if targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        truth = first_pose(targets, self.initial.num_joints).to(images[0].device)
        if self.training_stage == 0:
            sizes = torch.tensor([[image.shape[-1], image.shape[-2]] for image in images]).to(truth)
            predicted = self.initial_estimate(images) / sizes[:, None]
            return {"loss_joints": masked_l2(predicted, truth / sizes[:, None])}
        return {"loss_refine": self.refinement_loss(images, truth)}

    def refinement_loss(self, images: list[Tensor], truth: Tensor) -> Tensor:
        """Stage ``training_stage``'s L2 loss on crops around simulated estimates: one random joint
        an image, displaced by a draw from the error distribution measured for it."""
        stage = self.training_stage
        count, num_joints = len(images), truth.shape[1]
        rows = torch.arange(count, device=truth.device)
        joint = torch.randint(num_joints, (count,)).to(truth.device)
        noise = torch.randn(count, 2).to(truth)
        true_joint = truth[rows, joint]
        centres = true_joint + self.error_mean[stage - 1, joint] + noise * self.error_std[stage - 1, joint]
        sides = self.crop_factor * pose_size(truth)
        boxes = crop_boxes(torch.nan_to_num(centres), sides)
        crops = crop_around(images, rows, boxes, self.refiners[stage - 1].window_size)
        predicted = self.refiners[stage - 1](crops)[rows, joint]
        return masked_l2(predicted[:, None], ((true_joint - boxes[:, :2]) / sides[:, None])[:, None])

    def recipe(self, name: str) -> list[Stage | Step]:
        num_refiners = len(self.refiners)
        share = self.refine_fraction / num_refiners if num_refiners else 0.0
        items: list[Stage | Step] = [
            Stage("stage1", lambda model: train_only(model, 0), budget=1 - share * num_refiners)
        ]
        for stage in range(1, num_refiners + 1):
            items.append(
                Step(
                    f"stage{stage + 1}_errors",
                    lambda model, data, stage=stage: measure_errors(model, data, stage),
                )
            )
            items.append(
                Stage(f"stage{stage + 1}", lambda model, stage=stage: train_only(model, stage), budget=share)
            )
        return items

    def make_evaluator(self, classes: list[str]) -> KeypointEvaluator:
        return KeypointEvaluator()  # PCK and the mean joint error

    def memory_cost(self) -> MemoryCost:
        """Measured for the default 96-pixel window (``benchmarks/bench_serve_memory.py``), with a
        margin: the warp's copies of the image; the windows' passes are small."""
        area = (self.initial.window_size / 96) ** 2
        return MemoryCost(bytes_per_input_pixel=56, fixed_bytes=64 * MIB * max(area, 1.0))

    def export_plan(self) -> ExportPlan:
        raise NotExportable(
            "DeepPose's cascade crops each stage's input around the previous stage's output; not "
            "exportable as one graph"
        )

    def look_inside(self, image: Tensor, class_name) -> tuple[dict, Inside]:
        """Stage 1 on the warped image -> each refinement on crops around the joints; the views:
        the warped window with stage 1's joints, and the joints after every stage."""
        trace = Trace()
        output = self([image], trace=trace)[0]
        size = self.initial.window_size
        height, width = image.shape[-2:]
        per_stage = output["keypoints_per_stage"][:, 0]  # [stages, J, 2]
        first_in_window = per_stage[0] * torch.tensor([size / width, size / height], device=per_stage.device)
        refinements = iter(range(1, len(self.refiners) + 1))
        titles = {
            "warp": lambda: f"warp the image to the {size} x {size} window",
            "stage1": lambda: "stage 1: joints regressed from the whole image",
            "refinement": lambda: (
                f"refinement {next(refinements)}: a crop around each joint, regressed again"
            ),
        }
        stages = trace.stages(lambda name, values: titles[name]())
        views = [
            WindowView(
                f"the network's input: the image warped to {size} x {size}, with stage 1's joints",
                trace["warp"]["windows"][0],
                points=first_in_window,
            )
        ]
        views += [
            PointsView("joints after stage 1" if index == 0 else f"joints after refinement {index}", joints)
            for index, joints in enumerate(per_stage)
        ]
        return output, Inside(stages, views)


def train_only(model: DeepPose, stage: int) -> None:
    """Only stage ``stage``'s network trains (0: the first, on whole images)."""
    model.training_stage = stage
    set_trainable(model, False)
    set_trainable(model.initial if stage == 0 else model.refiners[stage - 1], True)


@torch.no_grad()
def measure_errors(model: DeepPose, dataset, stage: int, batch_size: int = 64) -> dict:
    """The cascade's errors (estimate minus truth, per joint) over the training images before
    refinement stage ``stage``: their mean and standard deviation become that stage's
    ``error_mean``/``error_std`` (NaN joints left out)."""
    was_training = model.training
    model.eval()
    device = model.error_mean.device
    errors = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        images = [image.to(device) for image, _ in samples]
        truth = first_pose([target for _, target in samples], model.initial.num_joints).to(device)
        errors.append(model.estimates(images, num_stages=stage)[-1] - truth)
    model.train(was_training)
    errors = torch.cat(errors)  # [N, K, 2]
    model.error_mean[stage - 1] = torch.nanmean(errors, dim=0)
    spread = (errors - model.error_mean[stage - 1]).pow(2)
    counts = torch.isfinite(errors).sum(dim=0).clamp(min=2)
    model.error_std[stage - 1] = (torch.nansum(spread, dim=0) / (counts - 1)).sqrt()
    return {"mean_error_px": float(errors.norm(dim=2).nanmean())}


def first_pose(targets: list[dict], num_joints: int) -> Tensor:
    """The first object's keypoints of each target, ``Tensor[B, K, 2]`` (NaN where unlabelled or
    when an image has no object)."""
    poses = []
    for target in targets:
        keypoints = target.get("keypoints")
        if keypoints is None or len(keypoints) == 0:
            poses.append(torch.full((num_joints, 2), float("nan")))
            continue
        if keypoints.shape[1] != num_joints:
            raise ValueError(
                f"image {target.get('image_id')}: {keypoints.shape[1]} keypoints an object, the model has "
                f"{num_joints} (set model.num_joints)"
            )
        poses.append(keypoints[0].float().cpu())
    return torch.stack(poses)


def masked_l2(predicted: Tensor, truth: Tensor) -> Tensor:
    """Squared distance summed over (x, y), mean over the labelled joints (NaN truth left out)."""
    valid = torch.isfinite(truth).all(dim=-1)
    squared = ((predicted - torch.nan_to_num(truth)) ** 2).sum(dim=-1)
    return (squared * valid).sum() / valid.sum().clamp(min=1)


def outputs_per_image(estimates: list[Tensor]) -> list[dict[str, Tensor]]:
    """Per image: the final joints, the joints after each stage, and the box around the joints."""
    stacked = torch.stack(estimates)  # [S, B, K, 2]
    results = []
    for index in range(stacked.shape[1]):
        final = stacked[-1, index]
        box = torch.cat([final.amin(dim=0), final.amax(dim=0)])[None]
        results.append(
            {
                "keypoints": final[None],
                "keypoints_per_stage": stacked[:, index, None],
                "scores": final.new_ones(1),
                "boxes": box,
                "labels": torch.ones(1, dtype=torch.int64, device=final.device),
            }
        )
    return results


def build_keypoints(config: KeypointConfig, num_classes: int) -> DeepPose:
    """The DeepPose cascade ``config`` describes (``num_classes`` is the data's object classes; the
    joints are what DeepPose regresses)."""
    refiners = [PoseRegressor(config.num_joints, config) for _ in range(config.stages)]
    return DeepPose(
        PoseRegressor(config.num_joints, config), refiners, config.crop_factor, config.refine_fraction
    )


METHOD = Method(
    name="keypoints",
    config=KeypointConfig,
    build=build_keypoints,
    label="DeepPose",
    # The stick-figure synthetic set (3,000 images in their own folder), no horizontal flips (a
    # flip would swap the left and right joints), decoded images kept in memory.
    run_defaults={
        "data": {
            "spec": "synthetic-pose",
            "root": "data/synthetic-pose",
            "synthetic_images": 3000,
            "train_split": "trainval",
            "val_split": "test",
            "horizontal_flip": False,
            "cache_images": True,
        },
        "train": {
            "epochs": 10,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 1e-3,
            "warmup_steps": 20,
            "log_every": 20,
            "eval_every": 0,
        },
    },
    compared=False,  # keypoints, scored by PCK, not beside the detectors
)
