"""The Python API: the same options as the command line.

    import detlab
    result = detlab.train("faster_rcnn", data="synthetic", epochs=12, out="runs/shapes")
    predictor = detlab.load("runs/shapes/best")
    detections = predictor.predict("photo.jpg")  # {"boxes", "scores", "labels", "names"}

``detlab.train(model, data=..., preset=..., set=[...], epochs=..., out=..., resume=...)`` is
``detlab train MODEL --data ... --preset ... --set ... --epochs ... --out ... --resume ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlab.engine.predict import Predictor
from detlab.engine.train import FitResult

DEFAULT_MODEL = "faster_rcnn"
LOCALIZER_MODELS = ("localizer", "keypoints")


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
    data: str | None = None,
    data_root: str | None = None,
    preset: str | None = None,
    set: list[str] | None = None,  # noqa: A002 - the name of the command-line flag
    epochs: int | None = None,
    max_steps: int | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    **model_options,
) -> FitResult | int:
    """Train ``model`` (a name in ``detlab.models.MODELS``, or ``localizer``/``keypoints``;
    default ``faster_rcnn``, or the model of the run being resumed).

    ``set``: ``key=value`` overrides (``train.lr=0.02``, ``model.fpn=false``); ``preset``: a bundled
    preset name or YAML file; ``resume``: a run folder to continue exactly (its stored config,
    plus any options given here, e.g. more ``epochs``). Returns the :class:`FitResult` (run folder,
    status, checkpoints, last metrics); the localizer recipes return their exit code and write
    their metrics in their run folder. ``model_options`` are the localizer flags (``recipe=...``).
    """
    if model in LOCALIZER_MODELS:
        return _train_localizer(model, locals())
    if model_options:
        raise ValueError(
            f"unknown options for {model}: {sorted(model_options)}; use set=['model.NAME=VALUE']"
        )
    from detlab.engine.distributed import broadcast_object, init_distributed
    from detlab.engine.run import resolve_run_config, run_config_for_resume, train_run

    values: dict = {}
    for section, field, value in (
        ("data", "spec", data),
        ("data", "root", data_root),
        ("train", "epochs", epochs),
        ("train", "max_steps", max_steps),
        ("train", "time_budget_s", time_budget),
        ("train", "batch_size", batch_size),
        ("train", "lr", lr),
        ("train", "seed", seed),
        ("train", "device", device),
        ("train", "out_dir", out),
    ):
        if value is not None:
            values.setdefault(section, {})[field] = value
    if resume is not None:
        if preset:
            raise ValueError("--preset cannot be combined with --resume (the run keeps its stored config)")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise ValueError("--out and --resume name different folders; a resumed run stays in its folder")
        run_config = run_config_for_resume(resume, set, **values)
        if model is not None and run_config.model_name != model:
            raise ValueError(f"{resume} holds a {run_config.model_name} run, not {model}")
    else:
        model = model or DEFAULT_MODEL
        run_config = resolve_run_config(model, preset, set, **values)
        if run_config.train.out_dir == "runs/run" and out is None:
            context = init_distributed(run_config.train.device)
            run_config.train.out_dir = broadcast_object(_default_out_dir(model), context)
    return train_run(run_config, resume=resume)


def _train_localizer(model: str, options: dict) -> int:
    """Hand the same options to the localizer/keypoint recipes (issue 5)."""
    try:
        from detlab.models import localizer_training
    except ImportError as error:
        raise ValueError(f"the {model} trainer is not available in this build ({error})") from None
    if options["resume"] is not None or options["device"] is not None:
        raise ValueError(f"--resume and --device are not supported by the {model} recipes")
    namespace = argparse.Namespace(
        model=model,
        data=options["data"],
        data_root=options["data_root"],
        out_dir=options["out"],
        epochs=options["epochs"],
        max_steps=options["max_steps"],
        time_budget=options["time_budget"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        seed=options["seed"],
        config=options["preset"],
        set=list(options["set"] or []),
        **options["model_options"],
    )
    return localizer_training.run(namespace)


def load(path: str | Path, device: str = "auto") -> Predictor:
    """A :class:`Predictor` from a checkpoint (``RUN/best``, ``RUN/last``, a ``.pt`` file or a run
    folder). Loading never runs code from the file."""
    return Predictor.from_checkpoint(path, device=device)
