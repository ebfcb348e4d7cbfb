"""A training run from its config: data, model, recipe, then :func:`detlab.engine.fit` per stage.

:class:`RunConfig` composes the shared sections (:class:`~detlab.config.DataConfig`,
:class:`~detlab.config.TrainConfig`) with the method's own section, the config class of its
:class:`~detlab.models.contract.Method` in ``detlab.models.MODELS``, whose ``run_defaults`` are the
method's own data and training defaults. ``detlab train`` and ``detlab.train(...)`` both end in
:func:`train_run`, which runs the method's recipe through :func:`detlab.engine.recipes.train_stages`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from detlab import config as config_io
from detlab import models
from detlab.config import DataConfig, RunConfig, TrainConfig
from detlab.data.loading import load_dataset, parse_spec
from detlab.data.mosaic import MosaicDataset
from detlab.data.transforms import build_transforms
from detlab.data.validation import check_images
from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import Context, barrier, init_distributed
from detlab.engine.recipes import RunData, recipe_of, train_stages
from detlab.engine.state import FitResult
from detlab.models.contract import DetectorModule
from detlab.models.data_fit import describe, fit_to_data


def default_run_config(model_name: str) -> RunConfig:
    """The shared defaults with the method's ``run_defaults`` applied."""
    method = models.method(model_name)
    return config_io.merge(RunConfig(model_name=model_name, model=method.config()), method.run_defaults)


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
    from the stored config takes the value the method's ``stored_defaults`` gives it, if any (a
    field whose default changed after checkpoints were saved without it, so an old checkpoint
    rebuilds the network it was trained as), else its current default."""
    model_name = data.get("model_name")
    if not model_name:
        raise ValueError("stored run config names no model (model_name)")
    method = models.method(model_name)
    stored_model = {**method.stored_defaults, **data.get("model", {})}
    return RunConfig(
        model_name=model_name,
        data=config_io.from_dict(DataConfig, data.get("data", {}), "data"),
        train=config_io.from_dict(TrainConfig, data.get("train", {}), "train"),
        model=config_io.from_dict(method.config, stored_model, "model"),
    )


def build_model(
    run_config: RunConfig, num_classes: int, weights_from_checkpoint: bool = False
) -> DetectorModule:
    """The model ``run_config`` describes (:func:`detlab.models.build_model`)."""
    return models.build_model(run_config.model_name, run_config.model, num_classes, weights_from_checkpoint)


def load_split(run_config: RunConfig, split: str, check: bool = True):
    """The data set of ``run_config.data`` at ``split``, every image checked once
    (:func:`detlab.data.validation.check_images`, cached by file, honouring ``data.on_bad``);
    returns ``(dataset, check report or None)``."""
    data = run_config.data
    dataset = load_dataset(
        data.spec,
        split,
        root=data.root,
        on_bad=data.on_bad,
        allow_outside_root=data.allow_outside_root,
        num_synthetic=data.synthetic_images,
        seed=data.synthetic_seed,
    )
    if not check:
        return dataset, None
    return check_images(dataset, on_bad=data.on_bad)


def build_datasets(run_config: RunConfig, context: Context | None = None):
    """``(train_dataset, val_dataset or None, image-check reports)`` with training / evaluation
    transforms. The models resize images themselves, so the data keeps its size. A COCO file is
    one split: no validation. Under torchrun the first process of each machine reads and checks
    first (it may generate the synthetic set on that machine's disk), the others after it (from
    the check cache)."""
    data = run_config.data
    context = context or Context()
    result = None
    for turn in ("main", "others"):
        if (turn == "main") == context.is_node_main:
            train, report = load_split(run_config, data.train_split)
            train = train.with_options(cache_images=data.cache_images).with_transforms(
                build_transforms(
                    True,
                    horizontal_flip=data.horizontal_flip,
                    vertical_flip=data.vertical_flip,
                    rotate90=data.rotate90,
                    photometric=data.photometric,
                )
            )
            validation, reports = None, {"train": report.as_dict()}
            if parse_spec(data.spec)[0] == "coco":
                warnings.warn("a COCO file is one split: no evaluation during training", stacklevel=2)
            elif data.val_split == "auto":
                train, validation, reports["val"] = automatic_validation(run_config, train, context)
            elif data.val_split:
                if data.val_split == data.test_split:
                    warnings.warn(
                        f"data.val_split is the test split ({data.test_split!r}): best.pt is chosen on the "
                        "test images, so its test numbers are optimistic",
                        stacklevel=2,
                    )
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
    if (
        validation is not None
        and len(validation)
        and not train_images & {str(r.image_path) for r in validation.records}
    ):
        if context.is_main:
            print(f"validation: the data set's val split ({len(validation)} images)", flush=True)
        return train, validation, check.as_dict()
    count = len(train)
    held = int(round(data.val_fraction * count))
    if count < MIN_IMAGES_TO_HOLD_OUT or held < 1 or held >= count:
        warnings.warn(
            f"no validation split: the training split has {count} images, too few to hold some out "
            f"(data.val_fraction {data.val_fraction}); best.pt is the last checkpoint",
            stacklevel=2,
        )
        return train, None, {"held_out": 0}
    order = torch.randperm(count, generator=torch.Generator().manual_seed(run_config.train.seed)).tolist()
    held_out, kept = sorted(order[:held]), sorted(order[held:])
    validation, train = train.subset(held_out), train.subset(kept)
    if context.is_main:
        print(
            f"validation: {held} of the training split's {count} images held out (seed {run_config.train.seed}; "
            "data.val_split names a split instead)",
            flush=True,
        )
        run_dir = Path(run_config.train.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "val_held_out.txt").write_text(
            "".join(f"{record.image_id}\n" for record in validation.records)
        )
    return train, validation, {"held_out": held, "seed": run_config.train.seed}


def fit_model_to_data(run_config: RunConfig, train_dataset, num_classes: int, context: Context) -> RunConfig:
    """``run_config`` with the model's ``"auto"`` settings chosen from the training split
    (:mod:`detlab.models.data_fit`); the choices and the anchor coverage are printed and written
    to ``data_fit.json`` in the run folder."""
    run_config, report = fit_to_data(
        run_config, train_dataset.records, models.method(run_config.model_name), num_classes
    )
    if report and context.is_main:
        run_dir = Path(run_config.train.out_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data_fit.json").write_text(json.dumps(report, indent=1) + "\n")
        print(describe(report), flush=True)
    return run_config


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
    # resizes the longer side has them resized as it would, once, before the augmentations
    # (which then work on fewer pixels).
    resize_to = model.training_resize()
    if resize_to is not None:
        train_dataset = train_dataset.with_options(
            resize_to=resize_to, cache_images=run_config.data.cache_images
        )
    proposals = model.training_proposals()
    if proposals is not None:  # computed once before training (not part of its time), then cached
        if context.is_node_main:  # into this machine's cache
            computed = proposals.fill(train_dataset.records)
            if computed:
                print(f"{computed} images' proposals computed into {proposals.cache.path}", flush=True)
        barrier(context)
        train_dataset = train_dataset.with_options(proposals=proposals)
    train_dataset = with_mosaic(train_dataset, run_config, model)
    if context.is_main:
        names = ", ".join(stage.name for stage in stages)
        print(f"{run_config.model_name}: training in {run_config.train.out_dir} ({names})", flush=True)
    data = RunData(train_dataset, val_dataset, classes, data_report)
    return train_stages(model, stages, run_config, data, resume, context, stop_at_step)


def with_mosaic(train_dataset, run_config: RunConfig, model: DetectorModule):
    """The training set as mosaics when ``data.mosaic`` > 0 (of the model's input side, else 640,
    unless ``data.mosaic_size`` says otherwise)."""
    data = run_config.data
    if data.mosaic <= 0:
        return train_dataset
    size = data.mosaic_size or model.input_side() or 640
    return MosaicDataset(train_dataset, size, probability=data.mosaic, off_after=data.mosaic_off_after)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The run's ``last.pt``, or, for a run still in an earlier stage, the newest stage's."""
    run_dir = Path(run_dir)
    last = run_dir / checkpoints.LAST_NAME
    if last.is_file():
        return last
    stages = sorted(
        (path for path in run_dir.glob(f"*/{checkpoints.LAST_NAME}")), key=lambda p: p.stat().st_mtime
    )
    if not stages:
        raise FileNotFoundError(f"{run_dir}: no run to resume here (no {checkpoints.LAST_NAME})")
    return stages[-1]


def run_config_for_resume(
    run_dir: str | Path, values: dict | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """The config stored with the run in ``run_dir``, with ``values`` (nested dicts) and
    ``overrides`` (``key=value``) applied, e.g. more epochs; the run stays in ``run_dir``."""
    latest = latest_checkpoint(run_dir)
    checkpoint = checkpoints.load_checkpoint(latest)
    with checkpoints.put_to_use(checkpoint, latest):
        config = run_config_from_dict(checkpoint["config"])
    if values:
        config = config_io.merge(config, values)
    if overrides:
        config = config_io.merge(config, config_io.parse_overrides(overrides))
    config.train.out_dir = str(run_dir)
    return config
