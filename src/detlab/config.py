"""Typed configuration: dataclasses with defaults, YAML presets and ``key=value`` overrides.

Every command builds one config object: defaults from the dataclass, then a preset file (YAML,
optional), then ``--set section.field=value`` overrides, in that order. The resolved config is
saved next to results and inside checkpoints, and :func:`load` reads it back into the same type.

The shared sections (:class:`DataConfig`, :class:`TrainConfig`) live here; each method defines its
own model section in its own module and composes them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "presets"


def choice(default: str, choices: tuple[str, ...]):
    """A string field that takes one of ``choices`` (checked when set; the command line offers them)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how training images are augmented.

    ``spec``: ``synthetic`` (the built-in set, ``synthetic_images`` images generated on first use
    under ``root`` from ``synthetic_seed``), ``synthetic-single`` (one object an image), ``synthetic-pose`` (stick figures
    with 7 keypoints), ``synthetic-small`` (1024-pixel images of many small shapes; under
    ``data/synthetic-small`` unless ``root`` names another folder), ``voc:DIR``, ``coco:FILE.json`` or ``yolo:DIR``. Models resize images
    themselves (their ``model.min_size``/``max_size`` or window), so the data keeps its size.
    ``on_bad``: ``error`` stops before training on an unreadable image or annotation (naming every
    one), ``skip`` drops them with a warning. ``allow_outside_root``: read files that a data set's
    annotations name outside its folder (``../x.jpg``, an absolute path); refused by default
    (docs/data.md, "Bad input"). ``cache_images``: keep decoded images in memory (for
    small images and many epochs: the localizer's windows). ``mosaic``: that share of the training
    samples are mosaics of four images (:class:`detlab.data.mosaic.MosaicDataset`), until
    ``mosaic_off_after`` of the budget is spent. ``num_workers``: processes that load and augment
    batches ahead of the model; ``None`` (auto) chooses by device
    (:func:`detlab.engine.sampling.loader_workers`). ``val_split``: the split that picks
    ``best.pt``; ``auto`` takes the data set's ``val`` split when it shares no image with the
    training split, else holds out a seeded ``val_fraction`` of the training split
    (:func:`detlab.engine.run.automatic_validation`); ``""`` evaluates only at the end.
    """

    spec: str = "synthetic"
    root: str = "data/synthetic"
    synthetic_images: int = 600
    # the built-in sets' generation seed; not train.seed, so a run's seed never regenerates the
    # shared set under root that other runs train and are scored on
    synthetic_seed: int = 0
    train_split: str = "train"
    val_split: str = "auto"  # auto: the "val" split if the data has one apart from training, else held out
    val_fraction: float = 0.15  # the share of the training split held out when val_split is auto
    test_split: str = "test"
    horizontal_flip: bool = True
    vertical_flip: bool = False  # for data with no up and down (cells, shapes, aerial images)
    rotate90: bool = False  # random quarter turns, the same kind of data
    photometric: bool = False
    on_bad: str = choice("error", ("error", "skip"))
    allow_outside_root: bool = False  # annotations may name files outside the data set's folder
    num_workers: int | None = None  # None: auto (up to 4 a GPU; on a CPU, see loader_workers)
    cache_images: bool = False
    mosaic: float = 0.0  # the share of training samples that are mosaics of four images (any detector)
    mosaic_size: int = 0  # their side; 0: the model's input_size (640 for a model without one)
    mosaic_off_after: float = 0.85  # mosaics stop once this share of the budget is spent


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and run bookkeeping, shared by every trainable method."""

    out_dir: str = "runs/run"
    recipe: str = ""  # the method's stages (joint, 4step, ...); "" is the method's default
    epochs: int = 10
    max_steps: int = 0  # > 0 stops after this many optimiser steps (overrides epochs)
    time_budget_s: float = 0.0  # > 0 stops after this many seconds of training
    batch_size: int = 2
    optimizer: str = choice("sgd", ("sgd", "adamw"))
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = choice("cosine", ("cosine", "step", "constant"))
    step_milestones: tuple[float, ...] = (0.67, 0.89)  # fractions of the run, for schedule=step
    warmup_steps: int = 100
    clip_grad_norm: float = 10.0
    eval_every: int = 1  # epochs; 0 = only at the end
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision where the device supports it (CUDA)
    amp_cpu_bf16: bool = False  # bfloat16 autocast on CPUs (pays with AVX512-BF16 or AMX)
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights
    ema_ramp_steps: int = 2000  # the average's decay ramps up as ema_decay * (1 - exp(-step / this))
    log_every: int = 10
    # how long a process waits for the others at a collective (NCCL's default, 10 minutes, can be
    # shorter than a slow step or a checkpoint write on a shared disk)
    dist_timeout_s: float = 1800.0


AUTO = "auto"  # a setting chosen from the training data before a run (detlab.models.data_fit)


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def _convert(value: Any, annotation: Any) -> Any:
    """Coerce a YAML/CLI value to ``annotation`` (enough for the types configs use)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for argument in arguments[:-1]:  # the first type the value converts to (e.g. a tuple, else "auto")
            try:
                return _convert(value, argument)
            except (ValueError, TypeError):
                continue
        return _convert(value, arguments[-1])
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        item_type = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        items = [_convert(v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expected a boolean, got {value!r}")
            return lowered in ("true", "1", "yes")
        return bool(value)
    if annotation in (int, float, str):
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return annotation(value)
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build ``cls`` from a (possibly partial, nested) dict; unknown keys are an error."""
    return merge(cls(), data or {}, where)


def merge(config: T, data: dict, where: str = "") -> T:
    """A copy of ``config`` with the (nested) values of ``data`` applied. ``where``: the key path
    of ``config`` (``"train"``), named in errors: an unknown key or a value of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping of settings, got {data!r}")
    types_by_name = _field_types(type(config))
    unknown = sorted(set(data) - set(types_by_name))
    if unknown:
        keys = ", ".join(f"{where}.{key}" if where else key for key in unknown)
        raise ValueError(
            f"unknown config key {keys}; {type(config).__name__} has: {', '.join(types_by_name)}"
        )
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            values[name] = merge(current, value, key)
            continue
        try:
            values[name] = _convert(value, types_by_name[name])
        except (ValueError, TypeError) as error:
            expected = getattr(types_by_name[name], "__name__", str(types_by_name[name]))
            raise ValueError(f"{key}={value!r}: expected {expected} ({error})") from None
        choices = field_choices(type(config), name)
        if choices and values[name] not in choices:
            raise ValueError(f"{key}={value!r}: choose one of {', '.join(choices)}")
    return dataclasses.replace(config, **values)


def field_choices(cls, name: str) -> tuple[str, ...] | None:
    """The values a config field allows, when it is a :func:`choice`."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.metadata.get("choices")
    return None


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=0.02", "data.spec=voc:x"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.lr=0.02)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return nested


def resolve(
    cls: type[T], preset: str | Path | None = None, overrides: list[str] | None = None, **values
) -> T:
    """Defaults of ``cls``, then ``preset`` (a YAML path or the name of a bundled preset), then
    keyword ``values`` (nested dicts allowed), then ``overrides`` (``key=value`` strings)."""
    config = cls()
    if preset:
        config = merge(config, read_yaml(preset_path(preset)))
    if values:
        config = merge(config, values)
    if overrides:
        config = merge(config, parse_overrides(overrides))
    return config


def preset_path(preset: str | Path) -> Path:
    path = Path(preset)
    if path.is_file():
        return path
    bundled = PRESET_DIR / f"{preset}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"preset {preset!r} is neither a file nor a bundled preset (bundled: {names})")


def read_yaml(path: str | Path) -> dict:
    with open(path) as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def to_dict(config) -> dict:
    """Plain nested dict (tuples as lists), safe for YAML and JSON."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save(config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        yaml.safe_dump(to_dict(config), handle, sort_keys=False)


def load(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_yaml(path))


@dataclasses.dataclass
class RunConfig:
    """Everything a training run needs; stored resolved in ``config.yaml`` and every checkpoint."""

    model_name: str = ""  # a method of detlab.models.MODELS
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    model: Any = None  # the method's config dataclass (FasterRCNNConfig, LocalizerConfig, ...)
