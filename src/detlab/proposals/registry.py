"""Every proposal method by name: :data:`METHODS`, :func:`build_method`, :func:`propose`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import Tensor

from detlab.proposals.baselines import GaussianBoxes, SlidingWindows, SuperpixelBoxes, UniformBoxes
from detlab.proposals.method import ProposalMethod
from detlab.proposals.selective_search import SelectiveSearch

# name -> build function taking the ProposalMethod options (max_proposals, min_size, seed, max_side).
METHODS: dict[str, Callable[..., ProposalMethod]] = {
    "ss-single": lambda **options: SelectiveSearch("single", **options),
    "ss-fast": lambda **options: SelectiveSearch("fast", **options),
    "ss-quality": lambda **options: SelectiveSearch("quality", **options),
    "sliding": SlidingWindows,
    "uniform": UniformBoxes,
    "gaussian": GaussianBoxes,
    "superpixels": SuperpixelBoxes,
}


def build_method(name: str, **options) -> ProposalMethod:
    """The proposal method called ``name`` (a key of :data:`METHODS`) with ``options``."""
    if name not in METHODS:
        raise ValueError(f"unknown proposal method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)


def propose(image: Tensor | np.ndarray | str | Path, method: str = "ss-fast", **options) -> Tensor:
    """``image`` (a path, PIL image, ``H x W x 3`` RGB array or ``Tensor[3, H, W]``; see
    :func:`detlab.data.images.to_image_tensor`) -> boxes ``float32 Tensor[K, 4]`` xyxy, best first."""
    return build_method(method, **options).propose(image)
