"""``detlab compare`` (:func:`compare`): the lecture's tables on any data set. Every method is trained with the same
budget on the same splits (each through :func:`detlab.train`, so each is resumable), scored with
the same evaluator on the same test images, and timed the same way.

For each method, in order: train in ``OUT/<method>`` (a run folder that already holds a checkpoint
is resumed, and a finished one is not trained again; a method whose row is stored in
``OUT/<method>/compare_row.json`` for the same data, budget and settings is not scored again, and
keeps the times of the pass that measured it; a run folder started with other data or settings,
as ``OUT/<method>/compare_settings.json`` records them, is an error for that method rather than
resumed with its old ones). Then one pass over the test images, one image at a time, each model
as :func:`detlab.load` loads it (BatchNorm folded), every method on each image in turn, so that
a drift in the machine's speed during the pass hits every method alike: for a method with
external proposals (R-CNN, Fast R-CNN) the proposal step is timed apart from the network, so the
same pass gives the time an image *with* proposals (proposal method + network) and *without*
(the network on proposals given). Times are medians over the test images after a warm-up, with
one thread count for every method (``threads``). The detections of that pass are scored with
VOC07 11-point mAP@0.5 (and per-class AP@0.5) and COCO's mAP@[.5:.95].

Training time is what the run's checkpoints record: the seconds of every gradient stage plus
those of the steps without gradients (R-CNN's feature caching, SVMs and box regressors). The
proposals of the training images, computed once before training and cached, are not counted (the
lecture's tables do not count them either); a method that failed gets a row with its error, and
the others still run.

Writes ``OUT/compare.json``, ``OUT/compare.md``, ``OUT/speed_vs_map.png`` (test time on a log axis)
and ``OUT/detections.png`` (the same test images, one row a method, its best five detections).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from detlab import plotting
from detlab.config import parse_overrides
from detlab.data.drawing import draw_detections, save_grid
from detlab.data.loading import load_dataset
from detlab.engine.checkpoint import load_checkpoint
from detlab.engine.precision import full_precision, inference_autocast
from detlab.engine.predict import Predictor
from detlab.engine.run import resolve_run_config, run_config_for_resume, train_run
from detlab.eval.coco import COCOEvaluator
from detlab.eval.errors import ERROR_TYPES, SPECIAL_ERROR_TYPES, TIDE_NAMES, analyze_errors
from detlab.eval.voc import VOCEvaluator
from detlab.machine import usable_cpus
from detlab.models import MODELS

ROW_FILE = "compare_row.json"
SETTINGS_FILE = "compare_settings.json"  # the data and settings a method's run was started with
WARMUP_IMAGES = 2
FIGURE_IMAGES = 3


def compared_methods() -> list[str]:
    """The methods ``detlab compare`` trains by default: every method of ``detlab.models.MODELS``
    that declares itself ``compared`` (the detectors), in the registry's order."""
    return [name for name, method in MODELS.items() if method.compared]


def label(name: str) -> str:
    """A method's name in the tables (its :attr:`~detlab.models.contract.Method.label`)."""
    return MODELS[name].label if name in MODELS else name


