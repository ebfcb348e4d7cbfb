"""A training run from its config: data, model, recipe, then :func:`detlab.engine.fit` per stage.

:class:`RunConfig` composes the shared sections (:class:`~detlab.config.DataConfig`,
:class:`~detlab.config.TrainConfig`) with the method's own section, whose type is the annotation
of the ``config`` parameter of the method's build function in ``detlab.models.MODELS`` (e.g.
``build_faster_rcnn(config: FasterRCNNConfig, num_classes: int)``), so a new method needs no
registration here; its ``RUN_DEFAULTS`` (a class attribute of that config) are the method's own
data and training defaults. ``detlab train`` and ``detlab.train(...)`` both end in
:func:`train_run`, which runs the method's recipe (:mod:`detlab.engine.stages`) through
:func:`train_stages`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from detlab import config as config_io
from detlab.config import DataConfig, TrainConfig
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import Context, barrier, init_distributed, read_on_main
from detlab.engine.stages import Stage, Step, recipe_of
from detlab.engine.train import FitResult, TrainingState, existing, fit

STAGE_DONE = "stage_done"


@dataclasses.dataclass
class RunConfig:
    """Everything a training run needs; stored resolved in ``config.yaml`` and every checkpoint."""

    model_name: str = "faster_rcnn"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model: Any = None  # the method's config dataclass (FasterRCNNConfig, LocalizerConfig, ...)


def model_builders() -> dict:
    from detlab.models import MODELS

    return MODELS


def model_config_class(model_name: str) -> type:
    """The config dataclass ``MODELS[model_name]`` takes as its ``config`` argument."""
    builders = model_builders()
    if model_name not in builders:
        raise ValueError(f"unknown model {model_name!r}; trainable models: {', '.join(builders)}")
    hints = typing.get_type_hints(builders[model_name])
    config_class = hints.get("config")
    if config_class is None or not dataclasses.is_dataclass(config_class):
        raise ValueError(
            f"MODELS[{model_name!r}] must be annotated build(config: SomeConfigDataclass, num_classes: int)"
        )
    return config_class


def default_run_config(model_name: str) -> RunConfig:
    """The shared defaults with the method's ``RUN_DEFAULTS`` applied."""
    config_class = model_config_class(model_name)
    config = RunConfig(model_name=model_name, model=config_class())
    return config_io.merge(config, getattr(config_class, "RUN_DEFAULTS", {}))


def resolve_run_config(
    model_name: str,
    preset: str | Path | None = None,
    overrides: list[str] | None = None,
    **values,
) -> RunConfig:
    """Defaults (shared, then the method's), then the ``preset`` YAML (sections
    ``data``/``train``/``model``), then keyword ``values`` (nested dicts, e.g.
    ``train={"epochs": 3}``), then ``key=value`` ``overrides``."""
    config = default_run_config(model_name)
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
    """Inverse of ``config.to_dict(run_config)`` (what checkpoints store). A model field missing
    from the stored config takes the value the model's ``STORED_DEFAULTS`` gives it, if any (a
    field whose default changed after checkpoints were saved without it, so an old checkpoint
    rebuilds the network it was trained as), else its current default."""
    model_name = data.get("model_name")
    if not model_name:
        raise ValueError("stored run config names no model (model_name)")
    model_class = model_config_class(model_name)
    stored_model = {**getattr(model_class, "STORED_DEFAULTS", {}), **data.get("model", {})}
    return RunConfig(
        model_name=model_name,
        data=config_io.from_dict(DataConfig, data.get("data", {}), "data"),
        train=config_io.from_dict(TrainConfig, data.get("train", {}), "train"),
        model=config_io.from_dict(model_class, stored_model, "model"),
    )


def build_model(run_config: RunConfig, num_classes: int, weights_from_checkpoint: bool = False) -> torch.nn.Module:
    """The model ``run_config`` describes; ``weights_from_checkpoint``: every weight will be loaded
    from a checkpoint next, so the backbone is built without ImageNet's or a weights file's (no
    download, no file that may be gone)."""
    config = run_config.model
    if weights_from_checkpoint:
        from detlab.models.backbones import without_backbone_weights

        config = without_backbone_weights(config)
    return model_builders()[run_config.model_name](config, num_classes)


