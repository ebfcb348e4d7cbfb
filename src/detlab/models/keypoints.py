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

Metrics: PCK@t (a joint is correct when within ``t x`` the pose size of the truth; pose size = the
longer side of the box around the true joints) and the mean error in pixels, per stage.

Shape letters: B images, K joints, S window side.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detlab import config as config_module
from detlab.config import TrainConfig
from detlab.models.backbones import build_classifier_net


@dataclasses.dataclass
class KeypointModelConfig:
    """DeepPose options. ``stages``: refinement stages after the first; ``crop_factor``: crop side
    over pose size; ``refine_fraction``: share of the training budget given to the refinements."""

    backbone: str = "small"
    window_size: int = 96
    stages: int = 1
    crop_factor: float = 0.6
    hidden_dim: int = 256
    dropout: float = 0.2
    synthetic_images: int = 3000
    refine_fraction: float = 0.5


@dataclasses.dataclass
class KeypointConfig:
    model: KeypointModelConfig = dataclasses.field(default_factory=KeypointModelConfig)
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            out_dir="runs/keypoints",
            epochs=10,
            batch_size=32,
            optimizer="adamw",
            lr=1e-3,
            warmup_steps=20,
            log_every=20,
        )
    )


class PoseRegressor(nn.Module):
    """``Tensor[B, 3, S, S] -> Tensor[B, K, 2]``: joints normalised to the input (x / S, y / S)."""

    def __init__(
        self,
        num_joints: int,
        window_size: int,
        backbone: str = "small",
        hidden_dim: int = 256,
        dropout: float = 0.2,
    ):
        super().__init__()
        net = build_classifier_net(backbone, window_size, hidden_dim=hidden_dim, dropout=dropout)
        self.num_joints = num_joints
        self.window_size = window_size
        self.features, self.hidden = net.features, net.hidden
        self.joint_head = nn.Linear(net.hidden_dim, 2 * num_joints)

    def forward(self, images: Tensor) -> Tensor:
        return self.joint_head(self.hidden(self.features(images))).view(len(images), self.num_joints, 2)


def pose_size(keypoints: Tensor) -> Tensor:
    """``Tensor[B, K, 2] -> Tensor[B]``: longer side of the box around each pose (at least 1)."""
    return (keypoints.amax(dim=1) - keypoints.amin(dim=1)).amax(dim=1).clamp(min=1.0)


def crop_boxes(centres: Tensor, sides: Tensor) -> Tensor:
    """Square crops: centres ``Tensor[N, 2]`` and sides ``Tensor[N]`` -> xyxy ``Tensor[N, 4]``."""
    half = sides[:, None] / 2
    return torch.cat([centres - half, centres + half], dim=1)


