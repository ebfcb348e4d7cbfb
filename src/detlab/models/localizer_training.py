"""Training recipes for the localizer (and the DeepPose keypoint regressor), CLI and Python API.

Two recipes (``--recipe``):

- ``4step``, the classification-then-regression recipe of OverFeat (Sermanet et al. 2014,
  section 4.2): 1. train the classifier (features, FC layers, class head) on class labels only;
  2. attach a new regression head; 3. train only that head with SGD and the L2 loss, everything
  else frozen (BatchNorm statistics too); 4. test with both heads.
- ``joint``: both heads and the features trained together, end to end, on the sum of the losses.

Python API: ``train_localizer(LocalizerConfig(...)) -> dict`` of metrics. Command line:
``detlab train localizer --recipe 4step --regression specific --attach conv --data synthetic-single``;
the ``detlab train`` command calls :func:`add_arguments` and :func:`run`.

Data: every image contributes one object (the largest box when it has several: raccoon has a few
images with two raccoons), resized with its image to the ``window_size`` square; the box target is
normalised by the image size. Images are decoded once and kept in memory as uint8.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from detlab import config as config_module
from detlab.config import DataConfig, TrainConfig
from detlab.models.backbones import POOL_CHOICES
from detlab.models.localizer import (
    ATTACH_CHOICES,
    BOX_LOSS_CHOICES,
    REGRESSION_CHOICES,
    Localizer,
    build_localizer,
    guesses_from_outputs,
    localization_metrics,
    localizer_loss,
    resize_to_window,
)

RECIPE_CHOICES = ("4step", "joint")


@dataclasses.dataclass
class LocalizerModelConfig:
    """The localizer and its recipe. ``classifier_fraction``: share of the training budget spent
    on step 1 of the 4-step recipe (the rest trains the regression head, with ``head_lr``).

    The defaults are what trains in minutes on a 2-core CPU from scratch (measured in
    ``benchmarks/results/localization.md``): a 64-pixel window, the small net with four blocks
    (stride 8, a 4x4 grid of 256 channels), its class evidence max-pooled over the grid
    (``pool="max"``; ``none`` flattens the grid as OverFeat and AlexNet do, and learns the shape
    classes several times slower here), and the regression head on the conv map (``attach="conv"``:
    the max-pooled FC features no longer say where the object is), padded convolutions (objects
    touching the window border keep their evidence; OverFeat's detector sets ``padding: 0`` so its
    sliding windows are exact). ``box_weight`` 5 scales the L2 loss, whose gradient vanishes on
    coordinates in [0, 1], to the class loss.
    """

    backbone: str = "small"
    window_size: int = 64
    regression: str = "agnostic"  # agnostic | specific
    attach: str = "conv"  # conv | fc
    recipe: str = "joint"  # 4step | joint
    box_loss: str = "l2"  # l2 | smooth_l1
    box_weight: float = 5.0
    hidden_dim: int = 512
    dropout: float = 0.0
    pool: str = "max"  # none | max (small net only)
    blocks: int = 4  # conv blocks of the small net
    padding: int = 1  # small net: 1 pads its convolutions, 0 keeps them valid (exact sliding windows)
    pretrained: bool = False
    backbone_weights: str | None = None
    classifier_fraction: float = 0.6
    head_lr: float = 0.01
    synthetic_images: int = 6000  # size of the generated synthetic-single set


@dataclasses.dataclass
class LocalizerConfig:
    model: LocalizerModelConfig = dataclasses.field(default_factory=LocalizerModelConfig)
    data: DataConfig = dataclasses.field(
        # Its own folder: the 6000-image single-object set must not replace the 600-image one
        # other commands generate under data/synthetic-single. The shapes look the same under any
        # flip or quarter turn, so all eight are used as augmentation (turn them off for real data
        # with an up and a down: --set data.vertical_flip=false --set data.rotate90=false).
        # The localizer picks no checkpoint on a validation split, so it trains on train + val.
        default_factory=lambda: DataConfig(
            spec="synthetic-single", root="data/localizer-single", train_split="trainval",
            horizontal_flip=True, vertical_flip=True, rotate90=True,
        )
    )
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            out_dir="runs/localizer",
            epochs=20,
            batch_size=32,
            optimizer="adamw",
            lr=1e-3,
            warmup_steps=20,
            weight_decay=1e-4,
            log_every=20,
        )
    )


# ----------------------------------------------------------------------------------------------
# Data: one object per image, images resized to the window and kept in memory.


@dataclasses.dataclass
class WindowData:
    """``images``: uint8 ``Tensor[N, 3, S, S]``; ``labels``: int64 ``Tensor[N]`` (1..C);
    ``boxes``: ``Tensor[N, 4]`` normalised xyxy; ``classes``: C names."""

    images: Tensor
    labels: Tensor
    boxes: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)


def load_detection_dataset(data: DataConfig, split: str, synthetic_images: int = 1500, seed: int = 0):
    """The :class:`~detlab.data.schema.DetectionDataset` of ``data.spec`` at ``split``; synthetic
    sets (``synthetic_images`` images) are generated under ``data.root`` on first use."""
    from detlab.data import load_dataset

    return load_dataset(
        data.spec, split, root=data.root, on_bad=data.on_bad, num_synthetic=synthetic_images, seed=seed
    )


def load_window_data(config: LocalizerConfig) -> tuple[WindowData, WindowData]:
    """Training and test windows of ``config.data`` (train and test splits)."""
    model_config, data_config = config.model, config.data
    splits = []
    for split in (data_config.train_split, data_config.test_split):
        dataset = load_detection_dataset(data_config, split, model_config.synthetic_images, config.train.seed)
        splits.append(to_window_data(dataset, model_config.window_size))
    splits[1].classes = splits[0].classes
    return splits[0], splits[1]


def largest_object(boxes: Tensor) -> int:
    """Index of the largest box of ``Tensor[N, 4]`` (the one object a localizer is taught)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(areas.argmax())