def load_split(run_config: RunConfig, split: str, check: bool = True):
    """The data set of ``run_config.data`` at ``split``, every image checked once
    (:func:`detlab.data.validation.check_images`, cached by file, honouring ``data.on_bad``);
    returns ``(dataset, check report or None)``."""
    from detlab.data import load_dataset
    from detlab.data.validation import check_images

    data = run_config.data
    dataset = load_dataset(data.spec, split, root=data.root, on_bad=data.on_bad,
                           num_synthetic=data.synthetic_images, seed=data.synthetic_seed)  # fmt: skip
    if not check:
        return dataset, None
    return check_images(dataset, on_bad=data.on_bad)


def build_datasets(run_config: RunConfig, context: Context | None = None):
    """``(train_dataset, val_dataset or None, image-check reports)`` with training / evaluation
    transforms. The models resize images themselves, so the data keeps its size. A COCO file is
    one split: no validation. Under torchrun the first process of each machine reads and checks
    first (it may generate the synthetic set on that machine's disk), the others after it (from
    the check cache)."""
    from detlab.data import build_transforms, parse_spec

    data = run_config.data
    context = context or Context()
    result = None
    for turn in ("main", "others"):
        if (turn == "main") == context.is_node_main:
            train, report = load_split(run_config, data.train_split)
            train = train.with_options(cache_images=data.cache_images).with_transforms(
                build_transforms(True, horizontal_flip=data.horizontal_flip, vertical_flip=data.vertical_flip,
                                 rotate90=data.rotate90, photometric=data.photometric)
            )  # fmt: skip
            validation, reports = None, {"train": report.as_dict()}
            if parse_spec(data.spec)[0] == "coco":
                warnings.warn("a COCO file is one split: no evaluation during training", stacklevel=2)
            elif data.val_split == "auto":
                train, validation, reports["val"] = automatic_validation(run_config, train, context)
            elif data.val_split:
                if data.val_split == data.test_split:
                    warnings.warn(f"data.val_split is the test split ({data.test_split!r}): best.pt is chosen on the "
                                  "test images, so its test numbers are optimistic", stacklevel=2)  # fmt: skip
                validation, val_report = load_split(run_config, data.val_split)
                reports["val"] = val_report.as_dict()
            if validation is not None:
                validation = validation.with_transforms(build_transforms(False))
            result = train, validation, reports
        barrier(context)
    return result


MIN_IMAGES_TO_HOLD_OUT = 10  # below this the training split is used whole (no validation)


def automatic_validation(run_config: RunConfig, train, context: Context):
    """``data.val_split: auto``: ``(train, validation or None, report)``. The data set's ``val``
    split when it has one that shares no image with the training split; otherwise a seeded
    ``data.val_fraction`` of the training split is held out (the same images on every process and
    after a resume), so ``best.pt`` is never chosen on the test images. A training split of fewer
    than ``MIN_IMAGES_TO_HOLD_OUT`` images is used whole, and ``best.pt`` is then the last."""
    data = run_config.data
    try:
        validation, check = load_split(run_config, "val")
    except FileNotFoundError:
        validation = None  # no such split file (VOC)
    except ValueError as error:
        if "split 'val'" not in str(error):
            raise  # a val split that exists but is broken is reported, not silently replaced
        validation = None  # a data.yaml without a val entry
    train_images = {str(record.image_path) for record in train.records}
    if validation is not None and len(validation) and not train_images & {str(r.image_path) for r in validation.records}:
        if context.is_main:
            print(f"validation: the data set's val split ({len(validation)} images)", flush=True)
        return train, validation, check.as_dict()
    count = len(train)
    held = int(round(data.val_fraction * count))
    if count < MIN_IMAGES_TO_HOLD_OUT or held < 1 or held >= count:
        warnings.warn(f"no validation split: the training split has {count} images, too few to hold some out "
                      f"(data.val_fraction {data.val_fraction}); best.pt is the last checkpoint", stacklevel=2)  # fmt: skip
        return train, None, {"held_out": 0}
    order = torch.randperm(count, generator=torch.Generator().manual_seed(run_config.train.seed)).tolist()
    held_out, kept = sorted(order[:held]), sorted(order[held:])
    validation, train = train.subset(held_out), train.subset(kept)
    if context.is_main:
        print(f"validation: {held} of the training split's {count} images held out (seed {run_config.train.seed}; "
              "data.val_split names a split instead)", flush=True)  # fmt: skip
        run_dir = Path(run_config.train.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "val_held_out.txt").write_text("".join(f"{record.image_id}\n" for record in validation.records))
    return train, validation, {"held_out": held, "seed": run_config.train.seed}


