"""Duplicate and near-duplicate images: a perceptual hash proposes pairs, a pixel check decides.

1. Hash: pHash (64 bits: the 8 x 8 lowest frequencies of the DCT of a 32 x 32 grey thumbnail, each
   compared with their median), bit for bit the one of ``imagehash.phash``, computed for all images
   at once as two matrix products: on the 374 images of the faulty BCCD copy, 44 ms against
   imagehash's 60 ms image by image, and 0.222 against 0.225 s with decoding, the same bits
   (``benchmarks/results/audit_bccd.md``). Images are decoded at a reduced scale (JPEG draft mode):
   the hash only looks at 32 x 32 pixels, and decoding is most of the time.
   Robust to re-encoding and resizing (a JPEG q70 copy at 0.9 scale is 0-2 bits away) and to small
   crops (up to 5% off each side: 4-12 bits; 8% off one side: 10-14 bits).
2. Candidates: every pair within Hamming distance ``max_distance`` (default 16 of 64). Unrelated
   images of one homogeneous set come that close too (about 60 of BCCD's 66,066 pairs), hence
   step 3.
3. Pixel check: both images as 64 x 64 grey thumbnails, blurred (sigma 1 px) so that a pixel of
   misalignment costs little; the normalised cross-correlation of the central 52 x 52 of one with
   the other over shifts of up to 6 px (9% of the side), also with either image zoomed in to 95%
   and 90% of its field (a crop of the other). The best score decides: a duplicate at >= 0.9.
   Measured: copies and crops 0.94-1.0, overlapping views of one slide 0.98, unrelated BCCD and
   raccoon pairs at most 0.72, burst frames of one scene 0.75 (not called duplicates).

Shape letters: N images, P pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from detlab.errors import BadInputError

HASH_THUMBNAIL = 32  # the pHash's grey thumbnail (imagehash: hash_size 8 x highfreq_factor 4)
THUMBNAIL = 64  # side of the pixel check's thumbnails
MAX_SHIFT = 6  # pixels of the thumbnail: the template is THUMBNAIL - 2 * MAX_SHIFT wide
ZOOMS = (0.95, 0.9)  # fields of view tried for a crop, besides the whole image
BLUR_SIGMA = 1.0
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _open_grey(path: Path, min_side: int) -> Image.Image:
    """``path`` decoded to grey at a reduced scale (at least ``min_side`` pixels a side where the
    file allows), EXIF orientation applied, so the pixels are those boxes are drawn on."""
    if not path.is_file():
        raise BadInputError(path, "image file not found")
    try:
        with Image.open(path) as image:
            image.draft("L", (min_side, min_side))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
            image.load()
            return ImageOps.exif_transpose(image).convert("L")
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadInputError(path, f"corrupt or truncated image ({error})") from None


def _dct_rows(size: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the unnormalised DCT-II matrix of ``size`` points (scipy.fftpack's
    ``dct`` type 2, which imagehash uses): ``y[k] = 2 sum_n x[n] cos(pi k (2n + 1) / (2 size))``."""
    points = np.arange(size)
    return 2.0 * np.cos(np.pi * np.arange(rows)[:, None] * (2 * points[None, :] + 1) / (2 * size))


_DCT8 = _dct_rows(HASH_THUMBNAIL, 8)


def hash_thumbnail(path: str | Path) -> np.ndarray:
    """What the hash looks at: the image at ``path`` as a uint8 ``[32, 32]`` grey thumbnail (LANCZOS,
    as imagehash resizes). Raises :class:`BadInputError` naming the file."""
    image = _open_grey(Path(path), 2 * HASH_THUMBNAIL)
    return np.asarray(
        image.resize((HASH_THUMBNAIL, HASH_THUMBNAIL), Image.Resampling.LANCZOS), dtype=np.uint8
    )