def parse_methods(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"A,B"`` (method names, or a list of them) -> the names, checked; ``None``: :func:`compared_methods`."""
    comparable = compared_methods()
    if text is None:
        return comparable
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in comparable]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(comparable)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"a method is named twice in {', '.join(names)}")
    return names


def method_settings(
    settings: list[str] | tuple[str, ...], names: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """``key=value`` settings -> ``(those for every method, each method's own)``: one written
    ``METHOD:key=value`` is only for that method (``METHOD:model.window_size=227``) and wins over a
    plain one of the same key; a colon after the ``=`` belongs to the value (``data.spec=voc:DIR``);
    one for a method not compared this time is ignored."""
    common: list[str] = []
    own: dict[str, list[str]] = {name: [] for name in names}
    for setting in settings:
        if ":" not in setting.split("=", 1)[0]:
            common.append(setting.strip())
            continue
        method, value = (part.strip() for part in setting.split(":", 1))
        if method not in compared_methods():
            raise ValueError(
                f"--set {setting}: unknown method {method!r} before the colon; choose from {', '.join(compared_methods())}"
            )
        if "=" not in value:
            raise ValueError(f"--set {setting}: expected {method}:KEY=VALUE")
        if method in own:
            own[method].append(value)
    return common, own


def check_data(method_configs: dict) -> tuple[object, object]:
    """Load the training and test splits once and refuse, before any training, data a method
    cannot be trained or scored on. Returns ``(train, test)`` data sets (of the first method's
    splits; every method is given the same)."""
    first = next(iter(method_configs.values()))
    data = first.data
    images = ("spec", "root", "train_split", "test_split", "synthetic_images", "synthetic_seed", "on_bad")
    splits = {
        tuple(str(getattr(config.data, field)) for field in images) for config in method_configs.values()
    }
    if len(splits) > 1:
        raise ValueError(
            f"the methods would see different data or splits ({', '.join(images)}): {sorted(splits)}"
        )

    def load(split: str):
        return load_dataset(
            data.spec,
            split,
            root=data.root,
            num_synthetic=data.synthetic_images,
            allow_outside_root=data.allow_outside_root,
            seed=data.synthetic_seed,
            on_bad=data.on_bad,
        )

    train, test = load(data.train_split), load(data.test_split)
    if len(test) == 0:
        raise ValueError(f"{data.spec}: the test split {data.test_split!r} has no images")
    counts = [0] * len(train.classes)
    for record in train.records:
        for label in record.labels:
            counts[int(label) - 1] += 1
    missing = [name for name, count in zip(train.classes, counts) if count == 0]
    for method, config in method_configs.items():
        if len(train) < max(2, config.train.batch_size):
            raise ValueError(
                f"{data.spec} [{data.train_split}]: {len(train)} training image(s), too few for {method} "
                f"(batch size {config.train.batch_size}, and at least 2)"
            )
        if missing and MODELS[method].needs_every_class:
            raise ValueError(
                f"{data.spec} [{data.train_split}]: no training box of class(es) {', '.join(missing)}: "
                f"{label(method)} needs positives of every class"
            )
    if sum(counts) == 0:
        raise ValueError(f"{data.spec} [{data.train_split}]: no boxes to train on")
    return train, test


def training_seconds(run_dir: Path) -> tuple[float, int]:
    """``(seconds, optimiser steps)`` the run's checkpoints record: every stage's gradient
    training (its ``progress``) and the seconds of the stages without gradients."""
    seconds, steps = 0.0, 0
    for path in [run_dir / "last.pt", *sorted(run_dir.glob("*/last.pt"))]:
        if not path.is_file():
            continue
        checkpoint = load_checkpoint(path)
        if checkpoint.get("optimizer"):
            seconds += float(checkpoint.get("progress", {}).get("elapsed_s", 0.0))
            steps += int(checkpoint.get("progress", {}).get("step", 0))
        else:  # a step without gradients (features, SVMs, box regressors) records its own time
            seconds += float((checkpoint.get("metrics") or {}).get("seconds", 0.0))
    return seconds, steps


def on_cpu(output: dict) -> dict:
    """One image's detections on the CPU, float32 (autocast may have made them narrower)."""
    return {key: full_precision(value.cpu()) for key, value in output.items()}


class TableScores:
    """Detections added one image at a time (``update(output, target)``), scored as the tables
    here are (``compute()``): VOC07 11-point mAP@0.5 and per-class AP@0.5, COCO's AP50 and
    mAP@[.5:.95]."""

    def __init__(self, classes):
        self.voc, self.coco = VOCEvaluator(classes, 0.5, use_11_point=True), COCOEvaluator(classes)

    def update(self, output: dict, target: dict) -> None:
        self.voc.update([output], [target])
        self.coco.update([output], [target])

    def compute(self) -> dict:
        coco, result = self.coco.compute(), self.voc.compute()
        summary = coco.summary()
        # where the AP50 is lost: TIDE's dAP of each error type (Bolya et al., ECCV 2020)
        errors = analyze_errors(coco.problem)
        return {
            "mAP50_voc07": result.mean_ap,
            "AP50_coco": summary["AP50"],
            "AP_coco": summary["AP"],
            "per_class_AP50_voc07": {row["class"]: row["AP"] for row in result.per_class()},
            "dap": {kind: float(value) for kind, value in errors.dap.items()},
        }


def score_and_time(model, dataset, device, amp: bool = True) -> dict:
    """:func:`score_and_time_together` for one model; its error is raised."""
    result = score_and_time_together({"model": Timed(model, device, amp)}, dataset)["model"]
    if isinstance(result, Exception):
        raise result
    return result


@dataclasses.dataclass
class Timed:
    """A model in a timing pass, run on ``device`` (under autocast there if ``amp``)."""

    model: object
    device: object
    amp: bool = True


def score_and_time_together(models: dict[str, Timed], dataset) -> dict[str, dict | Exception]:
    """One pass over ``dataset``, one image at a time, every model on each image in turn (the
    order rotating from image to image, so that no model always runs right after the same one):
    each model's detections scored (VOC07 mAP@0.5 and per-class AP@0.5, COCO's numbers) and its
    median seconds an image with and without the proposal step, after ``WARMUP_IMAGES`` untimed
    images. Timing the models image by image side by side lets a drift in the machine's speed
    hit every model alike, so the ratios between them hold. A model that raises gets its
    exception in place of its result, and the others go on."""
    names = list(models)
    scores = {name: TableScores(dataset.classes) for name in names}
    with_proposals, network_only, outputs = ({name: [] for name in names} for _ in range(3))
    failed: dict[str, Exception] = {}

    def attempt(name: str, function: Callable, *args) -> object:
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - one model's failure must not stop the others
            failed[name] = error
            return None

    def measure(name: str, index: int, image, target) -> None:
        output, total, network = run_timed(models[name], image)
        output = on_cpu(output)
        scores[name].update(output, target)
        with_proposals[name].append(total)
        network_only[name].append(network)
        if index < FIGURE_IMAGES:
            outputs[name].append(output)

    def summary(name: str) -> dict:
        return {
            "s_per_image_with_proposals": statistics.median(with_proposals[name]),
            "s_per_image_without_proposals": statistics.median(network_only[name]),
            "external_proposals": models[name].model.proposal_method() is not None,
            **scores[name].compute(),
            "figure_outputs": outputs[name],
        }

    with torch.no_grad():
        for index in range(min(WARMUP_IMAGES, len(dataset))):
            image = dataset[index][0]
            for name in names:
                if name not in failed:
                    attempt(name, run_timed, models[name], image)
        for index in range(len(dataset)):
            image, target = dataset[index]
            turn = index % len(names)
            for name in names[turn:] + names[:turn]:
                if name not in failed:
                    attempt(name, measure, name, index, image, target)
    results = {name: attempt(name, summary, name) for name in names if name not in failed}
    return {name: failed.get(name, results.get(name)) for name in names}


def run_timed(entry: Timed, image) -> tuple[dict, float, float]:
    """One image through one model: ``(detections, seconds with the proposal step, seconds of
    the network alone)``; both the same for a model without external proposals."""
    model, device = entry.model, entry.device

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    proposer = model.proposal_method()
    proposes = proposer is not None
    image = image.to(device)
    with inference_autocast(device, entry.amp):
        started = clock()
        proposals = [proposer(image)] if proposes else None
        given = clock()
        output = model([image], proposals=proposals)[0] if proposes else model([image])[0]
        finished = clock()
    return output, finished - (started if proposes else given), finished - given


@dataclasses.dataclass
class CompareSettings:
    data: str
    budget_s: float
    overrides: dict[str, list[str]]  # each method's key=value settings (method_settings)
    threads: int
    device: str = "auto"

    def key(self, name: str) -> dict:
        """What a stored row of method ``name`` records of its settings (it is reused for the same
        :meth:`training_key` and budget)."""
        return {"data": self.data, "budget_s": self.budget_s, "overrides": list(self.overrides[name])}

    def training_key(self, name: str) -> dict:
        """What a run folder of method ``name`` must have been started with to be resumed (a larger
        budget continues it; other data or settings would silently keep the old ones)."""
        return training_key(self.data, self.overrides[name])


def training_key(data: str, overrides: list[str]) -> dict:
    """The data and settings a run is started with, as comparable JSON (settings parsed, so their
    order and spacing do not matter, and a later one of a key wins)."""
    return json.loads(json.dumps({"data": data, "settings": parse_overrides(list(overrides))}))


def started_with(run_dir: Path) -> dict | None:
    """The :func:`training_key` a method's run folder was started with: from its
    ``SETTINGS_FILE``, or from its stored row (folders of older versions); ``None`` if neither."""
    recorded, row = run_dir / SETTINGS_FILE, run_dir / ROW_FILE
    source = recorded if recorded.is_file() else row if row.is_file() else None
    if source is None:
        return None
    try:
        record = json.loads(source.read_text())
        record = record if source == recorded else record["settings"]
        # {"data", "settings"}; a row (and the first version of the file) holds {"data", "overrides"}
        return record if "settings" in record else training_key(record["data"], record["overrides"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{source}: unreadable ({error}); move {run_dir} away or choose another --out"
        ) from error


def compare(
    data: str = "synthetic",
    methods: str | list[str] | None = None,
    budget_s: float = 300.0,
    out: str | Path = "runs/compare",
    set: list[str] | None = None,  # noqa: A002 - the name of the command-line flag
    threads: int = 0,
    device: str = "auto",
    progress: Callable[[str], None] = print,
) -> dict:
    """Train every method in ``methods`` (default: :func:`compared_methods`) on ``data`` for
    ``budget_s`` seconds each, score and time each on the test split, and write the tables and
    figures into ``out`` (see the module docstring). ``set``: ``key=value`` settings given to
    every method (e.g. ``data.train_split=trainval``), or, written ``METHOD:key=value``, to one
    (``METHOD:model.window_size=227``); ``threads``: torch threads for training
    and timing (0: the usable cores); ``device``: where the models are timed (``auto``: a GPU
    when there is one). Returns the report (``compare.json``'s content)."""
    names = parse_methods(methods)
    if budget_s <= 0:
        raise ValueError(f"the budget must be a positive number of seconds, got {budget_s}")
    out, overrides = Path(out), list(set or [])
    common, own = method_settings(overrides, names)
    per_method = {name: common + own[name] for name in names}
    settings = CompareSettings(data, float(budget_s), per_method, threads or usable_cpus(), device)
    configs = {name: resolve_run_config(name, None, per_method[name], data={"spec": data}) for name in names}
    train_set, test_set = check_data(configs)
    torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    rows, figures, trained = train_methods(names, settings, out, test_set, progress)
    if trained:
        score_trained(trained, rows, figures, settings, out, test_set, progress)
    rows = [{key: value for key, value in rows[name].items() if key != "reused"} for name in names]
    add_speedups(rows)
    first = configs[names[0]].data
    report = {
        "data": data, "train_split": first.train_split, "test_split": first.test_split,
        "train_images": len(train_set), "test_images": len(test_set), "classes": list(test_set.classes),
        "budget_s": settings.budget_s, "overrides": overrides, "method_settings": own,
        "threads": settings.threads, "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_line(settings.threads), "rows": rows,
    }  # fmt: skip
    write_comparison(report, {name: figures[name] for name in names if name in figures}, test_set, out)
    return report


def train_methods(
    names: list[str], settings: CompareSettings, out: Path, test_set, progress
) -> tuple[dict, dict, dict]:
    """Train (or resume, or find the stored row of) each method in turn: ``(rows, figures'
    detections of reused rows, predictors of trained runs)``, by method name. A method that fails
    gets its row with the error, and the others go on."""
    rows, figures, trained = {}, {}, {}
    for position, name in enumerate(names, 1):
        progress(f"[{position}/{len(names)}] {name}: {settings.budget_s:.0f} s of training in {out / name}")
        started = time.perf_counter()
        try:
            rows[name], predictor, outputs = prepare_method(name, settings, out / name, test_set)
        except Exception as error:  # noqa: BLE001 - one method's failure must not stop the others
            rows[name], predictor, outputs = failed_row(name, error, out / name), None, None
        if predictor is not None:
            trained[name] = predictor
            line = f"{rows[name]['training_s']:.0f} s of training, {rows[name]['steps']} steps"
        elif outputs is not None:
            figures[name] = outputs
            line = f"{row_line(rows[name])}; stored row reused, nothing trained"
        else:
            line = rows[name]["error"]
        seconds = time.perf_counter() - started
        progress(f"[{position}/{len(names)}] {name}: {rows[name]['status']} ({line}; {seconds:.0f} s)")
    return rows, figures, trained


def score_trained(
    trained: dict, rows: dict, figures: dict, settings: CompareSettings, out: Path, test_set, progress
):
    """One pass over the test images, every trained method on each image in turn (:func:`score_and_time_together`);
    each method's row completed (and stored) or replaced by its error, its detections added to ``figures``."""
    progress(
        f"scoring and timing {', '.join(trained)} on the {len(test_set)} test images, every method on each in turn"
    )
    started = time.perf_counter()
    timed = {
        name: Timed(predictor.model, predictor.device, predictor.amp) for name, predictor in trained.items()
    }
    for name, result in score_and_time_together(timed, test_set).items():
        if isinstance(result, Exception):
            rows[name] = failed_row(name, result, out / name)
        else:
            figures[name] = result.pop("figure_outputs")
            rows[name] = {**rows[name], "status": "done", **result, "settings": settings.key(name)}
            (out / name / ROW_FILE).write_text(json.dumps(rows[name], indent=1) + "\n")
        progress(f"{name}: {rows[name]['status']} ({row_line(rows[name])})")
    progress(f"scored and timed in {time.perf_counter() - started:.0f} s")


def write_comparison(report: dict, figures: dict, test_set, out: Path) -> None:
    """``compare.json``, ``compare.md`` and the two figures into ``out``."""
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "compare.md").write_text(markdown(report))
    if any(row["status"] == "done" for row in report["rows"]):
        plot_speed_vs_map(report["rows"], out / "speed_vs_map.png")
    if figures:
        detections_figure(figures, test_set, out / "detections.png")


def prepare_method(
    name: str, settings: CompareSettings, run_dir: Path, test_set
) -> tuple[dict, object, list | None]:
    """Train (or resume) one method, or find its stored row. Returns ``(row, predictor, None)``
    for a trained run, whose row the scoring and timing pass completes, or ``(stored row, None,
    the first test images' detections)`` for a row reused as it is."""
    before, wanted, stored = started_with(run_dir), settings.training_key(name), run_dir / ROW_FILE
    if before == wanted and stored.is_file():  # the same run; its row is reused for the same budget
        row = json.loads(stored.read_text())
        if row.get("settings", {}).get("budget_s") == settings.budget_s:
            predictor = Predictor.from_checkpoint(run_dir, device=settings.device)
            return {**row, "reused": True}, None, first_outputs(predictor, test_set)
    if (run_dir / "last.pt").is_file() or any(run_dir.glob("*/last.pt")):
        if before is not None and before != wanted:
            raise ValueError(
                f"{run_dir} holds a run started with other data or settings ({json.dumps(before)}); "
                "move it away or choose another --out"
            )
        budget = {"train": {"time_budget_s": settings.budget_s}}
        result = train_run(run_config_for_resume(run_dir, budget), resume=run_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SETTINGS_FILE).write_text(json.dumps(wanted) + "\n")
        run_config = resolve_run_config(
            name,
            None,
            list(settings.overrides[name]),
            data={"spec": settings.data},
            train={"time_budget_s": settings.budget_s, "out_dir": str(run_dir)},
        )
        result = train_run(run_config)
    if not result.finished:
        raise RuntimeError(f"training stopped ({result.status}); run detlab compare again to continue it")
    seconds, steps = training_seconds(run_dir)
    predictor = Predictor.from_checkpoint(run_dir, device=settings.device)
    predictor.model.stop_disk_caches()  # timed as it computes, not as it reads its own cache
    row = {
        "method": name,
        "status": "trained",
        "run_dir": str(run_dir),
        "training_s": seconds,
        "steps": steps,
        "parameters": sum(parameter.numel() for parameter in predictor.model.parameters()),
    }
    return row, predictor, None


def failed_row(name: str, error: Exception, run_dir: Path) -> dict:
    """A method's row for its ``error``; the traceback goes to ``run_dir/compare_error.txt``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "compare_error.txt").write_text("".join(traceback.format_exception(error)))
    return {"method": name, "status": "failed", "error": f"{type(error).__name__}: {error}"}


def row_line(row: dict) -> str:
    if row["status"] != "done":
        return row["error"]
    return f"mAP@0.5 {row['mAP50_voc07']:.3f}, mAP {row['AP_coco']:.3f}, {row['s_per_image_with_proposals']:.3f} s an image"


def first_outputs(predictor, test_set) -> list:
    """The first test images' detections, run as the scoring pass runs a model (:func:`run_timed`)."""
    entry = Timed(predictor.model, predictor.device, predictor.amp)
    with torch.no_grad():
        return [
            on_cpu(run_timed(entry, test_set[index][0])[0])
            for index in range(min(FIGURE_IMAGES, len(test_set)))
        ]


def add_speedups(rows: list[dict]) -> None:
    """Each finished row's speed-up against the test time (with proposals and without) of the
    slowest method of the lecture's table among them (R-CNN's, as the lecture compares them)."""
    done = [
        row
        for row in rows
        if row["status"] == "done" and row["method"] in MODELS and MODELS[row["method"]].lecture
    ]
    reference = max(done, key=lambda row: MODELS[row["method"]].lecture.seconds_per_image, default=None)
    for row in rows:
        if reference is None or row["status"] != "done":
            continue
        for kind in ("with", "without"):
            key = f"s_per_image_{kind}_proposals"
            row[f"speedup_{kind}_proposals"] = reference[key] / max(row[key], 1e-9)


def machine_line(threads: int) -> str:
    return f"{platform.platform()}, {threads} torch thread(s), torch {torch.__version__}"


def method_label(name: str, report: dict) -> str:
    """A method's name in the tables, with its own settings, if any: ``R-CNN (`model.window_size=227`)``."""
    own = report.get("method_settings", {}).get(name)
    return label(name) + (f" (`{' '.join(own)}`)" if own else "")


def markdown(report: dict) -> str:
    rows = report["rows"]
    done = [row for row in rows if row["status"] == "done"]
    lines = [
        f"# detlab compare on {report['data']}",
        "",
        f"Train split `{report['train_split']}` ({report['train_images']} images), test split `{report['test_split']}` "
        f"({report['test_images']} images); {report['budget_s']:.0f} s of training budget a method; "
        f"{report['threads']} thread(s); {report['date']}; {report['machine']}."
        + (
            f" Settings (one written `METHOD:key=value` is for that method only): `{' '.join(report['overrides'])}`."
            if report["overrides"]
            else ""
        ),
        "",
        "| method | training s | test s/image without proposals | with proposals | speed-up vs R-CNN (with) | "
        "mAP@0.5 (VOC07) | mAP@[.5:.95] | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = method_label(row["method"], report)
        if row["status"] != "done":
            lines.append(f"| {label} | failed: {row['error'].splitlines()[0][:200]} | | | | | | |")
            continue
        speedup = f"{row['speedup_with_proposals']:.1f}x" if "speedup_with_proposals" in row else "-"
        without = (
            f"{row['s_per_image_without_proposals']:.4f}"
            if row["external_proposals"]
            else "(no proposal step)"
        )
        lines.append(
            f"| {label} | {row['training_s']:.0f} | {without} | {row['s_per_image_with_proposals']:.4f} | "
            f"{speedup} | {row['mAP50_voc07']:.3f} | {row['AP_coco']:.3f} | {row['parameters'] / 1e6:.2f} M |"
        )
    if done:
        classes = report["classes"]
        lines += [
            "",
            "Per-class AP@0.5 (VOC07):",
            "",
            "| method | " + " | ".join(classes) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for row in done:
            values = [row["per_class_AP50_voc07"].get(name, float("nan")) for name in classes]
            lines.append(
                f"| {method_label(row['method'], report)} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
            )
        lines += dap_table(done, report)
    lines += ["", lecture_line()]
    return "\n".join(lines) + "\n"


def dap_table(rows: list[dict], report: dict) -> list[str]:
    """Markdown lines: each method's TIDE dAP (the AP50 gained if that error alone were fixed)."""
    kinds = [*ERROR_TYPES, *SPECIAL_ERROR_TYPES]
    lines = [
        "",
        "Where the AP is lost: TIDE's dAP at IoU 0.5, the AP gained if that error alone were fixed "
        "(Cls: wrong class, Loc: poor box, Dupe: duplicate, Bkg: on background, Miss: object not found; "
        "`detlab eval --errors` shows one model's in full):",
        "",
        "| method | " + " | ".join(TIDE_NAMES[kind] for kind in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for row in rows:
        values = [row.get("dap", {}).get(kind, float("nan")) for kind in kinds]
        lines.append(
            f"| {method_label(row['method'], report)} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
        )
    return lines


def lecture_line() -> str:
    """The lecture's own table in one sentence, from the methods' :class:`~detlab.models.contract.LectureRow`:
    seconds a test image with proposals (speed-ups against the slowest) and mAP."""
    rows = sorted(
        ((MODELS[name].label, MODELS[name].lecture) for name in MODELS if MODELS[name].lecture),
        key=lambda item: -item[1].seconds_per_image,
    )
    if not rows:
        return ""
    slowest = rows[0][1].seconds_per_image
    times = ", ".join(f"{name} {row.seconds_per_image:g} s" for name, row in rows)
    speedups = " and ".join(f"{slowest / row.seconds_per_image:g}x" for _, row in rows[1:])
    maps = " / ".join(f"{row.mean_ap:g}" for _, row in rows)
    return (
        f"The lecture (VOC 2007, VGG-16, a GPU): {times} a test image with proposals"
        + (f" ({speedups})" if speedups else "")
        + f"; mAP {maps}."
    )


def plot_speed_vs_map(rows: list[dict], path: Path) -> Path:
    """mAP@0.5 against test seconds an image (with proposals) on a log axis, one point a method."""
    import matplotlib.ticker

    plt = plotting.pyplot()

    figure, axes = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row["status"] != "done":
            continue
        axes.scatter(row["s_per_image_with_proposals"], row["mAP50_voc07"], s=40)
        axes.annotate(
            label(row["method"]),
            (row["s_per_image_with_proposals"], row["mAP50_voc07"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("test time per image with proposals (s, log scale)")
    axes.set_ylabel("mAP@0.5 (VOC07)")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def detections_figure(figures: dict[str, list], test_set, path: Path, top: int = 5) -> Path:
    """One row a method (its name on the row's first image), one column a test image: the
    method's ``top`` best detections on it (scores are not comparable across methods: R-CNN's are
    SVM margins)."""
    tiles = []
    for name, outputs in figures.items():
        for index, output in enumerate(outputs):
            best = output["scores"].argsort(descending=True)[:top]
            tile = draw_detections(
                test_set[index][0],
                output["boxes"][best],
                output["labels"][best],
                list(test_set.classes),
                output["scores"][best],
            )
            if index == 0:
                picture = Image.fromarray(tile.permute(1, 2, 0).numpy())
                ImageDraw.Draw(picture).rectangle([0, 0, 8 + 7 * len(label(name)), 16], fill="white")
                ImageDraw.Draw(picture).text((4, 3), label(name), fill="black")
                tile = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
            tiles.append(tile)
    return save_grid(tiles, path, tile=240, columns=max(len(outputs) for outputs in figures.values()))
