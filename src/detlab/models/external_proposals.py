"""External proposals, the first stage of R-CNN and Fast R-CNN: a proposal method of
:mod:`detlab.proposals` run on each image, cached on disk for the training images.

At test time the proposal method runs on every image, so a detector's measured time per image
includes it (the cost Faster R-CNN removes); training images are proposed once, before training
(:class:`detlab.proposals.RecordProposals`), or on first use (:class:`detlab.proposals.ProposalCache`).

Shape letters: K proposals of an image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from detlab import boxes as box_ops
from detlab.machine import user_cache_dir
from detlab.proposals import ProposalCache, RecordProposals, build_method


def default_proposal_method(
    name: str, max_proposals: int, max_side: int | None = None
) -> Callable[[Tensor], Tensor]:
    """``image Tensor[3, H, W] -> boxes Tensor[K, 4]``: a method of :mod:`detlab.proposals` by name
    (``ss-fast``, ``ss-quality``, ``sliding``, ...; ``selective_search`` means ``ss-fast``). ``max_side``: images
    with a longer side are shrunk to it before proposing (boxes come back in the image's frame);
    Fast R-CNN passes its ``max_size`` so the proposals see what the network sees."""
    options = {} if max_side is None else {"max_side": max_side}
    return build_method(
        "ss-fast" if name == "selective_search" else name, max_proposals=max_proposals, **options
    )


def proposal_source(name: str, max_proposals: int, max_side: int | None, cache_dir: str | None):
    """``(method, cache)``: the proposal method of :func:`default_proposal_method` and, with a
    ``cache_dir``, its on-disk cache (``None`` without), in a sub-folder named after the method and
    its settings, so methods with other settings never share one. ``cache_dir`` ``auto`` is
    ``proposals/`` in the user cache folder (:func:`detlab.machine.user_cache_dir`). Opening the
    cache writes nothing; it is created when the first proposals are stored."""
    method = default_proposal_method(name, max_proposals, max_side)
    if not cache_dir:
        return method, None
    root = user_cache_dir() / "proposals" if cache_dir == "auto" else Path(cache_dir)
    digest = hashlib.sha1(json.dumps(method.settings(), sort_keys=True).encode()).hexdigest()[:10]
    return method, ProposalCache(root / f"{method.name}-{digest}", method)


def image_proposals(image: Tensor, target: dict | None, method, cache, training: bool) -> Tensor:
    """An image's proposals, ``Tensor[K, 4]`` in its pixels: the target's ``"proposals"`` (attached
    by the data layer), else, for a training image, from ``cache`` (keyed by its ``image_id`` and
    content), else ``method`` run now (test time always proposes afresh: its cost is part of the
    detector's test time)."""
    if target is not None and "proposals" in target:
        return target["proposals"].float().reshape(-1, 4)
    if method is None:
        raise ValueError(
            "this detector needs proposals: give each target a 'proposals' Tensor[K, 4] or build the "
            "model with a proposal method"
        )
    if training and cache is not None and target is not None and "image_id" in target:
        key = f"{target['image_id']}-{image_fingerprint(image)}"
        return cache.get_or_compute(key, image).to(image.device)
    return method(image).to(image.device)


def training_proposals(cache):
    """A :class:`detlab.proposals.RecordProposals` over ``cache`` (``None`` without a cache)."""
    if cache is None:
        return None
    return RecordProposals(cache)


def image_fingerprint(image: Tensor) -> str:
    """A short digest of an image's content (its 16x16 thumbnail), so cached proposals are reused
    only for the very same pixels: a flipped or rescaled copy of an image gets its own entry."""
    thumbnail = F.adaptive_avg_pool2d(image.detach().float().cpu()[None], 16)
    digest = hashlib.sha1((thumbnail * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:12]
    return f"{tuple(image.shape[-2:])[0]}x{tuple(image.shape[-2:])[1]}-{digest}"


def proposals_name(method) -> str:
    """A proposal method's name for the look-inside stages: ``Selective Search (ss-fast)``."""
    name = getattr(method, "name", "proposals")
    return f"Selective Search ({name})" if name.startswith("ss-") else name


def shown_proposal(proposals: Tensor, detections: dict) -> int:
    """The index of the proposal a look-inside view follows through the network: the one that
    overlaps the best detection most (before its box was regressed), else the first proposal."""
    if len(detections["boxes"]) == 0 or len(proposals) == 0:
        return 0
    best = detections["scores"].argmax()
    return int(box_ops.iou(detections["boxes"][best][None].to(proposals), proposals)[0].argmax())
