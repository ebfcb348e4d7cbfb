"""The built-in synthetic data set: coloured shapes on cluttered, textured backgrounds.

Why synthetic: it needs no download, any size can be made in seconds, and the truth is exact. It is
made to be hard enough that a weak detector visibly loses to a good one: objects from about 5% to
60% of the image side, random colours (so colour alone never names a class), rotations, textures
and distractor clutter in the background, overlap and partial occlusion, and 0 to 8 objects an
image. Written in VOC layout (``Annotations``, ``JPEGImages``, ``ImageSets/Main/{train,val,test,
trainval}.txt``, ``classes.txt``) so every reader and tool treats it like real data.

The small-object variant (``synthetic-small``, :func:`render_small_image`): 1024-pixel canvases
with 20 to 60 shapes 8 to 32 pixels across and 0 to 2 large ones (100 to 260 pixels), none
overlapping: resized whole to a detector's input the small ones shrink to a few pixels, so tiled
inference and training on tiles have something to show.

Deterministic: image ``i`` depends only on ``(seed, i)`` and the generator version.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detlab.progress import progress_bar

CLASSES = ("circle", "square", "triangle", "star")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
GENERATOR_VERSION = 1
SMALL_IMAGE_SIZE = 1024
SMALL_SIDES = (8.0, 32.0)  # the small shapes' diameters, pixels
LARGE_SIDES = (100.0, 260.0)


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [(angle + math.pi / 4 + k * math.pi / 2, radius) for k in range(4)]
    elif kind == "triangle":
        corners = [(angle + k * 2 * math.pi / 3, radius) for k in range(3)]
    elif kind == "star":
        corners = [(angle + k * math.pi / 5, radius if k % 2 == 0 else radius * 0.45) for k in range(10)]
    else:
        raise ValueError(kind)
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in corners]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth colour gradient with noise texture and distractor clutter (lines, blobs, dots)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, (2, 3))
    direction = rng.uniform(-1, 1, 2)
    t = np.clip(0.5 + direction[0] * (x - 0.5) + direction[1] * (y - 0.5), 0, 1)[..., None]
    array = base[0] * (1 - t) + base[1] * t
    # Low-frequency blotches, then fine grain: texture a detector must learn to ignore.
    coarse = rng.normal(0, 1, (size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    coarse = (
        np.asarray(
            Image.fromarray(((coarse * 30) + 128).clip(0, 255).astype(np.uint8)).resize(
                (size, size), Image.BILINEAR
            ),
            np.float32,
        )
        - 128
    )
    array = array + coarse * rng.uniform(0.3, 1.0) + rng.normal(0, rng.uniform(3, 12), (size, size, 3))
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 10))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, size, 2)
        # Elongated blobs: clutter, but never a circle look-alike.
        rx = rng.uniform(1, size * 0.035)
        ry = rx * rng.uniform(0.25, 0.6)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    return image


def _shape_mask(kind: str, size: int, cx: float, cy: float, radius: float, angle: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, radius, angle), fill=255)
    return mask


def render_image(
    seed: int, index: int, size: int = 256, single: bool = False
) -> tuple[Image.Image, list[dict]]:
    """One image and its objects ``[{"name", "box": [x1, y1, x2, y2], "truncated"}]``.

    Multi-object images hold 0 to 8 shapes; a shape drawn later may hide part of an earlier one,
    but never more than half of it (the box is the visible part, as VOC annotates).
    """
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    image = _background(rng, size)
    if single:
        count = 1
    else:
        count = int(rng.choice(9, p=[0.04, 0.14, 0.16, 0.16, 0.14, 0.12, 0.1, 0.08, 0.06]))
    min_side, max_side = (0.15, 0.6) if single else (0.05, 0.6)
    masks, kinds = [], []
    for _ in range(count):
        for _attempt in range(20):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            side = rng.uniform(min_side, max_side) * size
            radius = side / 2
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)  # may be cut by the border a little
            angle = float(rng.uniform(0, 2 * math.pi))
            mask = np.asarray(_shape_mask(kind, size, cx, cy, radius, angle)) > 0
            if mask.sum() < 16:
                continue
            # Reject placements that would hide more than half of an earlier shape.
            if all((m & ~mask).sum() >= 0.5 * m.sum() for m in masks):
                break
        else:
            continue
        colour = rng.integers(0, 256, 3)
        # Shapes get a texture of their own: a second colour in stripes or noise.
        pattern = np.zeros((size, size, 3), np.float32) + colour
        if rng.random() < 0.5:
            stripe_colour = rng.integers(0, 256, 3)
            period = rng.uniform(4, 14)
            yy, xx = np.mgrid[0:size, 0:size]
            phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
            pattern = np.where(((phase % 1.0) < 0.5)[..., None], pattern, stripe_colour).astype(np.float32)
        pattern += rng.normal(0, 8, pattern.shape)
        fill = Image.fromarray(np.clip(pattern, 0, 255).astype(np.uint8))
        mask_image = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
        image.paste(fill, (0, 0), mask_image)
        masks = [m & ~mask for m in masks]
        masks.append(mask)
        kinds.append(kind)
    objects = []
    for kind, mask in zip(kinds, masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        truncated = x1 == 0 or y1 == 0 or x2 == size or y2 == size
        objects.append({"name": kind, "box": [x1, y1, x2, y2], "truncated": truncated})
    return image, objects


def _place(rng: np.random.Generator, size: int, side: float, placed: list[tuple]) -> tuple | None:
    """A centre for a shape of diameter ``side`` inside the canvas, clear (by 2 pixels) of every
    placed box ``(x1, y1, x2, y2)``; ``None`` after 20 tries."""
    radius = side / 2
    for _attempt in range(20):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        box = (cx - radius - 2, cy - radius - 2, cx + radius + 2, cy + radius + 2)
        if all(box[2] <= x1 or x2 <= box[0] or box[3] <= y1 or y2 <= box[1] for x1, y1, x2, y2 in placed):
            placed.append(box)
            return float(cx), float(cy)
    return None


def _paste_shape(
    image: Image.Image, rng: np.random.Generator, kind: str, cx: float, cy: float, side: float
) -> list[int] | None:
    """Draw one shape (a noisy colour, striped when large) centred at ``(cx, cy)``, in a patch
    around it (a canvas-sized mask an object would cost the small set's 40 objects a second an
    image); returns its tight box, or ``None`` when it has under 16 pixels."""
    left, top = int(cx - side / 2) - 2, int(cy - side / 2) - 2
    patch = int(side) + 6
    angle = float(rng.uniform(0, 2 * math.pi))
    mask = np.asarray(_shape_mask(kind, patch, cx - left, cy - top, side / 2, angle)) > 0
    if mask.sum() < 16:
        return None
    colour = rng.integers(0, 256, 3)
    pattern = np.zeros((patch, patch, 3), np.float32) + colour
    if side >= LARGE_SIDES[0] and rng.random() < 0.5:
        yy, xx = np.mgrid[0:patch, 0:patch]
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / rng.uniform(6, 16)
        pattern = np.where(((phase % 1.0) < 0.5)[..., None], pattern, rng.integers(0, 256, 3)).astype(
            np.float32
        )
    pattern += rng.normal(0, 8, pattern.shape)
    fill = Image.fromarray(np.clip(pattern, 0, 255).astype(np.uint8))
    blurred = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    image.paste(fill, (left, top), blurred)
    ys, xs = np.nonzero(mask)
    return [left + int(xs.min()), top + int(ys.min()), left + int(xs.max()) + 1, top + int(ys.max()) + 1]


def render_small_image(seed: int, index: int, size: int = SMALL_IMAGE_SIZE) -> tuple[Image.Image, list[dict]]:
    """One image of the small-object set and its objects ``[{"name", "box", "truncated"}]``: 20 to
    60 shapes of diameter :data:`SMALL_SIDES` and 0 to 2 of :data:`LARGE_SIDES` (large first, so
    they find room), on the textured, cluttered background of :func:`render_image`, none
    overlapping another and none cut by the border."""
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION, 1])  # 1: not the other sets' stream
    image = _background(rng, size)
    sides = [rng.uniform(*LARGE_SIDES) for _ in range(int(rng.integers(0, 3)))]
    sides += [rng.uniform(*SMALL_SIDES) for _ in range(int(rng.integers(20, 61)))]
    placed: list[tuple] = []
    objects = []
    for side in sides:
        kind = CLASSES[int(rng.integers(len(CLASSES)))]
        centre = _place(rng, size, side, placed)
        box = _paste_shape(image, rng, kind, *centre, side) if centre is not None else None
        if box is not None:
            objects.append({"name": kind, "box": box, "truncated": False})
    return image, objects


def _annotation_xml(file_name: str, size: int, objects: list[dict]) -> str:
    parts = [
        f"<annotation>\n  <filename>{file_name}</filename>\n  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>\n"
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        parts.append(
            f"  <object><name>{obj['name']}</name><truncated>{int(obj['truncated'])}</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def make_synthetic(
    out_dir: str | Path,
    num_images: int = 600,
    seed: int = 0,
    single: bool = False,
    image_size: int = 256,
    progress: bool = False,
    small: bool = False,
) -> Path:
    """Write the synthetic set in VOC layout under ``out_dir`` and return it (``small``: the
    small-object set, :func:`render_small_image`, whose ``image_size`` is the canvas side).

    Splits: 70% train, 15% val, 15% test (``trainval`` = train + val), by image index.
    A ``synthetic.json`` records the parameters, so :func:`ensure_synthetic` can tell whether an
    existing folder is the one asked for.
    """
    out_dir = Path(out_dir)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    prefix = "small" if small else "single" if single else "synth"
    ids = [f"{prefix}_{index:06d}" for index in range(num_images)]
    indices = range(num_images)
    if progress:
        indices = progress_bar(indices, desc="synthetic images", unit="img")
    for index in indices:
        if small:
            image, objects = render_small_image(seed, index, image_size)
        else:
            image, objects = render_image(seed, index, image_size, single)
        file_name = f"{ids[index]}.jpg"
        image.save(out_dir / "JPEGImages" / file_name, quality=92)
        (out_dir / "Annotations" / f"{ids[index]}.xml").write_text(
            _annotation_xml(file_name, image_size, objects)
        )
    num_train = int(round(num_images * SPLIT_FRACTIONS["train"]))
    num_val = int(round(num_images * SPLIT_FRACTIONS["val"]))
    splits = {
        "train": ids[:num_train],
        "val": ids[num_train : num_train + num_val],
        "test": ids[num_train + num_val :],
    }
    splits["trainval"] = splits["train"] + splits["val"]
    for split, split_ids in splits.items():
        (out_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    (out_dir / "synthetic.json").write_text(
        json.dumps(_parameters(num_images, seed, single, image_size, small), indent=2)
    )
    return out_dir


def _parameters(num_images: int, seed: int, single: bool, image_size: int, small: bool) -> dict:
    """What ``synthetic.json`` records (``small`` only for the small set, so the markers of sets
    made before it existed still match)."""
    parameters = {
        "num_images": num_images,
        "seed": seed,
        "single": single,
        "image_size": image_size,
        "generator_version": GENERATOR_VERSION,
    }
    return {**parameters, "small": True} if small else parameters


def ensure_synthetic(
    out_dir: str | Path,
    num_images: int = 600,
    seed: int = 0,
    single: bool = False,
    image_size: int = 256,
    small: bool = False,
) -> Path:
    """Generate the synthetic set under ``out_dir`` unless the same one is already there."""
    out_dir = Path(out_dir)
    marker = out_dir / "synthetic.json"
    wanted = _parameters(num_images, seed, single, image_size, small)
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out_dir
    if marker.is_file():
        # A different synthetic set lives here: regenerate it whole rather than mixing the two.
        for sub in ("Annotations", "JPEGImages"):
            for path in (out_dir / sub).glob("*"):
                path.unlink()
    return make_synthetic(out_dir, num_images, seed, single, image_size, small=small)
