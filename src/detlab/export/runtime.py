"""Inference from an exported ``.onnx`` file with onnxruntime, numpy and Pillow only (no torch).

The file holds the network (:mod:`detlab.export.onnx_export` writes it) and, in its metadata under
the key ``detlab``, what happens around it: the class names, how an image becomes the network's
input (resize, normalise, pad) and how the raw outputs become detections (score threshold,
class-wise NMS, top-k). This module is that pre- and post-processing, written again in numpy so a
deployed detector needs neither torch nor detlab's training code:

    import detlab
    predictor = detlab.load("model.onnx")        # an OnnxPredictor
    detections = predictor.predict("photo.jpg")  # {"boxes", "scores", "labels", "names"} as numpy

The file is verified before onnxruntime reads it: the metadata holds the SHA-256 of the file's
bytes (:func:`file_digest`), so a changed byte anywhere is refused with one line naming the file.
Files of format 1 (before the digest) load unverified.

Shape letters: H x W image size, P proposals, A anchor points, C classes, S window or grid side.
Boxes are ``(x1, y1, x2, y2)`` pixels of the image as given, as everywhere in detlab.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from detlab import box_arrays, tiles
from detlab.errors import BadInputError
from detlab.image_files import open_rgb, to_rgb
from detlab.tiles import Tiling

METADATA_KEY = "detlab"
# 2: the metadata holds the file's SHA-256 (DIGEST_FIELD), and the batch axis is free (the outputs
# of a one-stage graph gain it; a two-stage graph's outputs name each proposal's image,
# ``proposal_image``; ``image_size`` is ``[B, 2]``); 1: neither, one image a run
FORMAT_VERSION = 2
DIGEST_FIELD = "file_sha256"
DIGEST_PLACEHOLDER = "0" * 64  # stands for the digest while it is computed (the same length)
DIGEST_IN_FILE = re.compile(rb'"' + DIGEST_FIELD.encode() + rb'": "([0-9a-f]{64})"')
# The metadata every file holds, and the type of each entry.
METADATA_FIELDS = {
    "format_version": int,
    "method": str,
    "kind": str,
    "classes": list,
    "preprocess": dict,
    "postprocess": dict,
}


class OnnxPredictor:
    """An exported detector ready for inference: the same ``predict`` as
    :class:`detlab.engine.predict.Predictor`, with numpy arrays instead of tensors. ``tiling``:
    tiled inference (:mod:`detlab.tiles`, the same rule as the PyTorch path)."""

    def __init__(self, path: str | Path, threads: int = 0, tiling: Tiling | None = None):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        data = self.path.read_bytes()
        verified = verify_file(data, self.path)
        options = onnxruntime.SessionOptions()
        # no busy-waiting between runs: the CPU goes back to the rest of the process (and a server's
        # other requests) at once
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for every bad file
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise BadInputError(self.path, f"not a loadable ONNX model ({first_line})") from None
        self.metadata = read_metadata(self.session, self.path, verified)
        self.method = self.metadata["method"]
        self.kind = self.metadata["kind"]
        self.classes = list(self.metadata["classes"])
        self.best_confidence = self.metadata.get("best_confidence")  # see Predictor.best_confidence
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.batched = self.metadata.get("format_version", 1) >= 2  # older files take one image a run
        self.last_timings: dict[str, float] = {}
        self.device = "cpu"  # onnxruntime's CPU provider
        self.run_config = None  # the training run's settings stay in the checkpoint
        self.tiling = self.checked_tiling(tiling)

    def checked_tiling(self, tiling: Tiling | None) -> Tiling | None:
        if tiling is not None and self.kind == "window":
            raise ValueError(
                f"{self.path}: a window classifier's top-k guesses cannot be tiled; tiled inference merges detectors' boxes"
            )
        return tiling

    def predict(self, image, score_threshold: float | None = None, tiling: Tiling | None = None):
        """What the model finds in one image (a path, a PIL image or an ``H x W x 3`` uint8 RGB
        array): ``{"boxes": float32[K, 4], "scores": float32[K], "labels": int64[K] (1..C),
        "names": [str]}``, best first, ``scores >= score_threshold`` (``None``: all); given a list
        of images, a list of those (:meth:`predict_batch`). ``tiling``: tiles for this call
        (default: the predictor's own)."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, score_threshold, tiling)
        return self.predict_batch([image], score_threshold, tiling)[0]

    def predict_batch(
        self, images, score_threshold: float | None = None, tiling: Tiling | None = None
    ) -> list[dict]:
        """:meth:`predict` of every image, in order: images of one size in one run of the network
        (as :meth:`detlab.engine.predict.Predictor.predict_batch` does; a file exported before the
        batch axis was free runs one image at a time)."""
        arrays = [image_array(image) for image in images]
        tiling = self.checked_tiling(tiling) or self.tiling
        if tiling is not None:
            found = [self.tiled(array, tiling) for array in arrays]
        else:
            found = self.detect(arrays, len(arrays))
        return [self.finish(result, score_threshold) for result in found]

    def detect(self, arrays: list[np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
        """Images ``float32[3, H, W]`` -> each one's detections (unsorted, every score), at most
        ``batch_size`` images of one size a run."""
        found: list[dict] = [{} for _ in arrays]
        timings = dict.fromkeys(("preprocess_ms", "network_ms", "postprocess_ms"), 0.0)
        chunk = batch_size if self.batched else 1
        for group in same_size_groups(arrays):
            for start in range(0, len(group), chunk):
                indices = group[start : start + chunk]
                started = time.perf_counter()
                inputs, frames = preprocess_batch(
                    [arrays[index] for index in indices], self.metadata["preprocess"]
                )
                prepared = time.perf_counter()
                outputs = self.run(inputs)
                ran = time.perf_counter()
                for position, (index, frame) in enumerate(zip(indices, frames)):
                    found[index] = POSTPROCESS[self.kind](
                        image_outputs(outputs, position, self.kind), frame, self.metadata["postprocess"]
                    )
                finished = time.perf_counter()
                for key, spent in zip(timings, (prepared - started, ran - prepared, finished - ran)):
                    timings[key] += 1000 * spent
        self.last_timings = timings
        return found

    def tiled(self, pixels: np.ndarray, tiling: Tiling) -> dict[str, np.ndarray]:
        """One image ``float32[3, H, W]`` on tiles (and whole, with ``tiling.full_image``), the
        passes merged by :func:`detlab.tiles.merge_tiles`, as the PyTorch path merges them."""
        height, width = pixels.shape[-2:]
        windows = tiles.tile_windows(height, width, tiling.size, tiling.overlap)
        crops = [pixels[:, y1:y2, x1:x2] for x1, y1, x2, y2 in windows.tolist()]
        outputs = self.detect(crops, tiling.batch_size)
        if len(windows) == 1:
            return outputs[0]
        whole = self.detect([pixels], 1)[0] if tiling.full_image else None
        settings = self.metadata["postprocess"]
        boxes, scores, labels = tiles.merge_tiles(
            windows,
            (height, width),
            [(found["boxes"], found["scores"], found["labels"]) for found in outputs],
            (whole["boxes"], whole["scores"], whole["labels"]) if whole is not None else None,
            tiling,
            settings["nms_threshold"],
            settings["detections_per_image"],
        )
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def finish(self, result: dict[str, np.ndarray], score_threshold: float | None) -> dict:
        """Detections -> what :meth:`predict` returns: thresholded, best first, with names."""
        if score_threshold is not None:
            keep = result["scores"] >= score_threshold
            result = {key: value[keep] for key, value in result.items()}
        order = np.argsort(-result["scores"], kind="stable")
        result = {key: value[order] for key, value in result.items()}
        result["names"] = [self.class_name(int(label)) for label in result["labels"]]
        return result

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The network alone: named inputs (as :func:`preprocess_batch` makes them) -> named raw outputs."""
        if not self.batched and "image_size" in inputs:  # format 1: the one image's size, [2]
            inputs = {**inputs, "image_size": inputs["image_size"][0]}
        names = [node.name for node in self.session.get_outputs()]
        values = self.session.run(names, {name: inputs[name] for name in self.input_names})
        return dict(zip(names, values))

    def class_name(self, label: int) -> str:
        return self.classes[label - 1] if 1 <= label <= len(self.classes) else f"class {label}"


def file_digest(data: bytes, digest: str) -> str:
    """The SHA-256 (hex) of an exported file's bytes ``data``, in which its metadata holds
    ``digest``: computed with the placeholder in the digest's place, as the exporter computed it
    before writing the digest in (the same length, so the protobuf around it is unchanged)."""
    stored = digest_entry(digest)
    return hashlib.sha256(data.replace(stored, digest_entry(DIGEST_PLACEHOLDER), 1)).hexdigest()


def digest_entry(digest: str) -> bytes:
    """The digest as it stands in the file: inside the metadata's JSON, which the file keeps as it is."""
    return f'"{DIGEST_FIELD}": "{digest}"'.encode()


def verify_file(data: bytes, path: Path) -> bool:
    """Check the digest of an exported file's bytes ``data``, before any parser reads them: True when
    it matches, False when the file holds no digest (format 1, or damage to the digest itself, which
    :func:`read_metadata` tells apart), :class:`BadInputError` naming ``path`` otherwise."""
    found = DIGEST_IN_FILE.findall(data)
    if not found:
        return False
    if len(found) > 1 or not hmac.compare_digest(file_digest(data, found[0].decode()), found[0].decode()):
        raise BadInputError(
            path,
            "damaged: its bytes do not match the SHA-256 digest saved in it (changed bytes or an incomplete "
            "copy); use another copy or export it again",
        )
    return True


def read_metadata(session, path: Path, verified: bool) -> dict:
    """The detlab metadata of a loaded file, every entry :func:`OnnxPredictor` reads checked (a file
    without a digest is not verified, so damage may have changed it)."""
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if stored is None:
        raise BadInputError(path, "an ONNX file without detlab's metadata; export it with `detlab export`")
    try:
        metadata = json.loads(stored)
    except ValueError:
        raise BadInputError(path, "damaged: its detlab metadata is not JSON") from None
    if not isinstance(metadata, dict):
        raise BadInputError(path, f"damaged: its detlab metadata is a {type(metadata).__name__}")
    version = metadata.get("format_version", 0)
    if type(version) is int and version > FORMAT_VERSION:
        raise BadInputError(path, f"written by a newer detlab (format {version})")
    legacy = type(version) is int and version < 2  # exported before files held their digest
    if not verified and (DIGEST_FIELD in metadata or not legacy):
        raise BadInputError(path, "damaged: its digest is missing or unreadable")
    wrong = [name for name, kind in METADATA_FIELDS.items() if type(metadata.get(name)) is not kind]
    if not wrong and metadata["kind"] not in POSTPROCESS:
        wrong = ["kind"]
    if not wrong and not all(type(name) is str for name in metadata["classes"]):
        wrong = ["classes"]
    if wrong:
        raise BadInputError(
            path, f"damaged or not written by detlab: its metadata's {wrong[0]!r} is unusable"
        )
    return metadata


def image_outputs(outputs: dict[str, np.ndarray], position: int, kind: str) -> dict[str, np.ndarray]:
    """The raw outputs of the ``position``-th image of a batch run, without the batch axis."""
    if kind == "two_stage":  # the rows of the image's proposals (a format-1 file: all rows)
        rows = outputs["proposal_image"] == position if "proposal_image" in outputs else slice(None)
        return {"probabilities": outputs["probabilities"][rows], "boxes": outputs["boxes"][rows]}
    if kind == "one_stage" and outputs["scores"].ndim == 2:  # a format-1 file: no batch axis
        return outputs
    return {name: value[position] for name, value in outputs.items()}


def same_size_groups(images: list) -> list[list[int]]:
    """Indices of ``images`` (``[..., H, W]`` arrays) grouped by size, in order of each size's
    first image: a batch of one size needs no padding, so it finds what one image at a time finds."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    return list(groups.values())


def image_array(image) -> np.ndarray:
    """A path, PIL image or ``H x W x 3`` uint8 RGB array -> ``float32[3, H, W]`` in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = open_rgb(image)
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise ValueError(
            f"expected a path, a PIL image or an H x W x 3 uint8 RGB array, got an array of shape "
            f"{array.shape} and dtype {array.dtype}"
        )
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


# --- pre-processing: the image batcher and the window warp of detlab.models.transform, in numpy ---


def resize_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """``float32[out_size, in_size]``: the row weights of a bilinear resize along one axis, as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` computes it (with
    ``antialias``: its triangle filter widened by the scale when shrinking, as Pillow's)."""
    scale = np.float32(in_size / out_size)  # torch's arithmetic is float32: follow it to the last bit
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
    if antialias:
        support = max(scale, 1.0)
        for row, centre in enumerate(centres):
            low = max(int(centre - support + 0.5), 0)
            high = min(int(centre + support + 0.5), in_size)
            taps = np.maximum(0.0, 1.0 - np.abs((np.arange(low, high) - centre + 0.5) / support))
            weights[row, low:high] = taps / taps.sum()
        return weights.astype(np.float32)
    source = np.maximum(centres - np.float32(0.5), np.float32(0.0))
    first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    fraction = source - first
    rows = np.arange(out_size)
    np.add.at(weights, (rows, first), 1.0 - fraction)
    np.add.at(weights, (rows, second), fraction)
    return weights.astype(np.float32)


def resize(image: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """``float32[3, H, W] -> float32[3, size[0], size[1]]`` (bilinear, see :func:`resize_weights`)."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    rows = resize_weights(height, size[0], antialias)
    columns = resize_weights(width, size[1], antialias)
    return np.ascontiguousarray(np.matmul(np.matmul(rows, image), columns.T), dtype=np.float32)


def preprocess(image: np.ndarray, settings: dict) -> tuple[dict[str, np.ndarray], dict]:
    """``float32[3, H, W]`` in [0, 1] -> (the network's named inputs for a batch of one, the frame:
    what maps its outputs back to the image's pixels)."""
    inputs, frames = preprocess_batch([image], settings)
    return inputs, frames[0]


def preprocess_batch(images: list[np.ndarray], settings: dict) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Images ``float32[3, H, W]`` in [0, 1] -> (the network's named inputs for all of them, one
    frame an image). The detectors' batcher: each image resized (short side ``min_size``, long side
    at most ``max_size``), normalised, and padded at the bottom and right to the batch's largest
    size rounded up to a multiple of ``size_divisible``; ``image_size`` ``int64[B, 2]``: each
    resized image's size inside the padding. The fixed-window nets: each image warped to S x S."""
    mean = np.asarray(settings["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(settings["std"], dtype=np.float32)[:, None, None]
    if settings["resize"] == "warp":
        side = settings["size"]
        windows = [(resize(image, (side, side), antialias=True) - mean) / std for image in images]
        return {"images": np.stack(windows)}, [{"size": image.shape[-2:]} for image in images]
    resized, frames = [], []
    for image in images:
        height, width = image.shape[-2:]
        scale = min(settings["min_size"] / min(height, width), settings["max_size"] / max(height, width))
        new_size = (round(height * scale), round(width * scale))
        resized.append((resize(image, new_size, antialias=False) - mean) / std)
        frames.append({"size": (height, width), "scale": scale})
    divisor = settings["size_divisible"]
    padded_height = -(-max(image.shape[1] for image in resized) // divisor) * divisor
    padded_width = -(-max(image.shape[2] for image in resized) // divisor) * divisor
    batch = np.zeros((len(resized), 3, padded_height, padded_width), np.float32)
    for index, image in enumerate(resized):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    sizes = np.asarray([image.shape[1:] for image in resized], dtype=np.int64).reshape(-1, 2)
    return {"images": batch, "image_size": sizes}, frames


# --- post-processing: raw outputs -> detections in the image's pixels ---


def detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, frame: dict
) -> dict[str, np.ndarray]:
    """Boxes in the network's frame -> the image's pixels (the batcher's ``restore``)."""
    if "scale" in frame:
        boxes = box_arrays.clip(boxes / np.float32(frame["scale"]), frame["size"])
    return {
        "boxes": boxes.astype(np.float32).reshape(-1, 4),
        "scores": scores.astype(np.float32),
        "labels": labels.astype(np.int64),
    }


def thresholded_nms(boxes, scores, labels, frame, settings, min_side: float = 0.0) -> dict[str, np.ndarray]:
    """Keep scores above ``score_threshold`` (the ``pre_nms_top_k`` best of them when set) and sides
    of at least ``min_side``, class-wise NMS, the ``detections_per_image`` best."""
    keep = np.flatnonzero(scores > settings["score_threshold"])
    if settings.get("pre_nms_top_k") and keep.size > settings["pre_nms_top_k"]:
        keep = keep[np.argsort(-scores[keep], kind="stable")[: settings["pre_nms_top_k"]]]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if min_side:
        large = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
        boxes, scores, labels = boxes[large], scores[large], labels[large]
    kept = box_arrays.class_wise_nms(boxes, scores, labels, settings["nms_threshold"])[
        : settings["detections_per_image"]
    ]
    return detections(boxes[kept], scores[kept], labels[kept], frame)


def two_stage_detections(outputs: dict, frame: dict, settings: dict) -> dict[str, np.ndarray]:
    """Faster R-CNN: per proposal, class probabilities ``[P, C + 1]`` and one box per class
    ``[P, C, 4]`` (decoded, clipped) -> every (proposal, class) pair as a candidate."""
    probabilities, boxes = outputs["probabilities"], outputs["boxes"]
    num_classes = boxes.shape[1]
    scores = probabilities[:, 1:].reshape(-1)
    labels = np.tile(np.arange(1, num_classes + 1), probabilities.shape[0])
    return thresholded_nms(boxes.reshape(-1, 4), scores, labels, frame, settings, min_side=1e-2)


def one_stage_detections(outputs: dict, frame: dict, settings: dict) -> dict[str, np.ndarray]:
    """YOLO: per anchor point a box ``[A, 4]`` and class scores ``[A, C]``."""
    scores = outputs["scores"]
    labels = np.tile(np.arange(1, scores.shape[1] + 1), scores.shape[0])
    return thresholded_nms(
        np.repeat(outputs["boxes"], scores.shape[1], axis=0), scores.reshape(-1), labels, frame, settings
    )


def grid_detections(outputs: dict, frame: dict, settings: dict) -> dict[str, np.ndarray]:
    """YOLO v1: the ``[S, S, 5 B + C]`` grid -> B boxes a cell, scored class probability x box
    confidence (both clipped to [0, 1])."""
    grid = outputs["grid"]
    side, predictors = grid.shape[0], settings["boxes_per_cell"]
    values = grid[..., : 5 * predictors].reshape(side, side, predictors, 5)
    rows, columns = np.arange(side)[:, None, None], np.arange(side)[None, :, None]
    centre_x, centre_y = (columns + values[..., 0]) / side, (rows + values[..., 1]) / side
    width, height = np.clip(values[..., 2], 0, None) ** 2, np.clip(values[..., 3], 0, None) ** 2
    boxes = np.stack(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2], -1
    )
    image_height, image_width = frame["size"]
    size = np.asarray([image_width, image_height] * 2, dtype=np.float32)
    boxes = np.minimum(np.clip(boxes.reshape(-1, 4) * size, 0, None), size)
    confidence = np.clip(grid[..., 4 : 5 * predictors : 5], 0, 1)
    probabilities = np.clip(grid[..., 5 * predictors :], 0, 1)
    scores = (probabilities[:, :, None, :] * confidence[..., None]).reshape(-1, probabilities.shape[-1])
    labels = np.tile(np.arange(1, scores.shape[1] + 1), scores.shape[0])
    return thresholded_nms(
        np.repeat(boxes, scores.shape[1], axis=0), scores.reshape(-1), labels, frame, settings
    )


def window_guesses(outputs: dict, frame: dict, settings: dict) -> dict[str, np.ndarray]:
    """A window classifier with a box head: the ``top_k`` classes of the window, each with its box (class-specific
    regression) or the one box (class-agnostic), in the image's pixels."""
    probabilities, boxes = outputs["probabilities"], outputs["boxes"]
    k = min(settings["top_k"], probabilities.shape[0])
    top = np.argsort(-probabilities, kind="stable")[:k]
    chosen = (
        boxes[np.zeros(k, dtype=np.int64)] if boxes.shape[0] == 1 else boxes[top + settings["box_offset"]]
    )
    height, width = frame["size"]
    chosen = np.clip(chosen, 0, 1) * np.asarray([width, height, width, height], dtype=np.float32)
    return detections(chosen, probabilities[top], top + 1, frame)


# kind (written by the exporter) -> post-processing
POSTPROCESS = {
    "two_stage": two_stage_detections,
    "one_stage": one_stage_detections,
    "grid": grid_detections,
    "window": window_guesses,
}


def load(path: str | Path, threads: int = 0, tiling: Tiling | None = None) -> OnnxPredictor:
    """An :class:`OnnxPredictor` for an exported ``.onnx`` file (``threads``: onnxruntime's
    intra-op threads, 0 = its default; ``tiling``: tiled inference)."""
    return OnnxPredictor(path, threads, tiling)
