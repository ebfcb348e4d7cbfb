"""The Python API: the same options as the command line, for every method.

    import detlab
    result = detlab.train("faster_rcnn", data="synthetic", epochs=12, out="runs/shapes")
    predictor = detlab.load("runs/shapes/best")
    detections = predictor.predict("photo.jpg")  # {"boxes", "scores", "labels", "names"}

``detlab.train(model, data=..., preset=..., set=[...], epochs=..., out=..., resume=..., **options)``
is ``detlab train MODEL --data ... --preset ... --set ... --epochs ... --out ... --resume ...``:
the shared options are :data:`SHARED_OPTIONS`, and every field of the method's config
(``detlab.models``) is an option too (``window_size=32`` is ``--window-size 32`` is
``--set model.window_size=32``). Both return a :class:`~detlab.engine.train.FitResult`.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

if typing.TYPE_CHECKING:  # torch is imported when a function needs it: load("model.onnx") never does
    from detlab.data.auditing import AuditResult
    from detlab.engine.predict import Predictor
    from detlab.engine.state import FitResult
    from detlab.export.runtime import OnnxPredictor

DEFAULT_MODEL = "faster_rcnn"

# The options every method takes, on the command line (``--data-root``) and here (``data_root``):
# name -> (the config key it sets, type, help).
SHARED_OPTIONS: dict[str, tuple[str, type, str]] = {
    "data": ("data.spec", str, "synthetic | synthetic-single | synthetic-pose | synthetic-small | voc:DIR | coco:FILE | yolo:DIR"),
    "data_root": ("data.root", str, "where a synthetic set is generated"),
    "recipe": ("train.recipe", str, "the method's training stages: joint, 4step (localizer, overfeat, "
               "faster_rcnn), cascade (keypoints); default: the method's first"),
    "epochs": ("train.epochs", int, "passes over the training set"),
    "max_steps": ("train.max_steps", int, "stop after this many optimiser steps (replaces --epochs)"),
    "time_budget": ("train.time_budget_s", float, "seconds of training (replaces --epochs)"),
    "batch_size": ("train.batch_size", int, "images per step and process"),
    "lr": ("train.lr", float, "learning rate"),
    "seed": ("train.seed", int, "random seed"),
    "device": ("train.device", str, "auto (default) | cpu | cuda | cuda:N"),
    "out": ("train.out_dir", str, "run folder (default runs/MODEL, or runs/MODEL-N when taken)"),
}  # fmt: skip


def model_options(model_name: str) -> dict[str, tuple[typing.Any, typing.Any, tuple | None]]:
    """The method's own options: its config fields, ``name -> (type, default, choices or None)``
    (the default as the method runs it, ``run_defaults`` applied)."""
    from detlab.engine.run import default_run_config
    from detlab.models import method

    config_class = method(model_name).config
    hints = typing.get_type_hints(config_class)
    defaults = default_run_config(model_name).model
    return {
        field.name: (hints[field.name], getattr(defaults, field.name), field.metadata.get("choices"))
        for field in dataclasses.fields(config_class)
    }


def option_values(model_name: str, options: dict) -> dict:
    """``{"epochs": 3, "window_size": 32}`` -> ``{"train": {"epochs": 3}, "model": {"window_size": 32}}``
    (``None`` values are left out); an option that is neither shared nor the method's is an error
    naming it."""
    own = model_options(model_name)
    values: dict = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in SHARED_OPTIONS:
            section, field = SHARED_OPTIONS[name][0].split(".")
        elif name in own:
            section, field = "model", name
        else:
            raise ValueError(
                f"unknown option {name!r} for {model_name}; shared options: {', '.join(SHARED_OPTIONS)}; "
                f"{model_name} options: {', '.join(own)}"
            )
        values.setdefault(section, {})[field] = value
    return values


def _default_out_dir(model: str) -> str:
    """``runs/<model>``, or ``runs/<model>-2``, ``-3``... when taken."""
    candidate, number = Path("runs") / model, 1
    while candidate.exists():
        number += 1
        candidate = Path("runs") / f"{model}-{number}"
    return str(candidate)


def train(
    model: str | None = None,
    *,
    preset: str | None = None,
    set: list[str] | None = None,  # noqa: A002 - the name of the command-line flag
    resume: str | None = None,
    **options,
) -> FitResult:
    """Train ``model`` (a name in ``detlab.models.MODELS``; default ``faster_rcnn``, or the model of
    the run being resumed) and return its :class:`FitResult` (run folder, status, checkpoints,
    last metrics).

    ``options``: :data:`SHARED_OPTIONS` (``data``, ``epochs``, ``time_budget``, ``out``, ...) and the
    method's config fields; ``set``: ``key=value`` overrides (``train.lr=0.02``,
    ``model.fpn=false``); ``preset``: a bundled preset name or YAML file; ``resume``: a run folder
    to continue exactly (its stored config, plus any options given here, e.g. more ``epochs``; a
    finished run is not trained further unless the budget grows: status ``already_finished``).
    """
    from detlab import config as config_io
    from detlab.engine.distributed import broadcast_object, init_distributed, read_on_main
    from detlab.engine.run import resolve_run_config, run_config_for_resume, train_run

    if resume is not None:
        if preset:
            raise ValueError("--preset cannot be combined with --resume (the run keeps its stored config)")
        out = options.get("out")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise ValueError("--out and --resume name different folders; a resumed run stays in its folder")
        # the run folder as rank 0 holds it: other machines of a multi-node run may not share its disk
        context = init_distributed(options.get("device") or "auto")
        run_config = read_on_main(lambda: run_config_for_resume(resume), context)
        if model is not None and run_config.model_name != model:
            raise ValueError(f"{resume} holds a {run_config.model_name} run, not {model}")
        run_config = config_io.merge(run_config, option_values(run_config.model_name, options))
        if set:
            run_config = config_io.merge(run_config, config_io.parse_overrides(set))
    else:
        model = model or DEFAULT_MODEL
        run_config = resolve_run_config(model, preset, set, **option_values(model, options))
        if run_config.train.out_dir == "runs/run" and options.get("out") is None:
            context = init_distributed(run_config.train.device, run_config.train.dist_timeout_s)
            run_config.train.out_dir = broadcast_object(_default_out_dir(model), context)
    return train_run(run_config, resume=resume)


def load(
    path: str | Path,
    device: str = "auto",
    set: list[str] | None = None,  # noqa: A002
    ensemble: list[str | Path] | tuple = (),
    test_scales: list[float] | tuple = (),
    tile: int = 0,
    overlap: float = 0.2,
    tile_full_image: bool = False,
    tile_merge: str = "fusion",
) -> Predictor | OnnxPredictor:
    """A :class:`Predictor` from a checkpoint of any method (``RUN/best``, ``RUN/last``, a ``.pt``
    file or a run folder); ``set``: ``model.FIELD=VALUE`` test-time changes (e.g.
    ``model.score_threshold=0.3``, or ``model.box_refinement=true`` for Fast/Faster R-CNN);
    ``ensemble``: more checkpoints whose detections are merged with this one's; ``test_scales``:
    input size factors for multi-scale testing. Loading never runs code from the file.
    ``tile``: tiled inference on ``tile`` x ``tile`` tiles sharing ``overlap`` of their side, plus
    the whole image with ``tile_full_image``, merged by ``tile_merge`` (``fusion`` or ``nms``;
    :mod:`detlab.tiles`, docs/inference.md); 0: none.

    A ``.onnx`` file from ``detlab export`` gives an :class:`~detlab.export.runtime.OnnxPredictor`
    instead: the same ``predict``, run by onnxruntime with numpy outputs, without importing torch
    (its test-time settings were fixed at export: ``detlab export --set ...``; tiling is not)."""
    from detlab.tiles import tiling_of

    tiling = tiling_of(tile, overlap, tile_full_image, tile_merge)
    if Path(path).suffix.lower() == ".onnx":
        if set or ensemble or test_scales:
            raise ValueError(
                f"{path}: an exported model's settings are fixed (no --set, --ensemble or --test-scales); "
                "pass --set to `detlab export`"
            )
        from detlab.export.runtime import OnnxPredictor

        return OnnxPredictor(path, tiling=tiling)
    from detlab.engine.predict import Predictor

    return Predictor.from_checkpoint(
        path, device=device, overrides=set, ensemble=ensemble, test_scales=test_scales, tiling=tiling
    )


def compare(
    data: str = "synthetic",
    methods: str | list[str] | None = None,
    budget_s: float = 300.0,
    out: str | Path = "runs/compare",
    set: list[str] | None = None,  # noqa: A002
    threads: int = 0,
    device: str = "auto",
) -> dict:
    """``detlab compare``: train ``methods`` (default: every compared method) on ``data`` with the
    same ``budget_s`` each, score and time them on the same test split, write the tables and
    figures into ``out``; returns the report (:func:`detlab.comparison.compare`)."""
    from detlab.comparison import compare as compare_methods

    return compare_methods(data, methods, budget_s, out, set, threads, device)


def audit(
    data: str,
    checkpoint: str | Path | None = None,
    *,
    out: str | Path | None = None,
    splits: list[str] | None = None,
    on_bad: str = "error",
    allow_outside_root: bool = False,
    min_score: float = 0.05,
    **options,
) -> AuditResult:
    """``detlab data audit``: duplicate images and leaks across ``splits`` (default: every split of
    ``data``), box problems and, given a ``checkpoint`` of a detector trained on these classes, the
    likely label mistakes: its detections (scoring at least ``min_score``) on every audited image,
    held against the labels. ``out``: the folder for ``audit.md``, ``audit.json``, ``suspects.csv``
    and the contact sheets. ``options``: the rest of :func:`detlab.data.auditing.audit`'s (``config``,
    ``workers``, ``progress``)."""
    from detlab.data.auditing import audit as audit_data

    predictions, classes = None, None
    if checkpoint is not None:
        predictions, classes = checkpoint_detections(
            checkpoint, data, splits, on_bad, allow_outside_root, min_score
        )
    return audit_data(
        data,
        predictions=predictions,
        prediction_classes=classes,
        out_dir=out,
        splits=splits,
        on_bad=on_bad,
        allow_outside_root=allow_outside_root,
        **options,
    )


def checkpoint_detections(
    checkpoint: str | Path,
    data: str,
    splits: list[str] | None,
    on_bad: str = "error",
    allow_outside_root: bool = False,
    min_score: float = 0.05,
) -> tuple[dict, list[str]]:
    """``({image path: {"boxes", "scores", "labels"}}, the model's classes)``: ``checkpoint``'s
    detections on every image of ``data``'s ``splits`` (test-time only: no augmentation)."""
    from detlab.data.auditing import load_splits
    from detlab.engine.predict import Predictor, detections_by_image

    predictor = Predictor.from_checkpoint(checkpoint)
    datasets = load_splits(data, splits, on_bad=on_bad, allow_outside_root=allow_outside_root)
    records = [record for dataset in datasets.values() for record in dataset.records]
    return detections_by_image(predictor, records, min_score=min_score), predictor.classes
