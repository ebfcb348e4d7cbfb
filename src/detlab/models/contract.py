"""What detlab asks of a method, written down: the engine, export, serve and compare rely on this
and on nothing else.

A method is two things:

- a :class:`Method` entry of ``detlab.models.MODELS``: the facts that need no model (its config
  class, how to build it, its defaults, its name in tables, its row in the lecture's table);
- a model, an ``nn.Module`` that obeys the :class:`Detector` protocol. Every capability that a
  method may or may not have is a method of the protocol with a stated "none" answer (``None``, an
  empty list, :class:`NotExportable`), so callers ask and never probe with ``getattr``.
  :class:`DetectorModule` gives every optional capability its "none" answer; a method subclasses
  it and overrides what it has.

The forward pass (ARCHITECTURE.md): ``model(images, targets)`` in training mode returns
``{"loss_<name>": scalar}``; in eval mode ``model(images, trace=...)`` returns one dict an image,
``{"boxes": Tensor[K, 4] (x1, y1, x2, y2) pixels of the image as given, "scores": Tensor[K],
"labels": int64 Tensor[K] (1..C)}`` (DeepPose adds ``"keypoints"``), and records named
intermediate outputs in ``trace`` (a :class:`Trace`) for the look-inside view; each of those stage
marks is also where a pass stops once a :func:`stop_at` deadline has passed. A model states what a
pass costs in memory (:class:`MemoryCost`), so a server can bound it.

Recipes (how a method trains) are plain data the engine runs: a list of :class:`Stage` (one
``engine.fit`` call) and :class:`Step` (one non-gradient step).

Shape letters: K detections or boxes, S a window side, h x w a map.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from detlab.eval.coco import COCOEvaluator
from detlab.models.backbones import sync_batchnorm

# -- recipes: how a method is trained, as data the engine runs -----------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``engine.fit`` call. ``prepare(model)`` sets what requires gradients and which losses the
    model computes (called before the optimiser is built); ``budget``: this stage's share of the
    run's budget (time, steps or epochs); ``train_changes``: ``TrainConfig`` fields changed for
    this stage only (e.g. ``{"optimizer": "sgd", "lr": 0.01}``); ``evaluate``: whether it
    evaluates on the validation split and picks ``best.pt``."""

    name: str
    prepare: Callable[[nn.Module], None] | None = None
    budget: float = 1.0
    train_changes: dict = dataclasses.field(default_factory=dict)
    evaluate: bool = True


@dataclasses.dataclass(frozen=True)
class Step:
    """One non-gradient step: ``run(model, train_dataset)`` changes the model's weights or buffers
    in place and returns a dict of numbers worth logging (or ``None``). It runs on every process of
    a distributed run alike (it must be deterministic), then rank 0 saves a checkpoint."""

    name: str
    run: Callable[[nn.Module, Any], dict | None]


JOINT = "joint"  # the recipe of a method that trains everything together in one stage


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """``requires_grad`` of every parameter of ``module``. A sub-module whose parameters are all
    frozen also keeps its BatchNorm statistics (the engine runs it in eval mode)."""
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


# -- the look-inside view: named intermediate outputs, and what the page draws -------------------


class PassCancelled(Exception):
    """A test pass stopped at a stage mark because its deadline (:func:`stop_at`) had passed."""


# The monotonic time (``time.monotonic()``) after which a pass stops at its next stage mark; one
# value a thread (a context variable), so concurrent passes each keep their own.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("detlab_deadline", default=None)


@contextlib.contextmanager
def stop_at(deadline: float | None) -> Iterator[None]:
    """Within the block, every stage mark of a test pass in this thread (``trace(name, ...)``,
    :data:`NO_TRACE`'s included) raises :class:`PassCancelled` once ``time.monotonic()`` passes
    ``deadline`` (``None``: never), so work nobody waits for any more stops at the end of its
    current stage instead of running to the end (``detlab serve``'s time limit)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline(stage: str) -> None:
    """:class:`PassCancelled` if this thread's :func:`stop_at` deadline has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise PassCancelled(f"stopped after stage {stage!r}: the deadline had passed")


