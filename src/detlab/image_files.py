"""Image files to RGB PIL images, without torch: the decoding the data layer and the ONNX runtime
share. Greyscale, RGBA, palette and 16-bit files become RGB; EXIF orientation is applied, so the
pixels are the way a person sees the photo (and annotation tools draw boxes on that view)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detlab.errors import BadInputError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# The image files detlab reads, by suffix (compared lower-case: ``photo.JPG`` is an image too).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Transparent pixels become white, not black, as viewers show them.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image with EXIF orientation applied.

    Raises :class:`BadInputError` naming the file for missing, truncated, corrupt or non-image files.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise BadInputError(path, f"too many pixels to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(path, f"corrupt or truncated image ({error})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF rotation applied) without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "image file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(path, f"unreadable image ({error})") from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return width, height
