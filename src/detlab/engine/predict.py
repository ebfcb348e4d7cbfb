"""Inference from a checkpoint of any method: :class:`Predictor`, folder prediction to files, and
scoring a checkpoint on a data set (``detlab eval --checkpoint``).

A prediction is the detector contract's ``{"boxes": Tensor[K, 4] (x1, y1, x2, y2) absolute pixels
of the image as given, "scores": Tensor[K], "labels": int64 Tensor[K] in 1..C}`` (a one-object
model: its top-k guesses), plus ``"keypoints": Tensor[K, J, 2]`` for a keypoint model. :func:`predict_files`
writes, per image, an annotated copy, and for all of them ``detections.json`` (COCO results:
``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, with ``"keypoints": [x1, y1, v1,
...]`` for a keypoint model; image ids ``1..N`` in sorted file order, category ids = labels) and
``images.json`` (``[{"id", "file_name", "width", "height"}]``: which file each id is).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, SequentialSampler

from detlab import config as config_io
from detlab.config import RunConfig
from detlab.data.coco import coco_category_ids
from detlab.data.drawing import draw_detections
from detlab.data.errors import ProblemLog
from detlab.data.images import save_image, to_image_tensor
from detlab.data.loading import load_dataset
from detlab.data.validation import check_image_files, check_images
from detlab.engine import checkpoint as checkpoints
from detlab.engine.precision import full_precision, inference_autocast
from detlab.engine.run import build_model, run_config_from_dict
from detlab.engine.sampling import make_loader, resolve_device
from detlab.engine.train import evaluate
from detlab.eval.coco import COCOEvaluator
from detlab.eval.evaluate import PROTOCOLS, dataset_image_paths
from detlab.eval.report import build_report
from detlab.eval.results import coco_result_entries
from detlab.eval.voc import VOCEvaluator
from detlab.image_files import IMAGE_SUFFIXES, open_rgb
from detlab.models.contract import Inside, View
from detlab.models.inference import TestTimeCombination, TiledDetector, fold_batchnorm
from detlab.progress import progress_bar
from detlab.tiles import Tiling

OUTPUT_KEYS = ("boxes", "scores", "labels", "keypoints")
# the score a drawn or served detection needs when the checkpoint recorded no best-F1 confidence
DEFAULT_SCORE_THRESHOLD = 0.5
ON_BAD_HINT = "fix or remove them, or leave them out with --on-bad skip (on_bad='skip')"


def model_from_checkpoint(path: str | Path, overrides: list[str] | None = None):
    """``(model in eval mode, classes, run config)`` from a checkpoint of any method;
    ``overrides``: ``model.FIELD=VALUE`` changes to the stored config (test-time settings)."""
    return model_from_stored(checkpoints.load_checkpoint(path), path, overrides)


def model_from_stored(checkpoint: dict, path: str | Path, overrides: list[str] | None = None):
    """:func:`model_from_checkpoint` of a checkpoint already loaded from ``path``."""
    source = checkpoints.resolve_checkpoint_path(path)
    with checkpoints.put_to_use(checkpoint, source):
        run_config = run_config_from_dict(checkpoint["config"])
    if overrides:
        run_config = config_io.merge(run_config, config_io.parse_overrides(overrides))
    with checkpoints.put_to_use(checkpoint, source):
        classes = list(checkpoint["classes"])
        model = build_model(run_config, len(classes), weights_from_checkpoint=True)
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise checkpoints.CheckpointError(
                source,
                f"the weights do not fit the {run_config.model_name} the config describes "
                f"({str(error).splitlines()[0]}); --set may change test-time settings only",
            ) from None
    return model.eval(), classes, run_config


class Predictor:
    """A trained model with its class names, ready for inference (eval mode, no gradients) on
    ``device`` (``auto``: the GPU when there is one), under float16 autocast on a GPU unless the
    run config turned ``train.amp`` off; ``tiling``: run it on tiles of each image
    (:class:`~detlab.models.inference.TiledDetector`), ``None``: on the whole image."""

    def __init__(
        self,
        model: torch.nn.Module,
        classes: list[str],
        run_config: RunConfig | None = None,
        device: torch.device | str = "auto",
        tiling: Tiling | None = None,
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.run_config = run_config
        self.amp = run_config.train.amp if run_config is not None else True
        # the score threshold with the best mean F1 on the run's validation images, when the
        # checkpoint's evaluation recorded one: what ``score_threshold="auto"`` means
        self.best_confidence: float | None = None
        self.tiling = tiling

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        overrides: list[str] | None = None,
        fold: bool = True,
        ensemble: Iterable[str | Path] = (),
        test_scales: Iterable[float] = (),
        tiling: Tiling | None = None,
    ) -> Predictor:
        """Load a checkpoint safely (see :func:`detlab.engine.checkpoint.load_checkpoint`);
        ``path`` may be a ``.pt`` file, ``RUN/best``, ``RUN/last`` or a run folder. ``fold``: fold
        BatchNorm into the convolutions (faster; the outputs change in the last float digits, so
        scoring a checkpoint keeps the unfolded model and the training run's numbers exactly).

        Test-time combinations (:class:`detlab.models.inference.TestTimeCombination`):
        ``ensemble``: more checkpoints of detectors of the same classes, whose detections are
        merged with this one's; ``test_scales``: input size factors (e.g. ``0.8, 1, 1.2``) each
        model runs at, detections merged. ``overrides`` apply to every checkpoint. ``tiling``:
        tiled inference (:class:`detlab.tiles.Tiling`), over the combination when there is one."""
        stored = checkpoints.load_checkpoint(path)
        model, classes, run_config = model_from_stored(stored, path, overrides)
        models = [model]
        for other in ensemble:
            other_model, other_classes, _ = model_from_checkpoint(other, overrides)
            if other_classes != classes:
                raise ValueError(
                    f"{other} detects {other_classes}, {path} detects {classes}: an ensemble needs the "
                    "same classes in the same order"
                )
            models.append(other_model)
        if fold:
            for member in models:
                fold_batchnorm(member)
        scales = tuple(test_scales)
        if len(models) > 1 or scales:
            model = TestTimeCombination(models, scales or (1.0,)).eval()
        if tiling is not None:
            TiledDetector(model, tiling)  # refuses a model that is not a detector now, not at the first image
        predictor = cls(model, classes, run_config, device, tiling)
        predictor.best_confidence = (stored.get("metrics") or {}).get("best_f1_confidence")
        return predictor

    def detector(self, tiling: Tiling | None = None) -> torch.nn.Module:
        """The module that runs: the model, or the model on tiles (``tiling``, else the predictor's own)."""
        tiling = tiling or self.tiling
        return TiledDetector(self.model, tiling).eval() if tiling is not None else self.model

    @torch.no_grad()
    def predict(self, image, score_threshold: float | None = None, tiling: Tiling | None = None):
        """What the model finds in one image: a path, a PIL image, an ``H x W x 3`` uint8 (RGB)
        numpy array or a ``Tensor[3, H, W]`` in [0, 1]; or, given a list of them, in each
        (:meth:`predict_batch`).

        Returns ``{"boxes", "scores", "labels", "names"}`` (and ``"keypoints"`` for a keypoint
        model) on the CPU, best first, with ``scores >= score_threshold`` (``None``: all; R-CNN's
        scores are SVM margins, which may be negative); ``names`` are the class names of ``labels``.
        ``tiling``: tiles for this call (default: the predictor's own ``tiling``).
        """
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, score_threshold, tiling)
        return self.predict_batch([image], score_threshold, tiling)[0]

    @torch.no_grad()
    def predict_batch(
        self, images: Iterable, score_threshold: float | None = None, tiling: Tiling | None = None
    ) -> list[dict]:
        """:meth:`predict` of each image, in order. Images of one size go through the model in one
        forward pass; images of different sizes in one pass a size, since padding an image to a
        larger one's size would change its detections near the padding. So a batch finds what one
        image at a time finds, up to float rounding."""
        tensors = [to_image_tensor(image).to(self.device) for image in images]
        model = self.detector(tiling)
        outputs: list[dict] = [{} for _ in tensors]
        for indices in same_size_groups(tensors):
            with inference_autocast(self.device, self.amp):
                found = model([tensors[index] for index in indices])
            for index, output in zip(indices, found):
                outputs[index] = output
        return [self.select(output, score_threshold) for output in outputs]

    def select(self, output: dict, score_threshold: float | None = None) -> dict:
        """One image's raw model output (eval mode) -> what :meth:`predict` returns: the detections
        scoring at least ``score_threshold``, best first, on the CPU, with their class ``names``.
        For callers that run the model themselves (``detlab serve``'s look-inside view)."""
        keep = output["scores"] >= (-math.inf if score_threshold is None else score_threshold)
        order = output["scores"][keep].argsort(descending=True)
        result = {key: full_precision(output[key][keep][order].cpu()) for key in OUTPUT_KEYS if key in output}
        result["names"] = [self.class_name(label) for label in result["labels"].tolist()]
        return result

    def class_name(self, label: int) -> str:
        return self.classes[label - 1] if 1 <= label <= len(self.classes) else f"class {label}"

    @torch.no_grad()
    def look_inside(self, image) -> tuple[dict, Inside]:
        """What the model finds in one image (as :meth:`predict`: every detection, best first) and
        what happened inside: an :class:`~detlab.models.contract.Inside`, the stages of the test
        pass with their milliseconds and the views ``detlab serve``'s page draws
        (:func:`detlab.plot_views` draws them too). The detections are the model's own: looking
        changes nothing."""
        output, inside = self.model.look_inside(to_image_tensor(image).to(self.device), self.class_name)
        return self.select(output), inside

    @torch.no_grad()
    def assignment(self, image, target: dict) -> list[View]:
        """How training hands ``target``'s objects (``{"boxes": Tensor[N, 4] (x1, y1, x2, y2)
        pixels of image, "labels": int64 Tensor[N] in 1..C}``, e.g. ``dataset[i][1]``) to this
        model's outputs: views of the cells, anchors or points that learn each object (``[]`` for
        a method without such an assignment to show)."""
        on_device = {
            key: value.to(self.device) for key, value in target.items() if key in ("boxes", "labels")
        }
        return self.model.assignment(to_image_tensor(image).to(self.device), on_device, self.class_name)

    @torch.no_grad()
    def window_scores(self, image, scale: float = 1.0, convolutional: bool = True) -> torch.Tensor:
        """A sliding-window classifier's object class probabilities ``Tensor[C, h, w]`` at every
        window position of ``image`` resized by ``scale``: in one pass of the network with its FC
        layers as convolutions, or (``convolutional=False``) one crop at a time."""
        scores = self.model.window_scores(to_image_tensor(image).to(self.device), scale, convolutional)
        if scores is None:
            raise ValueError(
                f"{type(self.model).__name__} is not a sliding-window classifier: it has no window scores"
            )
        return scores.cpu()


def same_size_groups(images: list) -> list[list[int]]:
    """Indices of ``images`` (``[..., H, W]`` arrays or tensors) grouped by size, in order of each
    size's first image."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    return list(groups.values())


def find_images(path: str | Path) -> list[Path]:
    """An image file, or the image files of a folder (recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such image file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def detections_by_image(predictor: Predictor, records, min_score: float = 0.05) -> dict[str, dict]:
    """``{image path: {"boxes", "scores", "labels"}}``: ``predictor``'s detections scoring at least
    ``min_score`` on every record's image, in the stored image's pixels (numpy arrays)."""
    found = {}
    for record in progress_bar(records, desc="detections", unit="image"):
        prediction = predictor.predict(record.image_path, score_threshold=min_score)
        found[str(record.image_path)] = {
            key: prediction[key].numpy() for key in ("boxes", "scores", "labels")
        }
    return found


def score_threshold_for(predictor, value: float | str) -> float:
    """``value`` as a number: ``"auto"`` is ``predictor.best_confidence`` (a :class:`Predictor`'s or an
    ONNX one's: the score threshold with the best mean F1 on the run's validation images), or
    :data:`DEFAULT_SCORE_THRESHOLD` with a warning for a checkpoint that recorded none."""
    if value != "auto":
        return float(value)
    if predictor.best_confidence is None:
        warnings.warn(
            f"the model records no best-F1 confidence (its run evaluated no detections, or predates "
            f"it); --score-threshold auto uses {DEFAULT_SCORE_THRESHOLD}",
            stacklevel=2,
        )
        return DEFAULT_SCORE_THRESHOLD
    return float(predictor.best_confidence)


def result_entries(prediction: dict, image_id: int) -> list[dict]:
    """One image's prediction as COCO result entries (2 decimals; keypoints as COCO triples)."""
    entries = coco_result_entries(
        prediction["boxes"], prediction["scores"], prediction["labels"], image_id, decimals=2
    )
    if "keypoints" in prediction:
        for entry, points in zip(entries, prediction["keypoints"].tolist()):
            entry["keypoints"] = [round(value, 2) for x, y in points for value in (x, y, 2)]
    return entries


class ImageFiles(Dataset):
    """The pixels of image files, ``H x W x 3`` uint8 numpy arrays (RGB), for a loader to decode
    ahead of the model (in worker processes, when it has them)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(open_rgb(self.files[index]))


def predict_files(
    predictor: Predictor,
    source: str | Path,
    out_dir: str | Path,
    draw_threshold: float | str = DEFAULT_SCORE_THRESHOLD,
    batch_size: int | None = None,
    num_workers: int | None = None,
    on_bad: str = "error",
) -> dict:
    """Predict every image of ``source`` (a file or folder); write annotated images (boxes with
    score >= ``draw_threshold``, ``"auto"``: :func:`score_threshold_for`, and their keypoints), ``detections.json`` (all detections) and
    ``images.json``. ``predictor``: a :class:`Predictor` or an ONNX one
    (:class:`detlab.export.runtime.OnnxPredictor`); both take the decoded pixels.
    The images are decoded by a loader (``num_workers`` processes; ``None``: chosen by device,
    :func:`~detlab.engine.sampling.loader_workers`) and predicted ``batch_size`` at a time
    (``None``: the run's training batch size on a GPU; one on a CPU, where a batch gains little;
    images of different sizes in one batch go through the model a size at a time, see
    :meth:`Predictor.predict_batch`).
    ``on_bad``: an image that cannot be decoded stops prediction naming it (``"error"``), or is
    left out (``"skip"``: every image is checked first, :func:`usable_images`).
    Returns ``{"images": N, "detections": M, "out_dir": str, "draw_threshold": the score drawn
    from, "skipped": [{"path", "reason"}]}``.
    """
    source, out_dir = Path(source), Path(out_dir)
    files, skipped = usable_images(find_images(source), on_bad)
    if out_dir.resolve() == (source if source.is_dir() else source.parent).resolve():
        raise ValueError(
            f"--out {out_dir} is the input folder: the annotated images would overwrite the originals; "
            "choose another folder"
        )
    draw_threshold = score_threshold_for(predictor, draw_threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(predictor.device)
    if batch_size is None:
        run_config = predictor.run_config
        batch_size = run_config.train.batch_size if device.type == "cuda" and run_config is not None else 1
    loader = make_loader(
        ImageFiles(files), batch_size, SequentialSampler(files), num_workers, collate=list, device=device
    )
    decoded = (item for batch in loader for item in zip(batch, predictor.predict_batch(batch)))
    images_info, detections = [], []
    progress = progress_bar(decoded, total=len(files), desc="predict", unit="image")
    for image_id, (path, (pixels, found)) in enumerate(zip(files, progress), start=1):
        prediction = {
            key: torch.as_tensor(value) if key != "names" else value for key, value in found.items()
        }
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        detections.extend(result_entries(prediction, image_id))
        relative = path.relative_to(source) if source.is_dir() else Path(path.name)
        images_info.append(
            {"id": image_id, "file_name": str(relative), "width": image.shape[-1], "height": image.shape[-2]}
        )
        shown = prediction["scores"] >= draw_threshold
        annotated = draw_detections(
            image,
            prediction["boxes"][shown],
            prediction["labels"][shown],
            predictor.classes,
            prediction["scores"][shown],
            keypoints=prediction["keypoints"][shown] if "keypoints" in prediction else None,
        )
        target = out_dir / annotated_name(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(annotated, target)
    (out_dir / "detections.json").write_text(json.dumps(detections))
    (out_dir / "images.json").write_text(json.dumps(images_info, indent=1))
    return {
        "images": len(files),
        "detections": len(detections),
        "out_dir": str(out_dir),
        "draw_threshold": draw_threshold,
        "skipped": skipped,
    }


def usable_images(files: list[Path], on_bad: str) -> tuple[list[Path], list[dict]]:
    """``(the files to predict, [{"path", "reason"}] for those left out)``. ``on_bad="skip"``: every
    file is decoded once first (:func:`~detlab.data.validation.check_image_files`, cached across
    runs) and the unreadable ones are left out; ``"error"``: all of them, unchecked (an unreadable
    one stops prediction when its turn comes, naming it), so a folder is not decoded twice."""
    if on_bad == "error":
        return files, []
    usable, report = check_image_files(files, on_bad, hint=ON_BAD_HINT)
    return usable, [{"path": path, "reason": reason} for path, reason in report.bad]


def annotated_name(relative: Path) -> Path:
    """Where an input image's annotated copy goes, relative to the output folder: the same name
    for a JPEG or PNG file; another image file keeps its name and gains ``.png`` (``a.bmp`` ->
    ``a.bmp.png``), so two inputs that differ only in their suffix never share an output."""
    if relative.suffix.lower() in (".jpg", ".jpeg", ".png"):
        return relative
    return relative.with_name(relative.name + ".png")


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    split: str | None = None,
    device: str = "auto",
    overrides: list[str] | None = None,
    ensemble: Iterable[str | Path] = (),
    test_scales: Iterable[float] = (),
    **scoring,
):
    """Score a checkpoint of any method (loaded unfolded, so the numbers are the training run's)
    on the data set ``data`` (a spec) at ``split`` (default: the run's test split), its first
    ``scoring["max_images"]`` (0: all), read from ``scoring["data_root"]`` for a synthetic set:
    :func:`evaluate_predictor` with the rest of ``scoring`` (``protocol``, ``iou_threshold``,
    ``max_detections``). ``ensemble``, ``test_scales`` and ``scoring["tiling"]`` (a
    :class:`~detlab.tiles.Tiling`): test-time combinations and tiled inference (see
    :meth:`Predictor.from_checkpoint`). ``scoring["on_bad"]``: the bad-input policy
    (``data.on_bad``: ``"error"``, the default, or ``"skip"``; see :func:`evaluation_split`), whose
    skipped images the report lists under ``"skipped"``. Returns ``(report dict, result)``."""
    ensemble, test_scales, tiling = list(ensemble), list(test_scales), scoring.pop("tiling", None)
    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        overrides=overrides,
        fold=False,
        ensemble=ensemble,
        test_scales=test_scales,
        tiling=tiling,
    )
    source = {"checkpoint": str(checkpoint)}
    if ensemble or test_scales:
        source.update({"ensemble": [str(path) for path in ensemble], "test_scales": list(test_scales)})
    if tiling is not None:
        source["tiling"] = dataclasses.asdict(tiling)
    dataset, skipped = evaluation_split(
        predictor,
        data,
        split,
        scoring.pop("data_root", None),
        scoring.pop("max_images", 0),
        scoring.pop("on_bad", "error"),
    )
    report, result = evaluate_predictor(predictor, dataset, source=source, **scoring)
    report["skipped"] = skipped
    return report, result


def evaluate_predictor(
    predictor: Predictor,
    dataset,
    protocol: str = "coco",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    source: dict | None = None,
):
    """Score ``predictor`` on ``dataset`` (a :class:`~detlab.data.schema.DetectionDataset` of the
    predictor's classes) through :func:`detlab.engine.train.evaluate`; returns ``(report dict,
    result)``. Detectors are scored with ``protocol`` (``coco``, ``voc07``, ``voc``), other models
    by their own evaluator (:meth:`~detlab.models.contract.Detector.make_evaluator`: ILSVRC
    localization error, PCK). ``source``: what the report says was scored."""
    kind = predictor.model.evaluation
    if kind == "detection":
        evaluator = detection_evaluator(predictor.classes, protocol, iou_threshold, max_detections)
    else:
        evaluator = predictor.model.make_evaluator(predictor.classes)
    loader = make_loader(
        dataset, predictor.run_config.train.batch_size, SequentialSampler(dataset), device=predictor.device
    )
    result = evaluate(predictor.detector(), loader, evaluator, predictor.device, predictor.amp)
    settings = {"protocol": protocol if kind == "detection" else kind, **(source or {})}
    if kind != "detection":
        return metrics_report(kind, result, len(dataset), settings, dataset.name), result
    problem = result.problem  # the evaluator's, scored: the report adds what it was
    problem.category_ids = coco_category_ids(dataset)
    problem.image_paths = dataset_image_paths(dataset)
    problem.source = {
        "ground_truth": dataset.name,
        "results": f"{settings.get('checkpoint', 'the model')} (detector outputs)",
    }
    settings.update(
        {"iou_threshold": iou_threshold} if protocol != "coco" else {"max_detections": max_detections}
    )
    return build_report(result, problem, settings), result


def evaluation_split(
    predictor: Predictor, data: str, split: str | None, data_root: str | None, max_images: int, on_bad: str
):
    """``(the images predictor is scored on, [{"path", "line", "reason"}] of those skipped)``:
    ``data`` at ``split`` (default: the run's test split; the run's own data root when ``data`` is
    the run's data), its first ``max_images`` (0: all), whose classes must be the model's, in the
    same order. Every image is checked before scoring, as training checks its data
    (:func:`~detlab.data.validation.check_images`, cached): under ``on_bad="error"`` a bad
    annotation or image stops it naming every bad file; under ``"skip"`` they are left out."""
    stored = predictor.run_config.data
    root = data_root or (stored.root if data == stored.spec else None)
    split = split or stored.test_split
    problems = ProblemLog(on_bad)
    dataset = load_dataset(
        data,
        split,
        root=root,
        on_bad=on_bad,
        problems=problems,
        num_synthetic=stored.synthetic_images,
        seed=stored.synthetic_seed,
        allow_outside_root=stored.allow_outside_root,
    )
    if list(dataset.classes) != predictor.classes:
        raise ValueError(
            f"{data} [{split}] has classes {dataset.classes}, the checkpoint was trained on {predictor.classes}; "
            "evaluate on data with the same classes"
        )
    if max_images > 0:
        dataset = dataset.subset(range(min(max_images, len(dataset))))
    dataset, check = check_images(dataset, on_bad, hint=ON_BAD_HINT)
    skipped = [
        {"path": error.path, "line": error.line, "reason": error.problem} for error in problems.skipped_errors
    ]
    return dataset, skipped + [{"path": path, "line": None, "reason": reason} for path, reason in check.bad]


def detection_evaluator(classes: list[str], protocol: str, iou_threshold: float, max_detections: int):
    """The evaluator of ``protocol`` (``coco``, ``voc07``, ``voc``) for ``classes``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if protocol == "coco":
        return COCOEvaluator(classes, max_detections=max_detections)
    return VOCEvaluator(classes, iou_threshold, use_11_point=protocol == "voc07")


def metrics_report(kind: str, metrics: dict, num_images: int, settings: dict, source: str) -> dict:
    """A report (``detlab.eval.report`` layout) for a model scored by its own evaluator's metrics."""
    return {
        "protocol": kind,
        "settings": settings,
        "num_images": num_images,
        "num_gt": num_images,
        "num_detections": num_images,
        "metrics": dict(metrics),
        "per_class": [],
        "curves": {},
        "curve_note": "",
        "source": {"ground_truth": source, "results": settings["checkpoint"]},
    }
