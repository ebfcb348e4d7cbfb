"""Region proposals: class-agnostic boxes likely to hold an object, best first.

Every method is a :class:`ProposalMethod`; ``method.propose(image) -> Tensor[K, 4]`` (absolute
``(x1, y1, x2, y2)``, best first) and ``method.propose_scored(image) -> (boxes, scores | None)``.
``build_method(name, **options)`` makes one by name from :data:`METHODS`; :func:`propose` is the
one-call form; :func:`grouping_levels` shows one Selective Search hierarchy's regions at several
points of its grouping. :class:`ProposalCache` keeps proposals on disk so R-CNN and Fast R-CNN compute
them once per image.
"""

from __future__ import annotations

from detlab.proposals.baselines import GaussianBoxes, SlidingWindows, SuperpixelBoxes, UniformBoxes
from detlab.proposals.cache import ProposalCache, RecordProposals
from detlab.proposals.method import ProposalMethod
from detlab.proposals.registry import METHODS, build_method, propose
from detlab.proposals.selective_search import STRATEGIES, SelectiveSearch, Strategy, grouping_levels

__all__ = [
    "METHODS",
    "STRATEGIES",
    "GaussianBoxes",
    "ProposalCache",
    "ProposalMethod",
    "RecordProposals",
    "SelectiveSearch",
    "SlidingWindows",
    "Strategy",
    "SuperpixelBoxes",
    "UniformBoxes",
    "build_method",
    "grouping_levels",
    "propose",
]
