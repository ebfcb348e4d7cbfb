"""The most memory the tensors of one computation hold at once, counted in torch's dispatcher.

A method whose memory grows with its network's maps (OverFeat runs its network on the whole image
at every scale) measures its own network with it (:meth:`~detlab.models.contract.Detector.memory_cost`),
so the figure follows the configuration: a network with fewer downsampling blocks has larger maps.
Every tensor a torch operation creates counts from its creation until it is freed; an output that
shares an input's storage (a view, an in-place result) counts nothing. What torch's kernels
allocate outside tensors (oneDNN's scratch space) and the allocator's own overhead are not
seen: the method adds a margin for them, which ``benchmarks/bench_robustness_serve.py`` checks
against the resident memory it measures.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorBytes(TorchDispatchMode):
    """Within its ``with`` block (this thread only): ``peak``, the most bytes that tensors
    created inside the block held at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _freed(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, Tensor)
        }
        output = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(output):
            if not isinstance(leaf, Tensor) or leaf.untyped_storage().data_ptr() in inputs:
                continue
            size = leaf.untyped_storage().nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(leaf, self._freed, size)
        return output


def peak_tensor_bytes(function: Callable[[], object]) -> int:
    """The most bytes the tensors that ``function()`` creates hold at once (its result freed)."""
    with PeakTensorBytes() as counter:
        function()
    return counter.peak
