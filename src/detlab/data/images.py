"""Image decoding to the shared contract: ``float32 Tensor[3, H, W]``, RGB, values in [0, 1].

Files are decoded by :mod:`detlab.image_files` (RGB, EXIF orientation applied; shared with the
ONNX runtime, which needs no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from detlab.image_files import image_size, open_rgb, to_rgb  # noqa: F401 - image_size re-exported


def _rgb_to_tensor(image: Image.Image) -> Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | Path) -> Tensor:
    """``path`` -> ``float32 Tensor[3, H, W]`` RGB in [0, 1]."""
    return _rgb_to_tensor(open_rgb(path))


IMAGE_FORMS = (
    "a path (str or Path); a PIL image; a numpy array H x W x 3 (RGB), H x W x 4 (RGBA), H x W or "
    "H x W x 1 (greyscale), uint8 in 0..255 or float in [0, 1]; or a torch Tensor[3, H, W] "
    "(also [4, H, W] RGBA, [1, H, W] or [H, W] greyscale), uint8 or float in [0, 1]"
)


def _describe(image) -> str:
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    kind = f"{type(image).__module__}.{type(image).__qualname__}".removeprefix("builtins.")
    return (
        kind
        + (f" of shape {tuple(shape)}" if shape is not None else "")
        + (f" and dtype {dtype}" if dtype else "")
    )


def _pil_to_tensor(image: Image.Image) -> Tensor:
    if 0 in image.size:
        raise ValueError(f"empty image: the PIL image is {image.width}x{image.height} pixels")
    try:
        # Same steps as a file: an image straight from Image.open still holds its stored pixels and
        # orientation tag; exif_transpose drops the tag, so an already upright image is left as is.
        image.load()
        return _rgb_to_tensor(to_rgb(ImageOps.exif_transpose(image)))
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot decode the PIL image ({error})") from None


def _channels_first_to_tensor(image: Tensor, described: str) -> Tensor:
    """``[C, H, W]`` (C in 1, 3, 4) uint8 or float -> ``float32 [3, H, W]`` in [0, 1]."""
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"empty image: got {described}")
    if image.dtype == torch.uint8:
        if image.shape[0] == 4:
            # Through PIL, so the result is the pixels an RGBA file with these values gives.
            rgba = Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), mode="RGBA")
            return _rgb_to_tensor(to_rgb(rgba)).to(image.device)
        image = image.float().div_(255.0)
    elif image.is_floating_point():
        image = torch.nan_to_num(image.float(), nan=0.0, posinf=1.0, neginf=0.0)
        low, high = torch.aminmax(image)
        # Slight excursions (interpolation overshoot) are clipped; values in 0..255 or normalised
        # with a mean and std are a mistake that would silently give a white or black image.
        if low < -0.5 or high > 1.5:
            raise ValueError(
                f"float image values must lie in [0, 1], got {described} with values in "
                f"[{low.item():.3g}, {high.item():.3g}]: pass uint8 for 0..255, or divide by 255; "
                "do not normalise with a mean and std first"
            )
        image = image.clamp(0.0, 1.0)
    else:
        raise ValueError(f"expected uint8 (0..255) or float (0..1) pixel values, got {described}")
    if image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    if image.shape[0] == 4:
        # Transparent pixels become white, as for RGBA files.
        alpha = image[3:]
        return image[:3] * alpha + (1.0 - alpha)
    return image.contiguous()


def to_image_tensor(image) -> Tensor:
    """Any image a user holds -> ``float32 Tensor[3, H, W]``, RGB, values in [0, 1] (a new tensor).

    Accepted forms:

    - a path (``str`` or ``Path``): decoded with :func:`load_image`;
    - a ``PIL.Image.Image`` of any mode: converted as files are (greyscale, palette, 16-bit ->
      RGB; RGBA composited on white; EXIF orientation applied);
    - a numpy array, channels last as PIL gives it: ``H x W x 3`` RGB, ``H x W x 4`` RGBA
      (composited on white), ``H x W`` or ``H x W x 1`` greyscale; uint8 in 0..255 or float in
      [0, 1]; any strides (``bgr[..., ::-1]`` is fine). Numpy arrays are taken as RGB: convert
      OpenCV's BGR first, ``cv2.cvtColor(image, cv2.COLOR_BGR2RGB)`` or ``image[..., ::-1]``;
    - a torch ``Tensor[3, H, W]``, channels first (``[1, H, W]`` / ``[H, W]`` greyscale,
      ``[4, H, W]`` RGBA), uint8 or float in [0, 1]; it stays on its device. A tensor is never
      taken as channels last, whatever its shape.

    Float values a little outside [0, 1] are clipped and NaN becomes 0. Raises ``ValueError``
    naming the accepted forms for anything else, for float values far outside [0, 1] and for
    empty images (a zero side).
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _pil_to_tensor(image)
    described = _describe(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            hint = ""
            if image.ndim == 3 and image.shape[0] in (1, 3, 4):
                hint = " (numpy arrays are channels last; for a channels-first array pass torch.from_numpy(array))"
            raise ValueError(f"cannot use a {described} as an image{hint}; accepted: {IMAGE_FORMS}")
        if image.dtype != np.uint8:
            if not np.issubdtype(image.dtype, np.floating):
                raise ValueError(f"expected uint8 (0..255) or float (0..1) pixel values, got {described}")
            image = image.astype(np.float32)  # also native byte order, which torch needs
        # A copy when needed: torch wants a writable, contiguous array (np.asarray(PIL image) is read-only).
        image = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)
        return _channels_first_to_tensor(image, described)
    if isinstance(image, Tensor):
        image = image.detach()
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            hint = ""
            if image.ndim == 3 and image.shape[2] in (1, 3, 4):
                hint = " (tensors are channels first: for H x W x 3 pass image.permute(2, 0, 1))"
            elif image.ndim == 4 and image.shape[0] == 1:
                hint = " (a batch of one: pass image[0])"
            raise ValueError(f"cannot use a {described} as an image{hint}; accepted: {IMAGE_FORMS}")
        return _channels_first_to_tensor(image, described)
    raise ValueError(f"cannot use a {described} as an image; accepted: {IMAGE_FORMS}")


def warp_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``Tensor[3, H, W] -> Tensor[3, size[0], size[1]]``: bilinear, antialiased, aspect ratio not
    kept. The one warp the data layer (``resize_to``) and the fixed-input models use, so a model
    sees its training images (warped in advance) and its test images alike."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(
        image[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False
    )[0]


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``Tensor[3, H, W] -> Tensor[3, size[0], size[1]]``, bilinear without antialiasing: the resize
    of the detectors' image batcher, so training images resized in advance (``resize_to`` a longer
    side) and test images resized by the model look alike."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(
        image[None], size=tuple(size), mode="bilinear", align_corners=False
    )[0]


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` image scaled by ``scale``, rounded: the detectors' batcher
    and the data layer's longer-side ``resize_to`` round alike, so an image resized in advance is
    not resized again."""
    return round(height * scale), round(width * scale)


def save_image(image: Tensor, path: str | Path) -> None:
    """Write a ``Tensor[3, H, W]`` in [0, 1] (or uint8) to ``path``; format from the suffix."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)
