"""The server's memory budget, and the most pixels each model may take within it.

A small file can hold a large image, and a method's memory grows with the image it is given
(OverFeat runs its network on the image scaled up to 3 times: about a kilobyte a pixel), so the
pixel limit that keeps a server within its memory cannot be one number for every model. Each
method states what a pass costs (:meth:`~detlab.models.contract.Detector.memory_cost`, measured by
``benchmarks/bench_serve_memory.py``); this module splits the budget:

    for requests = budget - resident memory once the models are loaded - uploads' reserve
    per inference = for requests / max_concurrent
    a model's max pixels = the most pixels whose decoding and pass fit one inference's share
                           (at most Limits.max_pixels)

The uploads' reserve is what requests hold before their inference: every upload arriving
(``max_uploads``, each buffered in memory up to :data:`SPOOL_BYTES`, the rest on disk) and every
admitted request's image file (``max_concurrent + queue_size`` of at most ``max_upload_bytes``).
An image over its model's limit is refused with 413 naming the limit (not downscaled: the answer
would no longer be the model's answer on the image sent).
"""

from __future__ import annotations

import dataclasses

from detlab.machine import memory_available_bytes, resident_bytes
from detlab.models.contract import MIB, MemoryCost
from detlab.serve.limits import FORM_OVERHEAD_BYTES, Limits
from detlab.serve.upload import DECODE_BYTES_PER_PIXEL

# Starlette keeps an uploaded file in memory up to this size (MultiPartParser.spool_max_size),
# then on disk; plus the parser's chunks.
SPOOL_BYTES = 1024 * 1024 + 64 * 1024
# A method that states no cost (a model from outside detlab) is assumed to cost this: twice the
# largest measured of detlab's methods (OverFeat's), so it is refused large images rather than
# trusted with them.
UNMEASURED_COST = MemoryCost(bytes_per_input_pixel=2500.0, fixed_bytes=256 * MIB)
# A model whose share of the budget does not fit an image this large is refused at start.
MIN_SERVED_PIXELS = 128 * 128
# Without a budget: half of the memory the machine has available once the models are loaded.
DEFAULT_BUDGET_SHARE = 0.5


@dataclasses.dataclass
class MemoryPlan:
    """``budget``: bytes the server may hold; ``resident``: what it held once its models were
    loaded; ``reserved``: the uploads' reserve; ``per_inference``: each inference slot's share;
    ``max_pixels``: model name -> the most pixels an image of it may have."""

    budget: int
    resident: int
    reserved: int
    per_inference: int
    max_pixels: dict[str, int]

    def describe(self) -> dict:
        return {
            "budget_bytes": self.budget,
            "per_inference_bytes": self.per_inference,
            "max_pixels": dict(self.max_pixels),
        }


def uploads_reserve(limits: Limits) -> int:
    """Bytes requests may hold before their inference starts (see the module's text)."""
    admitted = limits.max_concurrent + limits.queue_size
    return limits.max_uploads * SPOOL_BYTES + admitted * (limits.max_upload_bytes + FORM_OVERHEAD_BYTES)


def serving_cost(cost: MemoryCost | None) -> MemoryCost:
    """A model's pass with the uploaded file decoded in front of it."""
    cost = cost or UNMEASURED_COST
    return MemoryCost(cost.bytes_per_input_pixel + DECODE_BYTES_PER_PIXEL, cost.fixed_bytes)


def plan_memory(costs: dict[str, MemoryCost | None], limits: Limits) -> MemoryPlan:
    """Each model's pixel limit (``costs``: model name -> its :meth:`memory_cost`) under
    ``limits.memory_budget``; ``ValueError`` when a model would not fit a
    :data:`MIN_SERVED_PIXELS` image, saying what budget it needs."""
    resident = resident_bytes() or 0
    budget = limits.memory_budget
    if budget is None:
        budget = resident + int(DEFAULT_BUDGET_SHARE * (memory_available_bytes() or 4 * 1024**3))
    reserved = uploads_reserve(limits)
    per_inference = (budget - resident - reserved) // limits.max_concurrent
    max_pixels = {}
    for name, cost in costs.items():
        cost = serving_cost(cost)
        pixels = cost.pixels_within(per_inference)
        if pixels < MIN_SERVED_PIXELS:
            needed = resident + reserved + limits.max_concurrent * cost.bytes_for(MIN_SERVED_PIXELS)
            raise ValueError(
                f"a memory budget of {budget / MIB:.0f} MiB leaves {name} too little for even a "
                f"{MIN_SERVED_PIXELS}-pixel image (the server holds {resident / MIB:.0f} MiB with its models, "
                f"uploads reserve {reserved / MIB:.0f} MiB, {limits.max_concurrent} inference(s) at a time): "
                f"give --memory-budget {needed / MIB:.0f}M or more, or lower --max-concurrent, --queue-size, "
                "--max-uploads or --max-upload-bytes"
            )
        max_pixels[name] = min(limits.max_pixels, pixels)
    return MemoryPlan(budget, resident, reserved, per_inference, max_pixels)
