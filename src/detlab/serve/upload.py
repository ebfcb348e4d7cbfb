"""Uploaded bytes -> an image tensor, refusing what is not a usable image before decoding it.

Two steps, so the cheap one runs before a request waits for an inference slot:

1. :func:`check_upload` reads only the header (PIL parses it without decoding pixels): the file
   must be one of :data:`FORMATS`, have no zero side, at most ``max_pixels`` pixels (a
   decompression bomb is a small file that claims a huge image) and a sane aspect ratio.
2. :func:`decode_upload` verifies the file's structure (``Image.verify``: chunk checksums of a
   PNG, ...), decodes it and converts it like every image of detlab (``to_image_tensor``: RGB,
   EXIF orientation applied) to ``float32 Tensor[3, H, W]`` in [0, 1].

Both raise :class:`~detlab.serve.limits.RequestRefused` with the status the server answers:
415 for what is not an image (or an image format the server does not take), 413 for too many
pixels, 400 for a corrupt or truncated file or an unusable size.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from detlab.serve.limits import Limits, RequestRefused

# What browsers upload and PIL decodes safely; no vector, multi-layer or exotic formats. MPO is
# the JPEG of phone cameras that store a second (depth or preview) picture: its first frame is a
# plain JPEG.
FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF")
# Peak memory of decode_upload a pixel of the image: PIL's decoded image, its RGB conversion and
# the float32 tensor (12 bytes) that lives on through the pass. Measured 28 to 40 bytes
# (benchmarks/bench_serve_memory.py, PNG in five modes); stated with a margin.
DECODE_BYTES_PER_PIXEL = 64.0


@dataclasses.dataclass
class ImageHeader:
    format: str
    width: int
    height: int


def check_upload(data: bytes, limits: Limits) -> ImageHeader:
    """The header of the image ``data`` holds, once it passes the limits (nothing decoded)."""
    if not data:
        raise RequestRefused(400, "the uploaded image file is empty")
    if len(data) > limits.max_upload_bytes:
        raise RequestRefused(
            413, f"the image file has {len(data)} bytes, more than the limit of {limits.max_upload_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd headers: the checks below decide
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(image.format or "", *image.size)
    except UnidentifiedImageError:
        raise RequestRefused(
            415, f"the upload is not an image (accepted formats: {', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise RequestRefused(
            413, f"the image claims more pixels than the limit of {limits.max_pixels}"
        ) from None
    except Exception as error:  # noqa: BLE001 - PIL's header parsers raise many kinds on hostile bytes
        raise RequestRefused(400, f"unreadable image header ({type(error).__name__}: {error})") from None
    if header.format not in FORMATS:
        raise RequestRefused(
            415, f"{header.format or 'this'} images are not accepted; send one of {', '.join(FORMATS)}"
        )
    if header.width < 1 or header.height < 1:
        raise RequestRefused(
            400, f"the image is {header.width} x {header.height} pixels: it has no pixels to detect in"
        )
    if header.width * header.height > limits.max_pixels:
        raise RequestRefused(
            413,
            f"the image is {header.width} x {header.height} = {header.width * header.height} pixels, more than "
            f"the limit of {limits.max_pixels}; send a smaller image",
        )
    longer, shorter = max(header.width, header.height), min(header.width, header.height)
    if longer / shorter > limits.max_aspect_ratio:
        raise RequestRefused(
            400,
            f"the image is {header.width} x {header.height} pixels, more than {limits.max_aspect_ratio:g} times "
            "longer than wide: the detectors would resize its short side to nothing",
        )
    return header


def decode_upload(data: bytes, limits: Limits) -> Tensor:
    """``data`` (an image file's bytes) -> ``float32 Tensor[3, H, W]``, RGB in [0, 1]."""
    from detlab.data.images import to_image_tensor

    check_upload(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.verify()  # structure and checksums; the image object is unusable afterwards
            with Image.open(io.BytesIO(data)) as image:
                image.seek(0)  # the first frame of an animation
                image.load()
                return to_image_tensor(image)
    except Exception as error:  # noqa: BLE001 - any failure to decode client bytes is the bytes' fault
        raise RequestRefused(400, f"corrupt or truncated image ({type(error).__name__}: {error})") from None