def to_window_data(dataset, window_size: int) -> WindowData:
    """Decode each record, resize it to ``window_size`` and keep its largest object.

    Images without an object are skipped (with one warning that counts them).
    """
    from detlab.data.images import load_image

    images, labels, boxes = [], [], []
    skipped = 0
    for record in dataset.records:
        if len(record.boxes) == 0:
            skipped += 1
            continue
        index = largest_object(record.boxes)
        scale = torch.tensor([record.width, record.height, record.width, record.height], dtype=torch.float32)
        image = resize_to_window(load_image(record.image_path), window_size)
        images.append((image * 255).round().clamp(0, 255).to(torch.uint8))
        labels.append(int(record.labels[index]))
        boxes.append(record.boxes[index].float() / scale)
    if skipped:
        warnings.warn(f"{dataset.name}: {skipped} images without objects skipped", stacklevel=2)
    if not images:
        raise ValueError(f"{dataset.name}: no image with an object; a localizer needs one object per image")
    return WindowData(torch.stack(images), torch.tensor(labels), torch.stack(boxes), list(dataset.classes))


def sample_batch(
    data: WindowData,
    indices: Tensor,
    flip: bool,
    generator: torch.Generator,
    vertical_flip: bool = False,
    rotate90: bool = False,
) -> tuple[Tensor, ...]:
    """Float images in [0, 1] with random horizontal flips, vertical flips and transposes (a
    transpose after a flip is a quarter turn); each box follows its image."""
    images = data.images[indices].float() / 255
    boxes = data.boxes[indices].clone()

    def coin() -> Tensor:
        return torch.rand(len(indices), generator=generator) < 0.5

    def mirror(chosen: Tensor, order: list[int], coordinates: list[int]) -> None:
        # Normalised boxes: a mirror maps x to 1 - x (or y to 1 - y), and swaps the two corners.
        mirrored = boxes[chosen][:, order]
        mirrored[:, coordinates] = 1 - mirrored[:, coordinates]
        boxes[chosen] = mirrored

    if flip:
        chosen = coin()
        images[chosen] = images[chosen].flip(-1)
        mirror(chosen, [2, 1, 0, 3], [0, 2])
    if vertical_flip:
        chosen = coin()
        images[chosen] = images[chosen].flip(-2)
        mirror(chosen, [0, 3, 2, 1], [1, 3])
    if rotate90:
        chosen = coin()
        images[chosen] = images[chosen].transpose(-1, -2)
        boxes[chosen] = boxes[chosen][:, [1, 0, 3, 2]]
    return images, data.labels[indices], boxes