def crop_around(images: Tensor, image_index: Tensor, boxes: Tensor, window_size: int) -> Tensor:
    """Resample crops ``boxes`` (xyxy pixels, may leave the image: zeros there) of
    ``images[image_index]`` to ``Tensor[N, 3, S, S]`` (bilinear, ``roi_align``)."""
    rois = torch.cat([image_index[:, None].float(), boxes], dim=1)
    return roi_align(images, rois, output_size=window_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


class DeepPose(nn.Module):
    """Stage 1 on the whole image plus ``len(refiners)`` refinement stages.

    ``forward(images: Tensor[B, 3, H, W]) -> list of Tensor[B, K, 2]``: the estimate in pixels after
    each stage (element 0: stage 1). Images are resized to the window for stage 1; crops are taken
    from the full-resolution images.
    """

    def __init__(self, initial: PoseRegressor, refiners: list[PoseRegressor], crop_factor: float):
        super().__init__()
        self.initial = initial
        self.refiners = nn.ModuleList(refiners)
        self.crop_factor = crop_factor

    def initial_estimate(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        window = self.initial.window_size
        resized = F.interpolate(images, size=(window, window), mode="bilinear", align_corners=False)
        return self.initial(resized) * torch.tensor([width, height], dtype=images.dtype)

    def refine(self, refiner: PoseRegressor, images: Tensor, estimate: Tensor) -> Tensor:
        """One cascade stage: a crop around every joint of ``estimate`` -> new ``Tensor[B, K, 2]``."""
        batch, num_joints, _ = estimate.shape
        sides = (self.crop_factor * pose_size(estimate)).repeat_interleave(num_joints)
        boxes = crop_boxes(estimate.reshape(-1, 2), sides)
        image_index = torch.arange(batch).repeat_interleave(num_joints)
        crops = crop_around(images, image_index, boxes, refiner.window_size)
        in_crop = refiner(crops)[torch.arange(batch * num_joints), torch.arange(num_joints).repeat(batch)]
        return (boxes[:, :2] + in_crop * sides[:, None]).view(batch, num_joints, 2)

    def forward(self, images: Tensor) -> list[Tensor]:
        estimates = [self.initial_estimate(images)]
        for refiner in self.refiners:
            estimates.append(self.refine(refiner, images, estimates[-1]))
        return estimates


def keypoint_metrics(
    predicted: Tensor, truth: Tensor, thresholds: tuple[float, ...] = (0.05, 0.1, 0.2)
) -> dict:
    """PCK at each threshold (fraction of joints within ``t x`` pose size of the truth) and the mean
    joint error in pixels. ``predicted``, ``truth``: ``Tensor[B, K, 2]`` pixels."""
    distances = (predicted - truth).norm(dim=2)  # [B, K]
    sizes = pose_size(truth)[:, None]
    metrics = {f"pck@{t}": float((distances <= t * sizes).float().mean()) for t in thresholds}
    metrics["mean_error_px"] = float(distances.mean())
    metrics["mean_error_relative"] = float((distances / sizes).mean())
    return metrics


def train_keypoints(
    config: KeypointConfig,
    log: Callable[[str], None] = print,
    data: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> dict:
    """Train stage 1 then each refinement stage; evaluate on held-out figures after every stage.

    ``data``: ``(train_images uint8 [N,3,S,S], train_keypoints [N,K,2], test_images, test_keypoints)``
    (default: the synthetic stick figures, 85% / 15%). Writes ``config.yaml``, ``model.pt`` and
    ``results.json`` under ``train.out_dir``; returns the results.
    """
    from detlab.data.keypoint_synthetic import make_keypoint_set
    from detlab.models.localizer_training import optimise, save_model, steps_for

    model_config, train = config.model, config.train
    torch.manual_seed(train.seed)
    out_dir = Path(train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_module.save(config, out_dir / "config.yaml")
    if data is None:
        images, keypoints = make_keypoint_set(
            model_config.synthetic_images, model_config.window_size, train.seed
        )
        split = int(0.85 * len(images))
        data = (images[:split], keypoints[:split], images[split:], keypoints[split:])
    train_images, train_keypoints_px, test_images, test_keypoints_px = data
    num_joints = train_keypoints_px.shape[1]
    size = train_images.shape[-1]
    window = model_config.window_size
    total_steps = steps_for(train, len(train_images))
    num_stages = 1 + model_config.stages
    stage_fractions = [1 - model_config.refine_fraction] + [
        model_config.refine_fraction / max(1, model_config.stages)
    ] * model_config.stages

    def build() -> PoseRegressor:
        return PoseRegressor(
            num_joints, window, model_config.backbone, model_config.hidden_dim, model_config.dropout
        )

    model = DeepPose(build(), [], model_config.crop_factor)
    history = {}

    def batch(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        indices = torch.randint(len(train_images), (train.batch_size,), generator=generator)
        return indices, train_images[indices].float() / 255, train_keypoints_px[indices]

    def initial_loss(generator: torch.Generator) -> dict[str, Tensor]:
        _, images, truth = batch(generator)
        predicted = model.initial_estimate(images) / size
        return {"loss_joints": ((predicted - truth / size) ** 2).sum(dim=2).mean()}

    model.train()
    history["stage1"] = optimise(
        model.initial.parameters(),
        initial_loss,
        max(1, round(total_steps * stage_fractions[0])),
        train.time_budget_s * stage_fractions[0],
        train.optimizer,
        train.lr,
        train,
        log,
        "deeppose/1",
    )
    results: dict = {"stages": []}
    for stage in range(1, num_stages):
        # Error statistics of the cascade so far on the training set (section 3.2).
        model.eval()
        with torch.no_grad():
            estimates = torch.cat(
                [model(train_images[i : i + 128].float() / 255)[-1] for i in range(0, len(train_images), 128)]
            )
        errors = estimates - train_keypoints_px  # [N, K, 2]
        error_mean, error_std = errors.mean(dim=0), errors.std(dim=0)
        refiner = build()
        refiner.train()

        def refine_loss(
            generator: torch.Generator, refiner=refiner, error_mean=error_mean, error_std=error_std
        ):
            _, images, truth = batch(generator)
            joint = torch.randint(num_joints, (len(images),), generator=generator)
            noise = torch.randn(len(images), 2, generator=generator)
            true_joint = truth[torch.arange(len(images)), joint]
            centres = true_joint + error_mean[joint] + noise * error_std[joint]
            sides = model.crop_factor * pose_size(truth)
            boxes = crop_boxes(centres, sides)
            crops = crop_around(images, torch.arange(len(images)), boxes, window)
            predicted = refiner(crops)[torch.arange(len(images)), joint]
            target = (true_joint - boxes[:, :2]) / sides[:, None]
            return {"loss_refine": ((predicted - target) ** 2).sum(dim=1).mean()}

        history[f"stage{stage + 1}"] = optimise(
            refiner.parameters(),
            refine_loss,
            max(1, round(total_steps * stage_fractions[stage])),
            train.time_budget_s * stage_fractions[stage],
            train.optimizer,
            train.lr,
            train,
            log,
            f"deeppose/{stage + 1}",
        )
        model.refiners.append(refiner)
    model.eval()
    with torch.no_grad():
        test_estimates = [
            torch.cat(parts)
            for parts in zip(
                *[model(test_images[i : i + 128].float() / 255) for i in range(0, len(test_images), 128)]
            )
        ]
    for stage, estimate in enumerate(test_estimates):
        results["stages"].append({"stage": stage + 1, **keypoint_metrics(estimate, test_keypoints_px)})
        log(f"deeppose test after stage {stage + 1}: {json.dumps(results['stages'][-1])}")
    results["history"] = history
    results["training_seconds"] = sum(step["seconds"] for step in history.values())
    results["num_train"], results["num_test"] = len(train_images), len(test_images)
    save_model(
        model, config, list_joint_names(num_joints), out_dir / "model.pt", "keypoints", results["stages"][-1]
    )
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def list_joint_names(num_joints: int) -> list[str]:
    from detlab.data.keypoint_synthetic import JOINTS

    return list(JOINTS) if num_joints == len(JOINTS) else [f"joint{index}" for index in range(num_joints)]
