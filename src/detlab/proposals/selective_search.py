"""Selective Search (Uijlings, van de Sande, Gevers, Smeulders, IJCV 2013).

1. Initial regions: Felzenszwalb-Huttenlocher graph segmentation
   (:mod:`detlab.proposals.graph_segmentation`, skimage's segmentation compiled with numba) of
   the image in some colour space with scale ``k`` (paper section 3.1).
2. Hierarchical grouping (section 3.1, algorithm 1): repeatedly merge the most similar pair of
   neighbouring regions until one region is left; every region ever formed gives a box.
   Similarities (section 3.2) are in [0, 1]: colour (histogram intersection of 25 bins a
   channel), texture (histogram intersection of Gaussian derivatives in 8 orientations, 10 bins
   each, a channel), size (small regions merge early) and fill (regions that fill each other's
   holes merge early). They are computed once for the initial regions and then updated
   incrementally: a merged region's histograms are the size-weighted average of its parts and
   its neighbours are the union of theirs, so each merge touches only its neighbours.
3. Diversification (section 3.2): several colour spaces, several ``k`` and several similarity
   combinations, each a separate hierarchy. The paper's strategies "single", "fast" and
   "quality" are in :data:`STRATEGIES`.
4. Combination (section 3.4): in each hierarchy the region created last (the whole image) has
   position 1, the one before it 2, and so on; each box gets ``position * RND`` with ``RND``
   uniform in [0, 1] (seeded), all boxes are sorted by that value and duplicates removed.

Shape letters: H, W image height and width; R regions of one hierarchy (initial plus merged);
D histogram bins of one region.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage
from skimage import color

from detlab.proposals.graph_segmentation import PixelGraph, felzenszwalb
from detlab.proposals.method import DEFAULT_MAX_SIDE, ProposalMethod, image_to_array

COLOUR_BINS = 25  # section 3.2, "25 bins for each colour channel"
TEXTURE_ORIENTATIONS = 8  # section 3.2, "Gaussian derivatives in eight orientations"
TEXTURE_BINS = 10  # section 3.2, "a bin size of 10"
TEXTURE_SIGMA = 1.0  # section 3.2, "using sigma = 1"
SEGMENTATION_SIGMA = 0.8  # Felzenszwalb-Huttenlocher's default smoothing, used by the paper's code

COLOUR_SPACES = ("rgb", "hsv", "lab", "rgI", "I", "H")
SIMILARITY_LETTERS = {"C": "colour", "T": "texture", "S": "size", "F": "fill"}


@dataclass(frozen=True)
class Strategy:
    """One diversification: every (colour space, k, similarity) triple is a separate hierarchy.

    ``similarities`` are strings of the letters C (colour), T (texture), S (size), F (fill), each
    a sum of those similarities, e.g. ``"CTSF"``.
    """

    colour_spaces: tuple[str, ...]
    ks: tuple[int, ...]
    similarities: tuple[str, ...]

    def __post_init__(self):
        for space in self.colour_spaces:
            if space not in COLOUR_SPACES:
                raise ValueError(f"unknown colour space {space!r}; expected one of {COLOUR_SPACES}")
        for similarity in self.similarities:
            if not similarity or set(similarity) - set(SIMILARITY_LETTERS):
                raise ValueError(f"similarity {similarity!r} must be made of the letters C, T, S, F")
        if not self.colour_spaces or not self.ks or not self.similarities or min(self.ks) <= 0:
            raise ValueError("a strategy needs colour spaces, positive k values and similarities")


# Section 5.1 and table 4 ("Selective Search Fast" and "Quality").
STRATEGIES = {
    "single": Strategy(("hsv",), (100,), ("CTSF",)),
    "fast": Strategy(("hsv", "lab"), (50, 100), ("CTSF", "TSF")),
    "quality": Strategy(("hsv", "lab", "rgI", "H", "I"), (50, 100, 150, 300), ("CTSF", "TSF", "F", "S")),
}


def convert_colour(image: np.ndarray, space: str) -> np.ndarray:
    """``float32 [H, W, 3]`` RGB in [0, 1] -> ``float32 [H, W, C]`` in ``space``, every channel in [0, 1].

    ``rgI`` is normalised r, g plus intensity; ``I`` is intensity and ``H`` hue (one channel each).
    """
    if space == "rgb":
        converted = image
    elif space == "hsv":
        converted = color.rgb2hsv(image)
    elif space == "lab":
        lab = color.rgb2lab(image)
        # L is in [0, 100]; a and b of sRGB colours stay within [-128, 127].
        converted = np.stack(
            [lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0, (lab[..., 2] + 128) / 255.0], -1
        )
    elif space == "rgI":
        total = image.sum(-1, keepdims=True)
        chroma = np.divide(image[..., :2], total, out=np.full_like(image[..., :2], 1 / 3), where=total > 0)
        converted = np.concatenate([chroma, total / 3.0], -1)
    elif space == "I":
        converted = image.mean(-1, keepdims=True)
    elif space == "H":
        converted = color.rgb2hsv(image)[..., :1]
    else:
        raise ValueError(f"unknown colour space {space!r}; expected one of {COLOUR_SPACES}")
    return np.ascontiguousarray(np.clip(converted, 0.0, 1.0), dtype=np.float32)


def segment(image: np.ndarray, k: float, min_size: int | None = None) -> np.ndarray:
    """Felzenszwalb-Huttenlocher regions of ``[H, W, C]`` -> int64 label map ``[H, W]`` in 0..R-1.

    ``min_size`` defaults to ``k``, as in the paper's code.
    """
    min_size = int(k) if min_size is None else int(min_size)
    # Regions are numbered densely, 0..R-1, which describe_regions relies on.
    return felzenszwalb(image, k, sigma=SEGMENTATION_SIGMA, min_size=min_size)


@dataclass
class PixelCodes:
    """Per-pixel histogram bin indices of one colour-space image, shared by all its segmentations.

    ``colour``: int ``[H*W, C]`` bin of each channel, offset so channel c uses ``c*25 .. c*25+24``;
    ``texture``: int ``[H*W, C*8]`` likewise for each channel and orientation (10 bins each).
    """

    colour: np.ndarray
    texture: np.ndarray
    colour_dims: int
    texture_dims: int


def pixel_codes(image: np.ndarray) -> PixelCodes:
    """Bin every pixel's colour and texture responses of ``[H, W, C]`` (section 3.2)."""
    height, width, channels = image.shape
    colour_bins = np.minimum((image * COLOUR_BINS).astype(np.int32), COLOUR_BINS - 1).reshape(-1, channels)
    colour_bins += np.arange(channels, dtype=np.int32) * COLOUR_BINS
    angles = np.arange(TEXTURE_ORIENTATIONS // 2) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    texture = np.empty((height * width, channels * TEXTURE_ORIENTATIONS), dtype=np.int32)
    column = 0
    for channel in range(channels):
        plane = image[..., channel].astype(np.float32)
        d_x = ndimage.gaussian_filter(plane, TEXTURE_SIGMA, order=(0, 1))
        d_y = ndimage.gaussian_filter(plane, TEXTURE_SIGMA, order=(1, 0))
        for angle in angles:
            # A steered first derivative; its positive and negative parts are the two opposite
            # orientations (angle and angle + 180 degrees), giving 8 orientations from 4 angles.
            steered = np.cos(angle) * d_x + np.sin(angle) * d_y
            for response in (np.maximum(steered, 0), np.maximum(-steered, 0)):
                peak = float(response.max())
                scaled = response * (TEXTURE_BINS / peak) if peak > 0 else response
                bins = np.minimum(scaled.astype(np.int32), TEXTURE_BINS - 1).reshape(-1)
                texture[:, column] = bins + column * TEXTURE_BINS
                column += 1
    return PixelCodes(
        colour_bins, texture, channels * COLOUR_BINS, channels * TEXTURE_ORIENTATIONS * TEXTURE_BINS
    )


@dataclass
class Regions:
    """The initial regions of one segmentation and what grouping needs of them.

    ``sizes`` ``[R]`` pixel counts; ``boxes`` ``[R, 4]`` xyxy (pixel edges, so a one-pixel region
    at (x, y) is ``(x, y, x+1, y+1)``); ``histograms`` ``[R, D]`` colour bins then texture bins,
    each part L1-normalised (``None`` when the similarities need neither); ``pairs`` ``[P, 2]``
    neighbouring region ids (4-connectivity), ``a < b``.
    """

    sizes: np.ndarray
    boxes: np.ndarray
    histograms: np.ndarray | None
    colour_dims: int
    pairs: np.ndarray
    image_area: int


@numba.njit(cache=True, nogil=True)
def _region_histograms(flat_labels, codes, num_regions, dims):
    """int64 ``[R, dims]``: how many pixels of each region fall in each bin of ``codes``
    ``[H*W, columns]`` (every column's bins are offset into one row of ``dims`` bins)."""
    counts = np.zeros((num_regions, dims), np.int64)
    for pixel in range(flat_labels.size):
        row = counts[flat_labels[pixel]]
        for column in range(codes.shape[1]):
            row[codes[pixel, column]] += 1
    return counts


def describe_regions(labels: np.ndarray, codes: PixelCodes | None) -> Regions:
    """Sizes, boxes, neighbours and (with ``codes``) histograms of the regions of ``labels`` ``[H, W]``."""
    num_regions = int(labels.max()) + 1
    flat = labels.reshape(-1)
    sizes = np.bincount(flat, minlength=num_regions).astype(np.float64)
    boxes = np.zeros((num_regions, 4), dtype=np.float64)
    for region, (rows, cols) in enumerate(ndimage.find_objects(labels + 1)):
        boxes[region] = (cols.start, rows.start, cols.stop, rows.stop)
    # Neighbours: label changes between horizontally or vertically adjacent pixels.
    first = np.concatenate([labels[:, :-1].reshape(-1), labels[:-1, :].reshape(-1)])
    second = np.concatenate([labels[:, 1:].reshape(-1), labels[1:, :].reshape(-1)])
    differ = first != second
    low, high = np.minimum(first[differ], second[differ]), np.maximum(first[differ], second[differ])
    codes_of_pairs = np.unique(low * num_regions + high)
    pairs = np.stack([codes_of_pairs // num_regions, codes_of_pairs % num_regions], 1)
    histograms, colour_dims = None, 0
    if codes is not None:
        colour = _region_histograms(flat, codes.colour, num_regions, codes.colour_dims)
        texture = _region_histograms(flat, codes.texture, num_regions, codes.texture_dims)
        # Section 3.2: each histogram is L1-normalised, so intersections lie in [0, 1].
        histograms = np.concatenate(
            [colour / colour.sum(1, keepdims=True), texture / texture.sum(1, keepdims=True)], 1
        )
        colour_dims = codes.colour_dims
    return Regions(sizes, boxes, histograms, colour_dims, pairs, labels.size)


class RegionTable:
    """The regions of one hierarchical grouping, initial and merged, by id: their sizes, boxes and
    (for the colour and texture similarities) histograms, with room for every merge."""

    def __init__(self, regions: Regions, use: set[str]):
        num_initial = len(regions.sizes)
        capacity = 2 * num_initial - 1
        self.use, self.colour_dims, self.image_area = use, regions.colour_dims, float(regions.image_area)
        self.sizes = np.zeros(capacity)
        self.sizes[:num_initial] = regions.sizes
        self.boxes = np.zeros((capacity, 4))
        self.boxes[:num_initial] = regions.boxes
        self.histograms = None
        if use & {"colour", "texture"}:
            self.histograms = np.zeros((capacity, regions.histograms.shape[1]))
            self.histograms[:num_initial] = regions.histograms

    def similarities(self, region: int | np.ndarray, others: np.ndarray) -> np.ndarray:
        """Section 3.2: the sum of the chosen similarities between ``region`` and each of ``others``."""
        sizes, boxes, use = self.sizes, self.boxes, self.use
        total = np.zeros(len(others))
        if self.histograms is not None:
            overlap = np.minimum(self.histograms[region], self.histograms[others])
            if "colour" in use:
                total += overlap[:, : self.colour_dims].sum(1)
            if "texture" in use:
                total += overlap[:, self.colour_dims :].sum(1)
        if "size" in use:
            total += 1.0 - (sizes[region] + sizes[others]) / self.image_area
        if "fill" in use:
            joint_width = np.maximum(boxes[region, 2], boxes[others, 2]) - np.minimum(
                boxes[region, 0], boxes[others, 0]
            )
            joint_height = np.maximum(boxes[region, 3], boxes[others, 3]) - np.minimum(
                boxes[region, 1], boxes[others, 1]
            )
            total += 1.0 - (joint_width * joint_height - sizes[region] - sizes[others]) / self.image_area
        return total

    def merge(self, first: int, second: int, new: int) -> None:
        """Region ``new`` is ``first`` and ``second`` together (section 3.1: sizes add, boxes join,
        histograms average by size)."""
        sizes, boxes = self.sizes, self.boxes
        size_first, size_second = sizes[first], sizes[second]
        sizes[new] = size_first + size_second
        boxes[new, :2] = np.minimum(boxes[first, :2], boxes[second, :2])
        boxes[new, 2:] = np.maximum(boxes[first, 2:], boxes[second, 2:])
        if self.histograms is not None:
            histograms = self.histograms
            histograms[new] = (size_first * histograms[first] + size_second * histograms[second]) / sizes[new]


def group_regions(regions: Regions, similarity: str = "CTSF") -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical grouping (algorithm 1) of ``regions`` under the ``similarity`` letters.

    Returns ``boxes`` ``[R_total, 4]`` of every region in the order it was formed (the R initial
    regions first, then one box per merge, the last being the whole connected image) and
    ``merges`` ``[R_total - R, 2]``, the ids of the two regions joined by each merge (the merged
    region of merge m has id ``R + m``).
    """
    use = {SIMILARITY_LETTERS[letter] for letter in similarity}
    if use & {"colour", "texture"} and regions.histograms is None:
        raise ValueError(f"similarity {similarity!r} needs histograms; describe regions with pixel codes")
    table, num_initial = RegionTable(regions, use), len(regions.sizes)
    capacity = 2 * num_initial - 1
    neighbours: list[set[int] | None] = [set() for _ in range(capacity)]
    for first, second in regions.pairs.tolist():
        neighbours[first].add(second)
        neighbours[second].add(first)
    # Max-heap of pair similarities (negated for heapq); entries of merged regions go stale and
    # are skipped when popped, which is cheaper than deleting them.
    heap = []
    if len(regions.pairs):
        initial = table.similarities(regions.pairs[:, 0], regions.pairs[:, 1])
        heap = list(zip((-initial).tolist(), regions.pairs[:, 0].tolist(), regions.pairs[:, 1].tolist()))
        heapq.heapify(heap)
    alive = np.zeros(capacity, dtype=bool)
    alive[:num_initial] = True
    merges, new = [], num_initial
    while heap:
        _, first, second = heapq.heappop(heap)
        if not (alive[first] and alive[second]):
            continue
        table.merge(first, second, new)
        joined = neighbours[first] | neighbours[second]
        joined.discard(first)
        joined.discard(second)
        for other in joined:
            around = neighbours[other]
            around.discard(first)
            around.discard(second)
            around.add(new)
        neighbours[new], neighbours[first], neighbours[second] = joined, None, None
        alive[first] = alive[second] = False
        alive[new] = True
        merges.append((first, second))
        if joined:
            others = np.fromiter(joined, dtype=np.int64, count=len(joined))
            for value, other in zip((-table.similarities(new, others)).tolist(), others.tolist()):
                heapq.heappush(heap, (value, other, new))
        new += 1
    return table.boxes[:new].copy(), np.asarray(merges, dtype=np.int64).reshape(-1, 2)


def hierarchy_boxes(image: np.ndarray, strategy: Strategy | str = "fast") -> list[np.ndarray]:
    """Every hierarchy of ``strategy`` on ``float32 [H, W, 3]`` RGB -> list of boxes ``[R_total, 4]``
    in order of formation (one array per colour space x k x similarity)."""
    strategy = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    needs_histograms = any(set(similarity) & {"C", "T"} for similarity in strategy.similarities)
    result = []
    for space in strategy.colour_spaces:
        converted = convert_colour(image, space)
        codes = pixel_codes(converted) if needs_histograms else None
        graph = PixelGraph(converted, SEGMENTATION_SIGMA)  # shared by every k
        for k in strategy.ks:
            regions = describe_regions(graph.segment(k, min_size=int(k)), codes)
            for similarity in strategy.similarities:
                result.append(group_regions(regions, similarity)[0])
    return result


def grouping_levels(
    image, region_counts: Sequence[int], colour_space: str = "hsv", k: int = 100, similarity: str = "CTSF"
) -> list[np.ndarray]:
    """One hierarchy of Selective Search (``colour_space``, ``k``, ``similarity``) on ``image`` (any
    image :func:`~detlab.proposals.method.image_to_array` takes), seen at several points of its
    grouping: for each count of ``region_counts``, the label map ``int64 [H, W]`` (regions
    numbered ``0..n-1``) when that many regions are left. A count above the initial segmentation's
    gives the initial regions; one below what grouping ends with (the image's connected parts: one
    for an ordinary image) gives where it ends. Every level is a grouping of the finer ones, and
    every region of every level is a proposal the hierarchy's boxes hold."""
    converted = convert_colour(image_to_array(image), colour_space)
    codes = pixel_codes(converted) if set(similarity) & {"C", "T"} else None
    labels = segment(converted, k)
    regions = describe_regions(labels, codes)
    _, merges = group_regions(regions, similarity)
    num_initial = len(regions.sizes)
    owner = np.arange(num_initial)  # the region each initial region belongs to after the merges so far
    members: dict[int, list[int]] = {region: [region] for region in range(num_initial)}
    wanted = {min(max(num_initial - count, 0), len(merges)) for count in region_counts}
    maps = {}
    for done in range(len(merges) + 1):
        if done in wanted:
            maps[done] = np.unique(owner, return_inverse=True)[1][labels].astype(np.int64)
        if done == len(merges):
            break
        first, second = merges[done]
        joined = members.pop(int(first)) + members.pop(int(second))
        members[num_initial + done] = joined
        owner[joined] = num_initial + done
    return [maps[min(max(num_initial - count, 0), len(merges))] for count in region_counts]


def rank_hierarchies(hierarchies: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Section 3.4: order boxes of several hierarchies by ``position * RND``, smallest first.

    ``hierarchies``: boxes ``[R_total, 4]`` each in order of formation. Returns boxes ``[K, 4]``
    (duplicates are removed later, keeping the best-ranked copy).
    """
    boxes, values = [], []
    for hierarchy in hierarchies:
        # The last region formed (the top of the hierarchy) has position 1.
        positions = np.arange(len(hierarchy), 0, -1, dtype=np.float64)
        boxes.append(hierarchy)
        values.append(positions * rng.random(len(hierarchy)))
    if not boxes:
        return np.zeros((0, 4))
    order = np.argsort(np.concatenate(values), kind="stable")
    return np.concatenate(boxes)[order]


class SelectiveSearch(ProposalMethod):
    """Selective Search proposals: ``SelectiveSearch("fast").propose(image) -> Tensor[K, 4]``.

    Args:
        strategy: ``"single"``, ``"fast"``, ``"quality"`` or a :class:`Strategy`.
        max_proposals, min_size, seed, max_side: see :class:`ProposalMethod`.
    """

    def __init__(
        self,
        strategy: Strategy | str = "fast",
        max_proposals: int | None = 2000,
        min_size: float = 4.0,
        seed: int = 0,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ):
        super().__init__(max_proposals=max_proposals, min_size=min_size, seed=seed, max_side=max_side)
        if isinstance(strategy, str):
            if strategy not in STRATEGIES:
                raise ValueError(
                    f"unknown Selective Search strategy {strategy!r}; expected one of {list(STRATEGIES)}"
                )
            self.name = f"ss-{strategy}"
            strategy = STRATEGIES[strategy]
        else:
            self.name = "ss-custom"
        self.strategy = strategy

    def settings(self) -> dict:
        return {
            **super().settings(),
            "colour_spaces": list(self.strategy.colour_spaces),
            "ks": list(self.strategy.ks),
            "similarities": list(self.strategy.similarities),
        }

    def _generate(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        return rank_hierarchies(hierarchy_boxes(image, self.strategy), rng), None