def phash(thumbnails: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """uint64 ``[N]`` pHashes of uint8 thumbnails ``[N, 32, 32]``: bit ``63 - k`` is set when DCT
    coefficient ``k`` (row-major over the 8 x 8 lowest) is above the image's median of the 64.
    Equal to ``imagehash.phash``'s bits (packed in the same order); ``chunk`` images at a time."""
    hashes = np.zeros(len(thumbnails), dtype=np.uint64)
    for start in range(0, len(thumbnails), chunk):
        pixels = thumbnails[start : start + chunk].astype(np.float64)
        low = (_DCT8 @ pixels @ _DCT8.T).reshape(len(pixels), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        hashes[start : start + chunk] = np.packbits(bits, axis=1).view(">u8")[:, 0]
    return hashes


def hash_image(path: str | Path) -> int:
    """The 64-bit pHash of the image at ``path`` as an ``int`` (see :func:`phash`)."""
    return int(phash(hash_thumbnail(path)[None])[0])


def image_hashes(
    paths: Sequence[str | Path],
    workers: int = 1,
    on_bad: Callable[[BadInputError], None] | None = None,
    progress: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of ``paths``: ``(hashes uint64 [N], readable bool [N])``.

    Decoding releases the GIL, so ``workers`` threads decode in parallel; the DCTs then run for all
    images at once. An unreadable file raises :class:`BadInputError` naming it, unless ``on_bad``
    is given: then it is called with the error and the file's ``readable`` entry is False.
    ``progress`` (e.g. ``tqdm``) wraps the iterator of decoded images.
    """

    def one(path):
        try:
            return hash_thumbnail(path)
        except BadInputError as error:
            if on_bad is None:
                raise
            return error

    thumbnails = np.zeros((len(paths), HASH_THUMBNAIL, HASH_THUMBNAIL), dtype=np.uint8)
    readable = np.ones(len(paths), dtype=bool)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, paths)
        if progress is not None:
            results = progress(results, total=len(paths))
        for index, result in enumerate(results):
            if isinstance(result, BadInputError):
                on_bad(result)
                readable[index] = False
            else:
                thumbnails[index] = result
    return phash(thumbnails), readable


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 of ``values`` (any shape)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    return _POPCOUNT[values.view(np.uint8)].reshape(*values.shape, 8).sum(-1, dtype=np.int64)


def hamming_pairs(
    hashes: np.ndarray, max_distance: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``first < second`` of ``hashes`` (uint64 ``[N]``) within Hamming distance
    ``max_distance``: ``(first [P], second [P], distance [P])``, ordered by ``first``, ``second``.

    All N^2 pairs are compared, ``chunk`` rows at a time (memory ``chunk * N * 8`` bytes): 6.5 s
    for 30,000 hashes on this project's 2-core machine, so a few ten thousand images at most.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(hashes), chunk):
        rows = hashes[start : start + chunk]
        distance = _popcount(rows[:, None] ^ hashes[None, :])
        row, column = np.nonzero(distance <= max_distance)
        row = row + start
        keep = column > row
        firsts.append(row[keep])
        seconds.append(column[keep])
        distances.append(distance[row[keep] - start, column[keep]])
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def _thumbnail(image: Image.Image, zoom: float = 1.0) -> np.ndarray:
    """The central ``zoom`` of ``image``'s field, as a blurred float32 ``[THUMBNAIL, THUMBNAIL]``."""
    width, height = image.size
    margin_x, margin_y = width * (1 - zoom) / 2, height * (1 - zoom) / 2
    box = (margin_x, margin_y, width - margin_x, height - margin_y)
    resized = image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR, box=box)
    return ndimage.gaussian_filter(np.asarray(resized, dtype=np.float32), BLUR_SIGMA)


def _window_sums(values: np.ndarray, side: int) -> np.ndarray:
    """Sums of every ``side x side`` window of ``values`` ``[T, T]`` -> ``[T - side + 1, T - side + 1]``
    (an integral image: four look-ups a window instead of ``side^2`` additions)."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = values.cumsum(0).cumsum(1)
    return (
        integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    )


def _best_correlation(search: np.ndarray, template_source: np.ndarray) -> float:
    """Highest normalised cross-correlation of ``template_source``'s central window with every
    window of ``search`` within ``MAX_SHIFT`` pixels (``[T, T]`` arrays)."""
    side = THUMBNAIL - 2 * MAX_SHIFT
    template = template_source[MAX_SHIFT : MAX_SHIFT + side, MAX_SHIFT : MAX_SHIFT + side]
    template = template - template.mean()
    template_norm = np.sqrt((template**2).sum())
    windows = np.lib.stride_tricks.sliding_window_view(search, (side, side))  # [2S+1, 2S+1, side, side]
    # The template has zero mean, so sum(window * template) is already the centred product.
    products = np.einsum("ijkl,kl->ij", windows, template)
    sums = _window_sums(search, side)
    window_norms = np.sqrt(
        np.maximum(_window_sums(search.astype(np.float64) ** 2, side) - sums**2 / side**2, 0.0)
    )
    # A flat window or template (a blank image) has no correlation to speak of: score 0.
    scores = products / np.maximum(window_norms * template_norm, 1e-6)
    return float(scores.max())


def pixel_thumbnails(image: Image.Image) -> list[np.ndarray]:
    """What :func:`pixel_similarity` compares: ``image``'s blurred 64 x 64 thumbnail, then one for
    each zoomed-in field of ``ZOOMS``."""
    return [_thumbnail(image)] + [_thumbnail(image, zoom) for zoom in ZOOMS]


def pixel_similarity(thumbnails_a: list[np.ndarray], thumbnails_b: list[np.ndarray]) -> float:
    """How alike two images are, in [-1, 1], from their :func:`pixel_thumbnails`: the best
    normalised cross-correlation over small shifts of the two whole fields, and of either one's
    zoomed field with the other's whole (a crop of it). About 1 for copies, re-encodings, resizes
    and small crops (see the module doc)."""
    whole_a, whole_b = thumbnails_a[0], thumbnails_b[0]
    best = max(_best_correlation(whole_a, whole_b), _best_correlation(whole_b, whole_a))
    for zoomed_a, zoomed_b in zip(thumbnails_a[1:], thumbnails_b[1:]):
        best = max(best, _best_correlation(zoomed_a, whole_b), _best_correlation(zoomed_b, whole_a))
    return best


def find_duplicates(
    paths: Sequence[str | Path],
    hashes: np.ndarray,
    readable: np.ndarray | None = None,
    max_distance: int = 16,
    min_similarity: float = 0.9,
) -> tuple[list[tuple[int, int, int, float]], list[tuple[int, int, int, float]]]:
    """Duplicate pairs among ``paths`` given their ``hashes`` (from :func:`image_hashes`).

    Returns ``(duplicates, rejected)``: ``(i, j, hash distance, pixel similarity)`` with ``i < j``
    for the candidate pairs that passed the pixel check, and for those that did not, most similar
    first (kept so that a threshold can be judged on real data).
    """
    first, second, distance = hamming_pairs(hashes, max_distance)
    if readable is not None:
        keep = readable[first] & readable[second]
        first, second, distance = first[keep], second[keep], distance[keep]

    @lru_cache(maxsize=1024)  # pairs come ordered by their first image: it stays cached
    def thumbnails(index: int) -> list[np.ndarray]:
        return pixel_thumbnails(_open_grey(Path(paths[index]), 2 * THUMBNAIL))

    duplicates, rejected = [], []
    for i, j, bits in zip(first.tolist(), second.tolist(), distance.tolist()):
        similarity = pixel_similarity(thumbnails(i), thumbnails(j))
        (duplicates if similarity >= min_similarity else rejected).append((i, j, bits, round(similarity, 4)))
    rejected.sort(key=lambda pair: -pair[3])
    return duplicates, rejected