class Trace:
    """Named intermediate outputs of one eval forward pass, each with the time it was ready.

    A model calls ``trace(name, **values)`` at the end of each stage of its test pass; its
    :meth:`Detector.look_inside` reads ``trace[name]`` (the values of the last mark of that name),
    :meth:`all` (of every mark of that name: a stage run once a scale) and :meth:`stages` (how
    long each stage took). :data:`NO_TRACE` records nothing, for ordinary inference. A trace
    belongs to one call, so concurrent requests never share one. Every mark is also where a pass
    whose :func:`stop_at` deadline has passed stops.
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.marks: list[tuple[str, float, dict[str, Any]]] = []

    def __call__(self, name: str, **values: Any) -> None:
        self.marks.append((name, time.perf_counter(), values))
        check_deadline(name)

    def all(self, name: str) -> list[dict[str, Any]]:
        return [values for mark, _, values in self.marks if mark == name]

    def __getitem__(self, name: str) -> dict[str, Any]:
        found = self.all(name)
        if not found:
            raise KeyError(f"the trace has no mark {name!r}; it has {[mark for mark, _, _ in self.marks]}")
        return found[-1]

    def __contains__(self, name: str) -> bool:
        return bool(self.all(name))

    def stages(self, title: Callable[[str, dict[str, Any]], str | None]) -> list[InsideStage]:
        """One :class:`InsideStage` a mark, in order, named ``title(name, values)``; a mark titled
        ``None`` joins the next one. Each lasts from the previous stage (or the start) to its own
        mark, so together they are the whole pass, glue code included."""
        stages, previous = [], self.started
        for name, at, values in self.marks:
            text = title(name, values)
            if text is not None:
                stages.append(InsideStage(text, round((at - previous) * 1000, 2)))
                previous = at
        return stages


class _NoTrace(Trace):
    def __call__(self, name: str, **values: Any) -> None:
        check_deadline(name)


NO_TRACE: Trace = _NoTrace()


@dataclasses.dataclass
class InsideStage:
    """One stage of a test pass and its milliseconds."""

    name: str
    ms: float


@dataclasses.dataclass
class BoxesView:
    """Boxes drawn on the image: ``boxes`` ``Tensor[K, 4]`` xyxy pixels of the image as given."""

    title: str
    boxes: Tensor
    labels: list[str] | None = None
    scores: Tensor | None = None


@dataclasses.dataclass
class HeatmapView:
    """A map of values in [0, 1] (``Tensor[h, w]``, rows first) over ``region`` ``(x1, y1, x2, y2)``
    of the image; ``labels``: a text a cell; ``grid``: draw the cells' borders."""

    title: str
    values: Tensor
    region: tuple[float, float, float, float]
    labels: list[list[str]] | None = None
    grid: bool = False


@dataclasses.dataclass
class PointsView:
    """Points ``Tensor[K, 2]`` ``(x, y)`` pixels of the image, with optional labels and scores."""

    title: str
    points: Tensor
    labels: list[str] | None = None
    scores: Tensor | None = None


@dataclasses.dataclass
class WindowView:
    """The network's input window ``Tensor[3, S, S]`` in [0, 1], with ``boxes`` (``Tensor[K, 4]``) or
    ``points`` (``Tensor[K, 2]``) in the window's pixels."""

    title: str
    window: Tensor
    boxes: Tensor | None = None
    points: Tensor | None = None
    labels: list[str] | None = None


View = BoxesView | HeatmapView | PointsView | WindowView

MAX_PROPOSALS_SHOWN = 300  # the RPN keeps 300 at test time; Selective Search up to 2000


def proposals_title(kind: str, proposals: Tensor) -> str:
    """A proposals view's title: ``"RPN: all 300 proposals"``, ``"Selective Search: the first 300 of
    1873 proposals"`` (a view shows at most :data:`MAX_PROPOSALS_SHOWN`)."""
    shown = min(len(proposals), MAX_PROPOSALS_SHOWN)
    return (
        f"{kind}: {'all ' if shown == len(proposals) else f'the first {shown} of '}{len(proposals)} proposals"
    )


@dataclasses.dataclass
class Inside:
    """What :meth:`Detector.look_inside` shows of one test pass: its stages and what to draw."""

    stages: list[InsideStage]
    views: list[View] = dataclasses.field(default_factory=list)


