"""A training run from its config: data, model, evaluator, then :func:`detlab.engine.fit`.

:class:`RunConfig` composes the shared sections (:class:`~detlab.config.DataConfig`,
:class:`~detlab.config.TrainConfig`) with the model's own section, whose type is the annotation
of the ``config`` parameter of the model's build function in ``detlab.models.MODELS`` (e.g.
``build_faster_rcnn(config: FasterRCNNConfig, num_classes: int)``), so a new model needs no
registration here. ``detlab train`` and ``detlab.train(...)`` both end in :func:`train_run`.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from detlab import config as config_io
from detlab.config import DataConfig, TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import Context, barrier, init_distributed
from detlab.engine.train import FitResult, fit


@dataclasses.dataclass
class RunConfig:
    """Everything a training run needs; stored resolved in ``config.yaml`` and every checkpoint."""

    model_name: str = "faster_rcnn"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model: Any = None  # the model's config dataclass (FasterRCNNConfig, FastRCNNConfig, ...)


def model_builders() -> dict:
    from detlab.models import MODELS

    return MODELS


def model_config_class(model_name: str) -> type:
    """The config dataclass ``MODELS[model_name]`` takes as its ``config`` argument."""
    builders = model_builders()
    if model_name not in builders:
        raise ValueError(f"unknown model {model_name!r}; trainable models: {sorted(builders)}")
    hints = typing.get_type_hints(builders[model_name])
    config_class = hints.get("config")
    if config_class is None or not dataclasses.is_dataclass(config_class):
        raise ValueError(
            f"MODELS[{model_name!r}] must be annotated build(config: SomeConfigDataclass, num_classes: int)"
        )
    return config_class


def resolve_run_config(
    model_name: str,
    preset: str | Path | None = None,
    overrides: list[str] | None = None,
    **values,
) -> RunConfig:
    """Defaults, then the ``preset`` YAML (sections ``data``/``train``/``model``), then keyword
    ``values`` (nested dicts, e.g. ``train={"epochs": 3}``), then ``key=value`` ``overrides``."""
    config = RunConfig(model_name=model_name, model=model_config_class(model_name)())
    if preset:
        config = config_io.merge(config, config_io.read_yaml(config_io.preset_path(preset)))
    if values:
        config = config_io.merge(config, values)
    if overrides:
        config = config_io.merge(config, config_io.parse_overrides(overrides))
    if config.model_name != model_name:
        raise ValueError(f"model_name cannot be overridden ({model_name!r} -> {config.model_name!r})")
    return config


def run_config_from_dict(data: dict) -> RunConfig:
    """Inverse of ``config.to_dict(run_config)`` (what checkpoints store)."""
    model_name = data.get("model_name")
    if not model_name:
        raise ValueError("stored run config names no model (model_name)")
    return RunConfig(
        model_name=model_name,
        data=config_io.from_dict(DataConfig, data.get("data", {})),
        train=config_io.from_dict(TrainConfig, data.get("train", {})),
        model=config_io.from_dict(model_config_class(model_name), data.get("model", {})),
    )


def build_model(run_config: RunConfig, num_classes: int) -> torch.nn.Module:
    return model_builders()[run_config.model_name](run_config.model, num_classes)


def build_datasets(run_config: RunConfig, context: Context | None = None):
    """``(train_dataset, val_dataset or None)`` with training / evaluation transforms.

    The detectors resize inside the model (their ``min_size``), so the data keeps its size unless
    ``data.scale_jitter`` asks for multi-scale training. A COCO file is one split: no validation.
    Under torchrun rank 0 reads first (it may generate the synthetic set), the others after it.
    """
    from detlab.data import build_transforms, load_dataset, parse_spec

    data = run_config.data
    context = context or Context()

    def load(split: str):
        return load_dataset(data.spec, split, root=data.root, on_bad=data.on_bad, seed=run_config.train.seed)

    train_transforms = build_transforms(
        True,
        min_size=0,
        max_size=data.max_size,
        horizontal_flip=data.horizontal_flip,
        vertical_flip=data.vertical_flip,
        rotate90=data.rotate90,
        scale_jitter=tuple(data.scale_jitter),
        photometric=data.photometric,
    )
    datasets = None
    for turn in ("main", "others"):
        if (turn == "main") == context.is_main:
            train = load(data.train_split).with_transforms(train_transforms)
            validation = None
            if parse_spec(data.spec)[0] == "coco":
                warnings.warn("a COCO file is one split: no evaluation during training", stacklevel=2)
            elif data.val_split:
                validation = load(data.val_split).with_transforms(build_transforms(False, min_size=0))
            datasets = train, validation
        barrier(context)
    return datasets


def make_evaluator_factory(classes: list[str]):
    """A function returning a fresh COCO evaluator (its ``AP50`` picks ``best.pt``), or ``None``
    (with a warning) when ``detlab.eval`` has none."""
    try:
        from detlab.eval.coco import COCOEvaluator
    except ImportError:
        warnings.warn(
            "detlab.eval.COCOEvaluator is not available: training runs without evaluation", stacklevel=2
        )
        return None
    return lambda: COCOEvaluator(classes)


def train_run(
    run_config: RunConfig, resume: str | Path | None = None, context: Context | None = None
) -> FitResult:
    """Build everything ``run_config`` describes and train it in ``run_config.train.out_dir``."""
    context = context or init_distributed(run_config.train.device)
    train_dataset, val_dataset = build_datasets(run_config, context)
    classes = list(train_dataset.classes)
    torch.manual_seed(run_config.train.seed)  # the same initial weights on every rank and every run
    model = build_model(run_config, len(classes))
    recipe = getattr(run_config.model, "recipe", "joint")
    if recipe not in ("joint", "4step"):
        raise ValueError(f"model.recipe must be joint or 4step, got {recipe!r}")
    if recipe == "4step":
        return _train_four_steps(run_config, model, train_dataset, val_dataset, classes, resume, context)
    return fit(
        model,
        train_dataset,
        run_config.train,
        run_config.train.out_dir,
        val_dataset=val_dataset,
        make_evaluator=make_evaluator_factory(classes) if val_dataset is not None else None,
        classes=classes,
        model_name=run_config.model_name,
        run_config=config_io.to_dict(run_config),
        resume=resume,
        context=context,
        num_workers=run_config.data.num_workers,
    )


# Faster R-CNN's 4-step alternating training: steps 1-3 train in these sub-folders of the run,
# step 4 (the final detector) in the run folder itself, so ``best``/``last`` there are the result.
FOUR_STEP_FOLDERS = ("step1_rpn", "step2_detector", "step3_rpn_shared")
STEP_DONE = "step_done"


def _train_four_steps(
    run_config: RunConfig, model, train_dataset, val_dataset, classes, resume, context
) -> FitResult:
    """Faster R-CNN trained with the paper's 4-step alternating scheme
    (:func:`detlab.models.faster_rcnn.train_alternating`), each step with a fresh optimiser and a
    quarter of the run's budget (time, steps or epochs). The detector steps (2 and 4) evaluate on
    val. A finished step leaves a ``step_done`` mark; resuming skips finished steps (their weights
    come from the step's ``last.pt``) and continues the interrupted one exactly."""
    from detlab.models.faster_rcnn import ALTERNATING_STEPS, train_alternating

    run_dir = Path(run_config.train.out_dir)
    train = run_config.train
    quarter = dataclasses.replace(
        train,
        time_budget_s=train.time_budget_s / 4,
        max_steps=(train.max_steps + 3) // 4 if train.max_steps else 0,
        epochs=max(1, (train.epochs + 3) // 4),
    )
    results: list[FitResult] = []

    def train_step(model, index: int) -> None:
        if results and results[-1].status != "finished":
            return  # interrupted: leave the later steps for the resumed run
        step_dir = run_dir / FOUR_STEP_FOLDERS[index] if index < len(FOUR_STEP_FOLDERS) else run_dir
        if (step_dir / STEP_DONE).is_file():
            state = checkpoints.load_checkpoint(step_dir / checkpoints.LAST_NAME)["model"]
            model.load_state_dict(state)
            return
        detector_step = ALTERNATING_STEPS[index][0] == "detector"
        result = fit(
            model,
            train_dataset,
            quarter,
            step_dir,
            val_dataset=val_dataset if detector_step else None,
            make_evaluator=make_evaluator_factory(classes) if detector_step and val_dataset is not None else None,
            classes=classes,
            model_name=run_config.model_name,
            run_config=config_io.to_dict(run_config),
            resume=step_dir if resume is not None and (step_dir / checkpoints.LAST_NAME).is_file() else None,
            context=context,
            num_workers=run_config.data.num_workers,
        )
        if result.status == "finished" and context.is_main:
            (step_dir / STEP_DONE).write_text(f"{result.state.step} steps, {result.state.elapsed_s:.1f} s\n")
        barrier(context)
        results.append(result)

    train_alternating(model, train_step)
    if not results:
        raise ValueError(f"{run_dir}: all four steps of this run are finished; nothing to resume")
    return results[-1]


def run_config_for_resume(run_dir: str | Path, overrides: list[str] | None = None, **values) -> RunConfig:
    """The config stored in ``run_dir/last.pt`` (for a 4-step run still in steps 1-3, the newest
    step's), with ``values``/``overrides`` applied (e.g. more epochs); the run stays in ``run_dir``."""
    last = Path(run_dir) / checkpoints.LAST_NAME
    if not last.is_file():
        steps = [Path(run_dir) / name / checkpoints.LAST_NAME for name in FOUR_STEP_FOLDERS]
        last = next((path for path in reversed(steps) if path.is_file()), last)
    checkpoint = checkpoints.load_checkpoint(last)
    config = run_config_from_dict(checkpoint["config"])
    if values:
        config = config_io.merge(config, values)
    if overrides:
        config = config_io.merge(config, config_io.parse_overrides(overrides))
    config.train.out_dir = str(run_dir)
    return config