# ----------------------------------------------------------------------------------------------
# One plain optimisation loop, used by every step of every recipe.


def learning_rate_factor(progress: float, step: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "cosine":
        return warmup * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":
        return warmup * (0.1 ** sum(progress >= m for m in (0.67, 0.89)))
    return warmup


def optimise(
    parameters: Iterable[nn.Parameter],
    loss_fn: Callable[[torch.Generator], dict[str, Tensor]],
    num_steps: int,
    time_budget_s: float,
    optimizer: str,
    lr: float,
    train: TrainConfig,
    log: Callable[[str], None] = print,
    name: str = "train",
) -> dict[str, float]:
    """Run ``num_steps`` optimiser steps (or stop at ``time_budget_s`` seconds when > 0) on the
    summed losses of ``loss_fn(generator)``; the learning rate follows ``train.schedule`` over
    whichever of the two budgets runs out first. Returns first/last loss and steps/seconds done."""
    parameters = [p for p in parameters if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=train.weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(parameters, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    generator = torch.Generator().manual_seed(train.seed)
    start = time.perf_counter()
    first_loss = last_loss = float("nan")
    running: list[float] = []
    step = 0
    while step < num_steps:
        elapsed = time.perf_counter() - start
        progress = step / num_steps
        if time_budget_s > 0:
            if elapsed >= time_budget_s:
                break
            progress = max(progress, elapsed / time_budget_s)
        for group in opt.param_groups:
            group["lr"] = lr * learning_rate_factor(progress, step, train.warmup_steps, train.schedule)
        losses = loss_fn(generator)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        if train.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, train.clip_grad_norm)
        opt.step()
        value = float(total.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: loss became {value} at step {step}; lower the learning rate")
        first_loss = value if step == 0 else first_loss
        running.append(value)
        step += 1
        if train.log_every > 0 and (step % train.log_every == 0 or step == num_steps):
            parts = " ".join(f"{key}={float(loss.detach()):.4f}" for key, loss in losses.items())
            log(
                f"[{name}] step {step}/{num_steps} {parts} lr={opt.param_groups[0]['lr']:.2e} "
                f"({time.perf_counter() - start:.0f}s)"
            )
        last_loss = sum(running[-20:]) / len(running[-20:])
    return {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "first_loss": first_loss,
        "last_loss": last_loss,
    }


def steps_for(train: TrainConfig, num_samples: int) -> int:
    """``train.max_steps`` when set, else ``train.epochs`` passes over ``num_samples``."""
    if train.max_steps > 0:
        return train.max_steps
    return max(1, train.epochs * math.ceil(num_samples / train.batch_size))


# ----------------------------------------------------------------------------------------------
# Recipes.


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def _window_loss(model: Localizer, data: WindowData, config: LocalizerConfig, use_box: bool, use_class: bool):
    model_config, train = config.model, config.train

    def loss_fn(generator: torch.Generator) -> dict[str, Tensor]:
        indices = torch.randint(len(data), (train.batch_size,), generator=generator)
        images, labels, boxes = sample_batch(
            data, indices, config.data.horizontal_flip, generator, config.data.vertical_flip, config.data.rotate90
        )
        losses = localizer_loss(model(images), labels, boxes, model_config.box_loss, model_config.box_weight)
        if not use_box:
            del losses["loss_box"]
        if not use_class:
            del losses["loss_classifier"]
        return losses

    return loss_fn


def fit_localizer(
    model: Localizer, data: WindowData, config: LocalizerConfig, log: Callable[[str], None] = print
) -> dict[str, dict]:
    """Train ``model`` in place with ``config.model.recipe``; returns the log of each step."""
    model_config, train = config.model, config.train
    total_steps = steps_for(train, len(data))
    history: dict[str, dict] = {}
    if model_config.recipe == "joint":
        model.train()
        history["joint"] = optimise(
            model.parameters(),
            _window_loss(model, data, config, True, True),
            total_steps,
            train.time_budget_s,
            train.optimizer,
            train.lr,
            train,
            log,
            "joint",
        )
        return history
    if model_config.recipe != "4step":
        raise ValueError(f"recipe must be one of {RECIPE_CHOICES}, got {model_config.recipe!r}")
    fraction = model_config.classifier_fraction
    # Step 1: the classifier alone (the regression head exists but gets no gradient).
    model.train()
    set_trainable(model.box_head, False)
    history["step1_classifier"] = optimise(
        model.parameters(),
        _window_loss(model, data, config, use_box=False, use_class=True),
        max(1, round(total_steps * fraction)),
        train.time_budget_s * fraction,
        train.optimizer,
        train.lr,
        train,
        log,
        "4step/1 classifier",
    )
    # Step 2: a new regression head.
    model.box_head = model.new_box_head()
    # Step 3: only the regression head learns, with SGD on the L2 loss; the features are frozen,
    # BatchNorm included (eval mode keeps its running statistics fixed).
    set_trainable(model, False)
    set_trainable(model.box_head, True)
    model.eval()
    model.box_head.train()
    history["step3_regressor"] = optimise(
        model.box_head.parameters(),
        _window_loss(model, data, config, use_box=True, use_class=False),
        max(1, total_steps - round(total_steps * fraction)),
        train.time_budget_s * (1 - fraction),
        "sgd",
        model_config.head_lr,
        train,
        log,
        "4step/3 regressor",
    )
    set_trainable(model, True)
    # Step 4 is evaluation with both heads: evaluate_localizer.
    return history


@torch.no_grad()
def evaluate_localizer(model: Localizer, data: WindowData, batch_size: int = 64) -> dict[str, float]:
    """Classification accuracy, mean IoU, top-1 and top-5 localization accuracy on ``data``."""
    model.eval()
    found: dict[str, list[Tensor]] = {"labels": [], "scores": [], "boxes": []}
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size].float() / 255
        guesses = guesses_from_outputs(model(images), top_k=5)
        for key in found:
            found[key].append(guesses[key])
    merged = {key: torch.cat(values) for key, values in found.items()}
    metrics = localization_metrics(merged, data.labels, data.boxes)
    metrics["num_images"] = len(data)
    return metrics


def localizer_from_config(
    model_config: LocalizerModelConfig, num_classes: int, backbone_weights: bool
) -> Localizer:
    """The :class:`Localizer` ``model_config`` describes; ``backbone_weights``: load the pretrained or
    local backbone weights it names (not when a checkpoint will overwrite them anyway)."""
    return build_localizer(
        num_classes, model_config.backbone, model_config.window_size, model_config.regression, model_config.attach,
        model_config.hidden_dim, model_config.dropout, backbone_weights and model_config.pretrained,
        model_config.backbone_weights if backbone_weights else None,
        model_config.pool if model_config.backbone == "small" else "none", model_config.blocks,
        model_config.padding,
    )  # fmt: skip


def train_localizer(
    config: LocalizerConfig,
    log: Callable[[str], None] = print,
    data: tuple[WindowData, WindowData] | None = None,
) -> dict:
    """Build data and model from ``config``, train with its recipe, evaluate on the test split, and
    write ``config.yaml``, ``model.pt`` (checkpoint) and ``results.json`` under ``train.out_dir``.

    ``data``: ``(train, test)`` windows already loaded (a benchmark reuses them across runs).
    Returns ``{"test": metrics, "train": metrics on the training windows, "history": ...}``.
    """
    torch.manual_seed(config.train.seed)
    out_dir = Path(config.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_module.save(config, out_dir / "config.yaml")
    model_config = config.model
    if data is None:
        data = load_window_data(config)
    train_data, test_data = data
    log(
        f"localizer: {len(train_data)} training and {len(test_data)} test windows, classes {train_data.classes}"
    )
    model = localizer_from_config(model_config, len(train_data.classes), backbone_weights=True)
    history = fit_localizer(model, train_data, config, log)
    results = {
        "test": evaluate_localizer(model, test_data),
        "train": evaluate_localizer(model, train_data),
        "history": history,
        "training_seconds": sum(step["seconds"] for step in history.values()),
        "classes": train_data.classes,
    }
    save_model(model, config, train_data.classes, out_dir / "model.pt", "localizer", results["test"])
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    log(f"localizer test: {json.dumps(results['test'])}")
    return results


def save_model(
    model: nn.Module, config, classes: list[str], path: Path, model_name: str, metrics: dict
) -> None:
    """A detlab checkpoint (plain state dict + resolved config + class names)."""
    from detlab.engine.checkpoint import save_checkpoint

    save_checkpoint(
        {
            "format": "detlab-checkpoint",
            "version": 1,
            "model_name": model_name,
            "classes": list(classes),
            "config": config_module.to_dict(config),
            "model": model.state_dict(),
            "metrics": metrics,
        },
        path,
    )


def load_localizer(path: str | Path) -> tuple[Localizer, LocalizerConfig, list[str]]:
    """Rebuild a trained :class:`Localizer` from the checkpoint ``train_localizer`` wrote."""
    from detlab.engine.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    config = config_module.from_dict(LocalizerConfig, checkpoint["config"])
    classes = checkpoint["classes"]
    model = localizer_from_config(config.model, len(classes), backbone_weights=False)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config, classes


# ----------------------------------------------------------------------------------------------
# Command line: ``detlab train localizer|keypoints ...``.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The localizer/keypoint options of ``detlab train`` (each maps onto a config field)."""
    group = parser.add_argument_group("localizer and keypoints (detlab train localizer|keypoints)")
    group.add_argument(
        "--recipe",
        choices=RECIPE_CHOICES,
        help="4step (classifier, then frozen-feature regression head) or joint end-to-end training; "
        "for faster_rcnn: 4step is the paper's alternating RPN/detector training, joint the default",
    )
    group.add_argument(
        "--regression", choices=REGRESSION_CHOICES, help="class-agnostic (4) or class-specific (C x 4) boxes"
    )
    group.add_argument(
        "--attach", choices=ATTACH_CHOICES, help="regression head after the conv features or the FC layer"
    )
    group.add_argument("--loss", dest="box_loss", choices=BOX_LOSS_CHOICES, help="box regression loss")
    group.add_argument("--backbone", help="small (default), alexnet or vgg16")
    group.add_argument("--window-size", type=int, help="input window side in pixels (default 64)")
    group.add_argument("--pool", choices=POOL_CHOICES, help="small net: flatten the conv grid or max-pool it")
    group.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="torchvision ImageNet weights (needs internet)",
    )
    group.add_argument("--backbone-weights", metavar="FILE", help="local state dict for the backbone")
    group.add_argument("--synthetic-images", type=int, help="images to generate for the synthetic sets")
    group.add_argument("--stages", type=int, help="keypoints: refinement stages after the first (default 1)")


_MODEL_ARGUMENTS = (
    "recipe",
    "regression",
    "attach",
    "box_loss",
    "backbone",
    "window_size",
    "pool",
    "pretrained",
    "backbone_weights",
    "synthetic_images",
)
_SHARED_ARGUMENTS = {
    "data": ("data", "spec"),
    "data_root": ("data", "root"),
    "out_dir": ("train", "out_dir"),
    "epochs": ("train", "epochs"),
    "max_steps": ("train", "max_steps"),
    "time_budget": ("train", "time_budget_s"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
}


def config_from_args(
    config_class: type, args: argparse.Namespace, model_fields: Iterable[str], extra: dict | None = None
):
    """Defaults, then ``--config`` preset, then named flags (``extra``: further sections), then
    ``--set key=value`` overrides."""
    values: dict = dict(extra or {})
    for name in model_fields:
        value = getattr(args, name, None)
        if value is not None:
            values.setdefault("model", {})[name] = value
    sections = {field.name for field in dataclasses.fields(config_class)}
    for name, (section, field) in _SHARED_ARGUMENTS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if section not in sections:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} does not apply here: {config_class.__name__} has no {section!r} section"
            )
        values.setdefault(section, {})[field] = value
    return config_module.resolve(
        config_class, getattr(args, "config", None), getattr(args, "set", None), **values
    )


def run(args: argparse.Namespace) -> int:
    """``detlab train localizer|keypoints``: train, evaluate, print the test metrics."""
    model_name = getattr(args, "model", None) or "localizer"
    if model_name == "keypoints":
        from detlab.models.keypoints import KeypointConfig, train_keypoints

        config = config_from_args(KeypointConfig, args, ("stages", "window_size", "synthetic_images"))
        train_keypoints(config)
        return 0
    if model_name != "localizer":
        raise ValueError(f"localizer_training.run handles 'localizer' and 'keypoints', not {model_name!r}")
    train_localizer(config_from_args(LocalizerConfig, args, _MODEL_ARGUMENTS))
    return 0


def add_commands(subparsers) -> None:
    """``detlab overfeat``: train the detection localizer on windows, convert it, evaluate mAP."""
    parser = subparsers.add_parser(
        "overfeat",
        help="train and evaluate the OverFeat sliding-window detector",
        description="Train a localizer with a background class on windows cut from a multi-object data "
        "set, convert its FC layers to convolutions, and evaluate the multi-scale detector (VOC mAP@0.5).",
    )
    parser.add_argument("--data", help="synthetic (default) | voc:DIR | coco:FILE | yolo:DIR")
    parser.add_argument("--data-root", help="where the synthetic set is generated (default data/synthetic)")
    parser.add_argument("--out", dest="out_dir", metavar="RUN_DIR", help="run folder (default runs/overfeat)")
    parser.add_argument(
        "--checkpoint", help="evaluate this trained detection localizer instead of training one"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--time-budget", type=float, metavar="SECONDS")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--window-size", type=int, help="window side in pixels (default 128)")
    parser.add_argument("--scales", type=float, nargs="+", help="image scales (default 0.75 1 1.5 2 3)")
    parser.add_argument("--score-threshold", type=float, help="class probability a window needs to vote")
    parser.add_argument("--eval-images", type=int, help="test images to evaluate (default all)")
    parser.add_argument("--preset", dest="config", metavar="NAME", help="YAML preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(handler=run_overfeat)


def run_overfeat(args: argparse.Namespace) -> int:
    from detlab.models.overfeat import OverFeatConfig, train_overfeat

    detector_values = {
        name: getattr(args, name)
        for name in ("scales", "score_threshold", "eval_images")
        if getattr(args, name, None) is not None
    }
    extra = {"detector": detector_values} if detector_values else None
    config = config_from_args(OverFeatConfig, args, ("window_size",), extra)
    train_overfeat(config, checkpoint=args.checkpoint)
    return 0


def build_standalone_parser() -> argparse.ArgumentParser:
    """A parser with the flags ``detlab train`` shares (for ``python -m`` use and tests)."""
    parser = argparse.ArgumentParser(prog="detlab train")
    parser.add_argument("model", choices=("localizer", "keypoints"))
    parser.add_argument("--data", help="synthetic-single | voc:DIR | coco:FILE | yolo:DIR")
    parser.add_argument("--data-root", help="where generated synthetic data goes")
    parser.add_argument("--out-dir")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--time-budget", type=float, help="seconds of training")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--config", help="YAML preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    import sys

    sys.exit(run(build_standalone_parser().parse_args()))