# -- memory: what one test pass costs, so a server can bound it ----------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryCost:
    """Peak memory one eval pass over one image of ``P`` pixels adds to a process, beyond the input
    ``float32 Tensor[3, H, W]`` itself: ``fixed_bytes + bytes_per_input_pixel * P``.

    A method states it from measurements (``benchmarks/bench_serve_memory.py`` measures every
    method's peak at several image sizes and checks that the stated cost covers each with a
    margin); ``detlab serve`` derives from it the most pixels an image may have so that its
    inferences fit the server's memory budget. ``fixed_bytes`` is what an image of any size costs
    (a method that resizes every image to its working size spends it there);
    ``bytes_per_input_pixel`` what grows with the image (its copies before the resize; OverFeat's
    largest scale)."""

    bytes_per_input_pixel: float
    fixed_bytes: float = 0.0

    def bytes_for(self, pixels: int) -> float:
        return self.fixed_bytes + self.bytes_per_input_pixel * pixels

    def pixels_within(self, budget_bytes: float) -> int:
        """The most pixels an image may have for a pass to fit ``budget_bytes`` (0: none fits)."""
        return max(0, int((budget_bytes - self.fixed_bytes) // self.bytes_per_input_pixel))


MIB = 1024 * 1024


# -- export, data fitting, evaluation ------------------------------------------------------------


class NotExportable(ValueError):
    """A model that cannot be one ONNX graph; the message says why."""


@dataclasses.dataclass
class ExportPlan:
    """What ``detlab export`` traces and stores for a model.

    ``graph``: the module traced, from ``input_names`` tensors to ``output_names`` raw outputs;
    ``example``: one input of each; ``dynamic_axes``: ``torch.onnx``'s; ``layout``: which
    post-processing of :mod:`detlab.export.runtime` turns the raw outputs into detections
    (``two_stage``, ``one_stage``, ``grid`` or ``window``); ``preprocess`` / ``postprocess``: the
    settings the runtime needs (stored in the file's metadata)."""

    graph: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example: tuple[Tensor, ...]
    layout: str
    preprocess: dict
    postprocess: dict
    dynamic_axes: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FitGeometry:
    """What fitting a method's ``"auto"`` settings to the training data needs to know of its model
    (:mod:`detlab.models.data_fit`): its feature ``strides``, and the IoU at which its anchors
    count as positive (``None``: no anchors to fit)."""

    strides: tuple[float, ...]
    anchor_positive_iou: float | None = None


class Evaluator(Protocol):
    """An evaluator: ``update(predictions, targets)`` per batch, then ``compute()`` (a dict of
    floats, or an object whose ``summary()`` is one); ``detlab.eval``'s obey it."""

    def update(self, predictions: list[dict], targets: list[dict]) -> None: ...

    def compute(self) -> Any: ...


EVALUATIONS = ("detection", "localization", "keypoints")


@runtime_checkable
class Detector(Protocol):
    """What a model of any method offers (:class:`DetectorModule` implements every optional part
    with its "none" answer)."""

    evaluation: str  # one of EVALUATIONS: how its eval outputs are scored
    recipes: tuple[str, ...]  # its recipes' names, the default first

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, *, trace: Trace = NO_TRACE
    ) -> Any: ...

    def recipe(self, name: str) -> list[Stage | Step]: ...

    def training_resize(self) -> int | tuple[int, int] | None: ...

    def training_proposals(self) -> Any: ...

    def input_side(self) -> int | None: ...

    def set_progress(self, fraction: float) -> None: ...

    def make_evaluator(self, classes: list[str]) -> Evaluator: ...

    def merge_settings(self) -> tuple[float, int]: ...

    def proposal_method(self) -> Callable[[Tensor], Tensor] | None: ...

    def image_batcher(self) -> nn.Module | None: ...

    def fit_geometry(self) -> FitGeometry | None: ...

    def export_plan(self) -> ExportPlan: ...

    def look_inside(self, image: Tensor, class_name: Callable[[int], str]) -> tuple[dict, Inside]: ...

    def assignment(self, image: Tensor, target: dict, class_name: Callable[[int], str]) -> list[View]: ...

    def window_scores(self, image: Tensor, scale: float, convolutional: bool) -> Tensor | None: ...

    def stop_disk_caches(self) -> None: ...

    def memory_cost(self) -> MemoryCost | None: ...

    def use_sync_batchnorm(self, world_size: int, device: Any) -> bool: ...


class DetectorModule(nn.Module):
    """The base of every detlab model: the :class:`Detector` protocol with each optional capability
    answered "none". A method overrides what it has."""

    evaluation = "detection"
    recipes: tuple[str, ...] = (JOINT,)

    def recipe(self, name: str) -> list[Stage | Step]:
        """The stages of recipe ``name`` (one of :attr:`recipes`): by default one stage, all together."""
        return [Stage(name)]

    def training_resize(self) -> int | tuple[int, int] | None:
        """How the engine resizes training images once, before the augmentations: ``(S, S)`` warps
        them to a fixed window, an ``int`` resizes the longer side to it, ``None`` keeps them."""
        return None

    def input_side(self) -> int | None:
        """The longer side of the network's input in training, which sizes mosaics (``None``: not fixed)."""
        return None

    def training_proposals(self):
        """What the data layer attaches to each training image as ``"proposals"`` (a
        :class:`detlab.proposals.RecordProposals`), or ``None``."""
        return None

    def set_progress(self, fraction: float) -> None:
        """The share of the training budget spent (the engine tells it before each step)."""

    def make_evaluator(self, classes: list[str]) -> Evaluator:
        """A fresh evaluator of this model's eval outputs (COCO detection metrics by default)."""
        return COCOEvaluator(classes)

    def merge_settings(self) -> tuple[float, int]:
        """``(NMS IoU, detections an image)`` for merging this model's detections with others'
        (ensembles, multi-scale testing)."""
        return 0.5, 100

    def proposal_method(self) -> Callable[[Tensor], Tensor] | None:
        """The external proposal method ``image -> Tensor[K, 4]`` its test pass runs first (R-CNN,
        Fast R-CNN); such a model's forward also takes ``proposals=[Tensor[K, 4], ...]``. ``None``:
        proposals, if any, come from inside the network."""
        return None

    def image_batcher(self) -> nn.Module | None:
        """The :class:`~detlab.models.transform.ImageBatcher` that resizes its input (multi-scale
        testing scales it), or ``None``."""
        return None

    def fit_geometry(self) -> FitGeometry | None:
        """What fitting ``"auto"`` settings to data needs of this model, or ``None`` (nothing to fit)."""
        return None

    def export_plan(self) -> ExportPlan:
        raise NotExportable(f"{type(self).__name__} has no ONNX export")

    def look_inside(self, image: Tensor, class_name: Callable[[int], str]) -> tuple[dict, Inside]:
        """``(the eval output for image, what happened inside)``; by default one stage, nothing drawn.
        ``class_name(label)``: a label's name, for the views' texts."""
        started = time.perf_counter()
        output = self([image])[0]
        return output, Inside(
            [InsideStage("the whole model", round((time.perf_counter() - started) * 1000, 2))]
        )

    def assignment(self, image: Tensor, target: dict, class_name: Callable[[int], str]) -> list[View]:
        """How training hands ``target``'s objects (``{"boxes": Tensor[N, 4], "labels"}`` in pixels
        of ``image``) to the model's outputs, drawn in pixels of ``image`` (which cells, anchors or
        points learn each object); by default nothing to draw (``[]``)."""
        return []

    def window_scores(self, image: Tensor, scale: float, convolutional: bool) -> Tensor | None:
        """A sliding-window classifier's object class probabilities at every window position of
        ``image`` resized by ``scale``: ``Tensor[C, h, w]`` (background left out), computed one crop
        at a time (``convolutional=False``) or in one pass of the network with its FC layers as
        convolutions (``True``); ``None``: not a sliding-window classifier."""
        return None

    def stop_disk_caches(self) -> None:
        """Stop keeping anything on disk between test passes (a server, a timing pass)."""

    def memory_cost(self) -> MemoryCost | None:
        """What one eval pass costs in memory (:class:`MemoryCost`), or ``None``: not measured
        (``detlab serve`` then assumes a cautious cost, its ``UNMEASURED_COST``)."""
        return None

    def use_sync_batchnorm(self, world_size: int, device) -> bool:
        """Before data-parallel training: BatchNorm layers of a backbone built with
        ``model.batchnorm=sync`` become ``SyncBatchNorm`` (:func:`detlab.models.backbones.sync_batchnorm`);
        returns whether any did."""
        return sync_batchnorm(self, world_size, device)


@dataclasses.dataclass(frozen=True)
class LectureRow:
    """A method's row in the lecture's table (Girshick's Fast R-CNN and Ren et al.'s Faster R-CNN
    papers, VGG-16, VOC 2007 test): seconds a test image with proposals, and mAP (%)."""

    seconds_per_image: float
    mean_ap: float


@dataclasses.dataclass(frozen=True)
class Method:
    """A method of ``detlab.models.MODELS``: calling it builds the model, ``method(config,
    num_classes)``.

    ``config``: its config dataclass (the ``model`` section of a run); ``build(config,
    num_classes)``; ``label``: its name in tables; ``run_defaults``: its own data and training
    defaults (``{"data": {...}, "train": {...}}``, applied before a preset and ``--set``);
    ``stored_defaults``: the value of a config field a checkpoint saved before the field existed
    was trained with (so an old checkpoint rebuilds its network); ``compared``: part of ``detlab
    compare``'s default set; ``lecture``: its row in the lecture's table; ``needs_every_class``:
    it cannot train unless every class has a training box (R-CNN's per-class SVMs)."""

    name: str
    config: type
    build: Callable[[Any, int], nn.Module]
    label: str
    run_defaults: dict = dataclasses.field(default_factory=dict)
    stored_defaults: dict = dataclasses.field(default_factory=dict)
    compared: bool = True
    lecture: LectureRow | None = None
    needs_every_class: bool = False

    def __call__(self, config: Any, num_classes: int) -> nn.Module:
        if not isinstance(config, self.config):
            raise TypeError(
                f"{self.name} is built from a {self.config.__name__}, got {type(config).__name__}"
            )
        model = self.build(config, num_classes)
        if not isinstance(model, Detector):
            raise TypeError(f"{self.name}'s build returned a {type(model).__name__}, which is not a Detector")
        return model
