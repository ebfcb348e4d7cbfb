"""Synthetic keypoint data: articulated stick figures on textured backgrounds, with their joints.

The DeepPose task (Toshev & Szegedy 2014) in miniature: each image shows one figure whose K = 7
joints (head, neck, pelvis, hands, feet) are the targets. Limbs have fixed colours (left arm red,
right arm blue, left leg yellow, right leg magenta), so left and right are distinguishable, as in
real pose data where the body's appearance names the side. The pose (limb angles, size, position,
lean) is random; the background is a noisy gradient with clutter lines.

Deterministic: sample ``i`` depends only on ``(seed, i)``. :func:`ensure_synthetic_pose` writes
the set in COCO's keypoint format (PNG images, one ``<split>.json`` a split), so it is read like
any COCO keypoint data; ``load_dataset("synthetic-pose", split)`` generates it on first use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from detlab.data.synthetic import SPLIT_FRACTIONS

JOINTS = ("head", "neck", "pelvis", "left_hand", "right_hand", "left_foot", "right_foot")
# (joint a, joint b, colour): the segments drawn between joints.
LIMBS = (
    (1, 2, (235, 235, 235)),
    (1, 3, (230, 40, 40)),
    (1, 4, (40, 80, 235)),
    (2, 5, (240, 220, 40)),
    (2, 6, (220, 50, 220)),
)
HEAD_COLOUR = (40, 200, 80)
CLASS_NAME = "figure"
POSE_GENERATOR_VERSION = 1


def _pose(rng: np.random.Generator, size: int) -> np.ndarray:
    """``float[K, 2]`` joint positions in pixels for one random pose that fits in the image."""
    height = rng.uniform(0.45, 0.85) * size  # head to feet, roughly
    torso = 0.32 * height
    limb = 0.4 * height
    lean = rng.uniform(-0.35, 0.35)
    neck = np.array([0.0, 0.0])
    pelvis = neck + torso * np.array([math.sin(lean), math.cos(lean)])
    head = neck - 0.14 * height * np.array([math.sin(lean), math.cos(lean)])
    # Arms hang from the neck, legs from the pelvis; angles from straight down (y grows downwards).
    left_arm, right_arm = lean + rng.uniform(0.3, 2.6), lean - rng.uniform(0.3, 2.6)
    left_leg, right_leg = lean + rng.uniform(0.05, 0.8), lean - rng.uniform(0.05, 0.8)

    def end(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    joints = np.stack(
        [
            head,
            neck,
            pelvis,
            end(neck, left_arm, limb * rng.uniform(0.7, 1.0)),
            end(neck, right_arm, limb * rng.uniform(0.7, 1.0)),
            end(pelvis, left_leg, limb * rng.uniform(0.8, 1.1)),
            end(pelvis, right_leg, limb * rng.uniform(0.8, 1.1)),
        ]
    )
    low, high = joints.min(axis=0), joints.max(axis=0)
    margin = 0.06 * size
    span = np.maximum(high - low, 1.0)
    # Shrink if it does not fit, then place it at a random position inside the margins.
    fit = min(1.0, float(((size - 2 * margin) / span).min()))
    joints = (joints - low) * fit
    span = span * fit
    # max(): the axis that set ``fit`` has no room left, and rounding may make its range negative.
    room = np.maximum(size - margin - span, margin)
    offset = np.array([rng.uniform(margin, room[0]), rng.uniform(margin, room[1])])
    return joints + offset


def render_figure(seed: int, index: int, size: int = 96) -> tuple[Image.Image, np.ndarray]:
    """One image and its joints ``float[K, 2]`` as ``(x, y)`` pixels."""
    rng = np.random.default_rng([seed, index, 7])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colours = rng.uniform(0, 255, (2, 3))
    t = np.clip(0.5 + rng.uniform(-1, 1) * (x - 0.5) + rng.uniform(-1, 1) * (y - 0.5), 0, 1)[..., None]
    array = colours[0] * (1 - t) + colours[1] * t + rng.normal(0, 10, (size, size, 3))
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # clutter lines a regressor must learn to ignore
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    joints = _pose(rng, size)
    width = max(2, round(size / 32))
    for a, b, colour in LIMBS:
        draw.line([tuple(joints[a]), tuple(joints[b])], fill=colour, width=width)
    radius = 0.05 * size
    hx, hy = joints[0]
    draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=HEAD_COLOUR)
    return image, joints


def make_keypoint_set(num_images: int, size: int = 96, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(images uint8 Tensor[N, 3, size, size], keypoints float32 Tensor[N, K, 2])``, pixels."""
    images, keypoints = [], []
    for index in range(num_images):
        image, joints = render_figure(seed, index, size)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        keypoints.append(torch.from_numpy(joints.astype(np.float32)))
    return torch.stack(images), torch.stack(keypoints)


def _coco_split(ids: list[int], joints: dict[int, np.ndarray], size: int) -> dict:
    images, annotations = [], []
    for index in ids:
        points = joints[index]
        low, high = points.min(axis=0), points.max(axis=0)
        margin = 0.05 * size  # the box around the figure: its joints and a little room for the head
        x1, y1 = np.maximum(low - margin, 0.0)
        x2, y2 = np.minimum(high + margin, float(size))
        images.append({"id": index + 1, "file_name": f"pose_{index:06d}.png", "width": size, "height": size})
        annotations.append(
            {
                "id": index + 1,
                "image_id": index + 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float((x2 - x1) * (y2 - y1)),
                "keypoints": [value for x, y in points.tolist() for value in (x, y, 2)],
                "num_keypoints": len(points),
            }
        )
    categories = [{"id": 1, "name": CLASS_NAME, "keypoints": list(JOINTS)}]
    return {"images": images, "annotations": annotations, "categories": categories}


def ensure_synthetic_pose(out_dir: str | Path, num_images: int = 3000, seed: int = 0, size: int = 96) -> Path:
    """Write the stick-figure set under ``out_dir`` (``images/pose_NNNNNN.png`` and COCO files
    ``train.json``, ``val.json``, ``test.json``, ``trainval.json``: 70/15/15% by index) unless the
    same set is already there; returns ``out_dir``."""
    out_dir = Path(out_dir)
    marker = out_dir / "synthetic.json"
    wanted = {
        "num_images": num_images,
        "seed": seed,
        "size": size,
        "generator_version": POSE_GENERATOR_VERSION,
    }
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out_dir
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    joints = {}
    for index in range(num_images):
        image, joints[index] = render_figure(seed, index, size)
        image.save(out_dir / "images" / f"pose_{index:06d}.png")
    num_train = int(round(num_images * SPLIT_FRACTIONS["train"]))
    num_val = int(round(num_images * SPLIT_FRACTIONS["val"]))
    splits = {
        "train": range(num_train),
        "val": range(num_train, num_train + num_val),
        "test": range(num_train + num_val, num_images),
        "trainval": range(num_train + num_val),
    }
    for split, ids in splits.items():
        (out_dir / f"{split}.json").write_text(json.dumps(_coco_split(list(ids), joints, size)))
    marker.write_text(json.dumps(wanted, indent=2))
    return out_dir
