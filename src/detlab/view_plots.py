"""The look-inside views (:mod:`detlab.models.contract`: boxes, heat maps, points, network windows)
drawn with matplotlib, one panel a view over its image: what ``detlab serve``'s page draws, for a
notebook or a report.

    import detlab
    model = detlab.load("runs/shapes/best")
    found, inside = model.look_inside("photo.jpg")
    detlab.plot_views("photo.jpg", inside.views).savefig("inside.png")

Each panel's title is the view's. Boxes and points are coloured by their label text (the same text,
the same colour), so the class of a box or the object a cell was assigned to reads across panels.
matplotlib and torch are imported when a figure is drawn, so ``import detlab`` stays light.
"""

from __future__ import annotations

import colorsys
import textwrap
from collections.abc import Sequence

import numpy as np

MAX_TEXTS = 40  # a panel with more boxes or points than this draws them without their labels
TITLE_WIDTH = 42  # characters a title line


def label_colour(text: str | None) -> tuple[float, float, float]:
    """A saturated colour for a label, the same for the same text (its first word: a class name)."""
    if not text:
        return (1.0, 0.85, 0.0)
    key = sum((index + 1) * ord(char) for index, char in enumerate(text.split(" ")[0]))
    return colorsys.hsv_to_rgb((key * 0.618034) % 1.0, 0.85, 1.0)


def as_picture(image) -> np.ndarray:
    """Any image ``detlab`` takes (a path, PIL image, ``H x W x 3`` uint8 array, ``Tensor[3, H, W]``
    in [0, 1]) -> ``float [H, W, 3]`` in [0, 1] for ``imshow``."""
    from detlab.data.images import to_image_tensor

    return to_image_tensor(image).detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def draw_boxes(axes, boxes, labels=None, scores=None, width: float = 1.5) -> None:
    """``boxes`` ``[K, 4]`` xyxy pixels as rectangles; their labels (and scores) unless too many."""
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    texts = len(boxes) <= MAX_TEXTS
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        label = labels[index] if labels is not None else None
        colour = label_colour(label)
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=width))
        text = " ".join(filter(None, [label, None if scores is None else f"{float(scores[index]):.2f}"]))
        if texts and text:
            axes.text(x1, y1, text, fontsize=7, color="black", va="bottom", backgroundcolor=(*colour, 0.7))


def draw_points(axes, points, labels=None, scores=None) -> None:
    """``points`` ``[K, 2]`` ``(x, y)`` pixels as dots, sized by score when there are scores."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    colours = [label_colour(labels[index] if labels is not None else None) for index in range(len(points))]
    sizes = 12 if scores is None else 8 + 40 * np.clip(np.asarray(scores, dtype=float), 0, 1)
    axes.scatter(points[:, 0], points[:, 1], s=sizes, c=colours, edgecolors="black", linewidths=0.5)
    if labels is not None and len(points) <= MAX_TEXTS:
        for (x, y), label in zip(points, labels):
            axes.text(x + 2, y - 2, label, fontsize=6, color="white")


def draw_heatmap(axes, view) -> None:
    """A map of values in [0, 1] over its region, half transparent, with cell borders and texts."""
    values = view.values.detach().float().cpu().clamp(0, 1).numpy()
    x1, y1, x2, y2 = view.region
    axes.imshow(
        values, extent=(x1, x2, y2, y1), cmap="inferno", vmin=0, vmax=1, alpha=0.55, interpolation="nearest"
    )
    rows, columns = values.shape
    if view.grid:
        for column in range(columns + 1):
            axes.plot([x1 + (x2 - x1) * column / columns] * 2, [y1, y2], color="white", linewidth=0.4)
        for row in range(rows + 1):
            axes.plot([x1, x2], [y1 + (y2 - y1) * row / rows] * 2, color="white", linewidth=0.4)
    if view.labels is not None:
        for row, texts in enumerate(view.labels):
            for column, text in enumerate(texts):
                if text:
                    centre_x = x1 + (x2 - x1) * (column + 0.5) / columns
                    centre_y = y1 + (y2 - y1) * (row + 0.5) / rows
                    axes.text(centre_x, centre_y, text, fontsize=5, color="white", ha="center", va="center")


def draw_view(axes, picture: np.ndarray, view) -> None:
    """One view on ``axes``: over ``picture`` (``[H, W, 3]``), or, for a network window, alone."""
    from detlab.models.contract import BoxesView, HeatmapView, PointsView, WindowView

    if isinstance(view, WindowView):
        axes.imshow(view.window.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
        if view.boxes is not None:
            draw_boxes(axes, view.boxes.cpu(), view.labels)
        if view.points is not None:
            draw_points(axes, view.points.cpu(), view.labels)
    else:
        height, width = picture.shape[:2]
        axes.imshow(picture)
        if isinstance(view, BoxesView):
            draw_boxes(axes, view.boxes.detach().cpu(), view.labels, view.scores)
        elif isinstance(view, PointsView):
            draw_points(axes, view.points.detach().cpu(), view.labels, view.scores)
        elif isinstance(view, HeatmapView):
            draw_heatmap(axes, view)
        else:
            raise TypeError(f"not a view: {type(view).__name__}")
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
    axes.set_title("\n".join(textwrap.wrap(view.title, TITLE_WIDTH)), fontsize=8)
    axes.axis("off")


def plot_views(image, views: Sequence, columns: int = 3, panel_size: float = 3.0, title: str | None = None):
    """A matplotlib ``Figure``: one panel a view of ``views`` (``BoxesView``, ``HeatmapView``,
    ``PointsView``, ``WindowView``; e.g. ``inside.views`` of ``model.look_inside(image)``, or
    ``model.assignment(image, target)``), each over ``image`` (any image ``detlab.load(...).predict``
    takes) or, given a list of images, each over its own; ``columns`` panels a row of
    ``panel_size`` inches."""
    import matplotlib.pyplot as plt

    if not views:
        raise ValueError("no views to draw")
    if isinstance(image, list | tuple):
        if len(image) != len(views):
            raise ValueError(f"{len(image)} images for {len(views)} views: give one image, or one a view")
        pictures = [as_picture(each) for each in image]
    else:
        pictures = [as_picture(image)] * len(views)
    columns = min(columns, len(views))
    rows = -(-len(views) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * panel_size, rows * panel_size * 1.1), squeeze=False
    )
    for panel, picture, view in zip(axes.flat, pictures, views):
        draw_view(panel, picture, view)
    for panel in list(axes.flat)[len(views) :]:
        panel.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
