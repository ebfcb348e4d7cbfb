"""Inference from a checkpoint: :class:`Predictor`, folder prediction to files, data set prediction.

Output formats: a prediction is the detector contract's ``{"boxes": Tensor[K, 4] (x1, y1, x2,
y2) absolute pixels of the image as given, "scores": Tensor[K], "labels": int64 Tensor[K] in
1..C}``. :func:`predict_files` writes, per image, an annotated copy, and for all of them
``detections.json`` (COCO results: ``[{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}]``, image ids ``1..N`` in sorted file order, category ids = labels) and
``images.json`` (``[{"id", "file_name", "width", "height"}]``: which file each id is).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from detlab.engine import checkpoint as checkpoints
from detlab.engine.distributed import select_device
from detlab.engine.run import RunConfig, build_model, run_config_from_dict

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Predictor:
    """A trained detector with its class names, ready for inference (eval mode, no gradients)."""

    def __init__(
        self, model: torch.nn.Module, classes: list[str], run_config: RunConfig | None = None, device="cpu"
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.run_config = run_config

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Predictor:
        """Load a checkpoint safely (see :func:`detlab.engine.checkpoint.load_checkpoint`);
        ``path`` may be a ``.pt`` file, ``RUN/best``, ``RUN/last`` or a run folder."""
        checkpoint = checkpoints.load_checkpoint(path)
        run_config = run_config_from_dict(checkpoint["config"])
        classes = list(checkpoint["classes"])
        model = build_model(run_config, len(classes))
        model.load_state_dict(checkpoint["model"])
        return cls(model, classes, run_config, select_device(device))

    @torch.no_grad()
    def predict(self, image: Tensor | str | Path, score_threshold: float = 0.0) -> dict:
        """Detections for one image (a ``Tensor[3, H, W]`` in [0, 1] or an image file path).

        Returns ``{"boxes", "scores", "labels", "names"}`` on the CPU, best first, with
        ``scores >= score_threshold``; ``names`` are the class names of ``labels``.
        """
        return self.predict_batch([image], score_threshold)[0]

    @torch.no_grad()
    def predict_batch(
        self, images: Iterable[Tensor | str | Path], score_threshold: float = 0.0
    ) -> list[dict]:
        from detlab.data.images import load_image

        tensors = [load_image(image) if isinstance(image, str | Path) else image for image in images]
        outputs = self.model([image.to(self.device) for image in tensors])
        results = []
        for output in outputs:
            keep = output["scores"] >= score_threshold
            order = output["scores"][keep].argsort(descending=True)
            result = {key: output[key][keep][order].cpu() for key in ("boxes", "scores", "labels")}
            result["names"] = [self.class_name(label) for label in result["labels"].tolist()]
            results.append(result)
        return results

    def class_name(self, label: int) -> str:
        return self.classes[label - 1] if 1 <= label <= len(self.classes) else f"class {label}"


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


def coco_results(prediction: dict, image_id: int) -> list[dict]:
    """One image's prediction as COCO result entries (``bbox`` is ``[x, y, width, height]``)."""
    entries = []
    for box, score, label in zip(
        prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["labels"].tolist()
    ):
        x1, y1, x2, y2 = box
        entries.append(
            {
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(score), 5),
            }
        )
    return entries


def predict_files(
    predictor: Predictor, source: str | Path, out_dir: str | Path, draw_threshold: float = 0.5
) -> dict:
    """Predict every image of ``source`` (a file or folder); write annotated images (boxes with
    score >= ``draw_threshold``), ``detections.json`` (all detections) and ``images.json``.

    Returns ``{"images": N, "detections": M, "out_dir": str}``.
    """
    from detlab.data.images import load_image, save_image
    from detlab.visualize import draw_detections

    source, out_dir = Path(source), Path(out_dir)
    files = find_images(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_info, detections = [], []
    for image_id, path in enumerate(tqdm(files, desc="predict", unit="image", dynamic_ncols=True), start=1):
        image = load_image(path)
        prediction = predictor.predict(image)
        detections.extend(coco_results(prediction, image_id))
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
        )
        target = out_dir / relative.with_suffix(
            ".png" if path.suffix.lower() not in (".jpg", ".jpeg") else ".jpg"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(annotated, target)
    (out_dir / "detections.json").write_text(json.dumps(detections))
    (out_dir / "images.json").write_text(json.dumps(images_info, indent=1))
    return {"images": len(files), "detections": len(detections), "out_dir": str(out_dir)}


@torch.no_grad()
def predict_dataset(predictor: Predictor, dataset, batch_size: int = 1) -> tuple[list[dict], list[dict]]:
    """``(predictions, targets)`` over a data set (images at their stored size), in data set order,
    ready for an evaluator's ``update(predictions, targets)``."""
    predictions, targets = [], []
    indices = range(len(dataset))
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", unit="batch", dynamic_ncols=True):
        batch = [dataset[index] for index in indices[start : start + batch_size]]
        outputs = predictor.predict_batch([image for image, _ in batch])
        for output, (_, target) in zip(outputs, batch):
            predictions.append({key: output[key] for key in ("boxes", "scores", "labels")})
            targets.append(target)
    return predictions, targets


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    split: str | None = "test",
    protocol: str = "coco",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    device: str = "auto",
):
    """Predict with ``checkpoint`` over the data set ``data`` (a spec) at ``split``, then score the
    detections with :func:`detlab.eval.evaluate.evaluate_detections`; returns its
    ``(report, result)``. The data set's classes must be the checkpoint's, in the same order."""
    from detlab.data import load_dataset
    from detlab.eval.evaluate import evaluate_detections

    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    dataset = load_dataset(data, split)
    if list(dataset.classes) != predictor.classes:
        raise ValueError(
            f"{data} [{split}] has classes {dataset.classes}, the checkpoint was trained on {predictor.classes}; "
            "evaluate on data with the same classes"
        )
    predictions, _ = predict_dataset(predictor, dataset)
    return evaluate_detections(
        dataset, predictions, protocol=protocol, iou_threshold=iou_threshold, max_detections=max_detections
    )