def fit_model_to_data(run_config: RunConfig, train_dataset, num_classes: int, context: Context) -> RunConfig:
    """``run_config`` with the model's ``"auto"`` settings chosen from the training split
    (:mod:`detlab.models.data_fit`); the choices and the anchor coverage are printed and written
    to ``data_fit.json`` in the run folder."""
    from detlab.models.data_fit import describe, fit_to_data

    def build(model_config):
        return model_builders()[run_config.model_name](model_config, num_classes)

    run_config, report = fit_to_data(run_config, train_dataset.records, build)
    if report and context.is_main:
        run_dir = Path(run_config.train.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data_fit.json").write_text(json.dumps(report, indent=1) + "\n")
        print(describe(report), flush=True)
    return run_config


def make_evaluator(model: torch.nn.Module, classes: list[str]):
    """A fresh evaluator for ``model``'s outputs: COCO detection metrics (``AP50`` picks
    ``best.pt``), ILSVRC localization error for the localizer, PCK for DeepPose."""
    kind = getattr(model, "evaluation", "detection")
    if kind == "localization":
        from detlab.eval.localization import LocalizationEvaluator

        return LocalizationEvaluator(classes, top_k=max(5, getattr(model, "top_k", 5)))
    if kind == "keypoints":
        from detlab.eval.keypoints import KeypointEvaluator

        return KeypointEvaluator()
    from detlab.eval.coco import COCOEvaluator

    return COCOEvaluator(classes)


def train_run(
    run_config: RunConfig,
    resume: str | Path | None = None,
    context: Context | None = None,
    stop_at_step: int | None = None,
) -> FitResult:
    """Build everything ``run_config`` describes and train it in ``run_config.train.out_dir`` with
    the method's recipe. ``stop_at_step``: pause the stage in progress after that many of its steps
    (tests of resuming)."""
    context = context or init_distributed(run_config.train.device, run_config.train.dist_timeout_s)
    train_dataset, val_dataset, data_report = build_datasets(run_config, context)
    classes = list(train_dataset.classes)
    if resume is None:  # a resumed run's config holds what was chosen when it started
        run_config = fit_model_to_data(run_config, train_dataset, len(classes), context)
    torch.manual_seed(run_config.train.seed)  # the same initial weights on every rank and every run
    model = build_model(run_config, len(classes), weights_from_checkpoint=resume is not None)
    stages = recipe_of(model, run_config.train.recipe)
    # A fixed-input model's training images are warped to its input in advance; a model that
    # resizes the longer side (``longer_side``) has them resized as it would, once, before the
    # augmentations (which then work on fewer pixels).
    resize_to = getattr(model, "input_size", None) or getattr(model, "longer_side", None)
    if resize_to is not None:
        train_dataset = train_dataset.with_options(resize_to=resize_to, cache_images=run_config.data.cache_images)
    proposals = getattr(model, "training_proposals", lambda: None)()
    if proposals is not None:  # computed once before training (not part of its time), then cached
        if context.is_node_main:  # into this machine's cache
            computed = proposals.fill(train_dataset.records)
            if computed:
                print(f"{computed} images' proposals computed into {proposals.cache.path}", flush=True)
        barrier(context)
        train_dataset = train_dataset.with_options(proposals=proposals)
    train_dataset = with_mosaic(train_dataset, run_config)
    if context.is_main:
        names = ", ".join(stage.name for stage in stages)
        print(f"{run_config.model_name}: training in {run_config.train.out_dir} ({names})", flush=True)
    return train_stages(model, stages, run_config, train_dataset, val_dataset, classes, resume, context,
                        stop_at_step, data_report)  # fmt: skip


def with_mosaic(train_dataset, run_config: RunConfig):
    """The training set as mosaics when ``data.mosaic`` > 0 (of the model's ``input_size``
    unless ``data.mosaic_size`` says otherwise)."""
    data = run_config.data
    if data.mosaic <= 0:
        return train_dataset
    from detlab.data.mosaic import MosaicDataset

    size = data.mosaic_size or getattr(run_config.model, "input_size", 0) or 640
    return MosaicDataset(train_dataset, size, probability=data.mosaic, off_after=data.mosaic_off_after)


def stage_train_config(train: TrainConfig, stage: Stage) -> TrainConfig:
    """``train`` with the stage's share of the budget (time, steps or epochs; at least one step or
    epoch) and the stage's own changes."""
    if stage.budget == 1.0 and not stage.train_changes:
        return train
    share = dataclasses.replace(
        train,
        time_budget_s=train.time_budget_s * stage.budget,
        max_steps=math.ceil(train.max_steps * stage.budget - 1e-9) if train.max_steps else 0,
        epochs=max(1, math.ceil(train.epochs * stage.budget - 1e-9)),
    )
    return config_io.merge(share, stage.train_changes, "train")


def train_stages(
    model: torch.nn.Module,
    stages: list[Stage | Step],
    run_config: RunConfig,
    train_dataset,
    val_dataset,
    classes: list[str],
    resume: str | Path | None = None,
    context: Context | None = None,
    stop_at_step: int | None = None,
    data_report: dict | None = None,
) -> FitResult:
    """Run ``stages`` in order: every item but the last in ``RUN/<its name>/``, the last in the run
    folder. A finished item (``stage_done`` mark) is skipped, its weights loaded from its
    ``last.pt``; the interrupted one continues exactly. Returns the result of the last stage run
    (a paused or interrupted stage ends the recipe there, for the resumed run to continue)."""
    context = context or init_distributed(run_config.train.device, run_config.train.dist_timeout_s)
    run_dir = Path(run_config.train.out_dir)
    header = {"model_name": run_config.model_name, "classes": list(classes), "config": config_io.to_dict(run_config)}
    result = None
    for index, item in enumerate(stages):
        last = index == len(stages) - 1
        folder = run_dir if last else run_dir / item.name
        # what the run folder says, as rank 0 sees it (the other machines may not share its disk)
        done_weights = read_on_main(lambda folder=folder: stage_done_weights(folder), context)
        if done_weights is not None:
            model.load_state_dict(done_weights)
            if last:  # a recipe ending in a step, finished: nothing to do
                return read_on_main(lambda result=result: finished_run(run_dir, result), context)
            continue
        if isinstance(item, Step):
            run_step(item, model, train_dataset, folder, header, run_config.train.seed + index, context)
            if last:
                return evaluate_final_step(model, run_dir, val_dataset, classes, run_config, result, context)
            continue
        if item.prepare is not None:
            item.prepare(model)
        resume_stage = resume is not None and read_on_main(lambda folder=folder: (folder / checkpoints.LAST_NAME).is_file(), context)
        result = fit(
            model,
            train_dataset,
            stage_train_config(run_config.train, item),
            folder,
            val_dataset=val_dataset if item.evaluate else None,
            make_evaluator=(lambda: make_evaluator(model, classes)) if item.evaluate and val_dataset is not None else None,
            classes=classes,
            model_name=run_config.model_name,
            run_config=header["config"],
            resume=folder if resume_stage else None,
            context=context,
            num_workers=run_config.data.num_workers,
            stop_at_step=stop_at_step,
            data_report=data_report if index == 0 else None,
        )
        if not result.finished:
            return result
        if not last and context.is_main:
            (folder / STAGE_DONE).write_text(f"{result.state.step} steps, {result.state.elapsed_s:.1f} s\n")
        barrier(context)
    return result


def stage_done_weights(folder: Path) -> dict | None:
    """The weights of a finished stage (its ``stage_done`` mark is there), else ``None``."""
    if not (folder / STAGE_DONE).is_file():
        return None
    return checkpoints.load_checkpoint(folder / checkpoints.LAST_NAME)["model"]


def finished_run(run_dir: Path, result: FitResult | None) -> FitResult:
    """The result of resuming a run whose recipe ended in a step that is done: nothing trained."""
    stored = checkpoints.load_checkpoint(run_dir / checkpoints.LAST_NAME)
    state = result.state if result is not None else TrainingState(**stored["progress"])
    return FitResult(run_dir, "already_finished", state, run_dir / checkpoints.LAST_NAME,
                     existing(run_dir / checkpoints.BEST_NAME), dict(stored.get("metrics") or {}))  # fmt: skip


def evaluate_final_step(model, run_dir: Path, val_dataset, classes, run_config, result, context) -> FitResult:
    """After a recipe's last step (R-CNN's SVMs and regressors): evaluate the model on the
    validation split, keep the metrics in ``last.pt`` (and ``best.pt``) and the run log."""
    from detlab.engine.metrics_log import MetricsLog
    from detlab.engine.sampling import make_loader
    from detlab.engine.train import _plain_metrics, evaluate

    state = result.state if result is not None else TrainingState()
    metrics: dict = {}
    if context.is_main and val_dataset is not None:
        loader = make_loader(val_dataset, run_config.train.batch_size, torch.utils.data.SequentialSampler(val_dataset))
        metrics = _plain_metrics(evaluate(model, loader, make_evaluator(model, classes), context.device, run_config.train.amp))
        checkpoint = checkpoints.load_checkpoint(run_dir / checkpoints.LAST_NAME)
        checkpoint["metrics"] = metrics
        checkpoints.save_checkpoint(checkpoint, run_dir / checkpoints.LAST_NAME)
        checkpoints.save_checkpoint(checkpoint, run_dir / checkpoints.BEST_NAME)
        # resume_step: keep what the log holds (a step's folder has none yet), append this record
        MetricsLog(run_dir, resume_step=state.step).write({"kind": "eval", "epoch": state.epoch, "step": state.step, **metrics})
    barrier(context)
    return FitResult(run_dir, "finished", state, run_dir / checkpoints.LAST_NAME,
                     existing(run_dir / checkpoints.BEST_NAME), metrics)  # fmt: skip


def run_step(step: Step, model, train_dataset, folder: Path, header: dict, seed: int, context: Context) -> None:
    """One non-gradient step of a recipe, on every process alike (seeded, so a resumed run draws
    the same numbers), then its checkpoint and ``stage_done`` mark (rank 0)."""
    torch.manual_seed(seed)
    outcome = step.run(model, train_dataset) or {}
    if context.is_main:
        print(f"{step.name}: {outcome}" if outcome else f"{step.name}: done", flush=True)
        checkpoints.save_checkpoint(
            {**header, "model": model.state_dict(), "optimizer": None, "schedule": None, "scaler": None,
             "progress": dataclasses.asdict(TrainingState()), "rng": checkpoints.capture_rng_state(),
             "metrics": dict(outcome)},
            folder / checkpoints.LAST_NAME,
        )  # fmt: skip
        (folder / STAGE_DONE).write_text("done\n")
    barrier(context)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The run's ``last.pt``, or, for a run still in an earlier stage, the newest stage's."""
    run_dir = Path(run_dir)
    last = run_dir / checkpoints.LAST_NAME
    if last.is_file():
        return last
    stages = sorted((path for path in run_dir.glob(f"*/{checkpoints.LAST_NAME}")), key=lambda p: p.stat().st_mtime)
    if not stages:
        raise FileNotFoundError(f"{run_dir}: no run to resume here (no {checkpoints.LAST_NAME})")
    return stages[-1]


def run_config_for_resume(run_dir: str | Path, values: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The config stored with the run in ``run_dir``, with ``values`` (nested dicts) and
    ``overrides`` (``key=value``) applied, e.g. more epochs; the run stays in ``run_dir``."""
    checkpoint = checkpoints.load_checkpoint(latest_checkpoint(run_dir))
    config = run_config_from_dict(checkpoint["config"])
    if values:
        config = config_io.merge(config, values)
    if overrides:
        config = config_io.merge(config, config_io.parse_overrides(overrides))
    config.train.out_dir = str(run_dir)
    return config
