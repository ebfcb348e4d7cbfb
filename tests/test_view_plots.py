"""``detlab.plot_views``: one panel a look-inside view, drawn over its image with matplotlib."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from matplotlib.patches import Rectangle

import detlab
from detlab.models.contract import BoxesView, HeatmapView, PointsView, WindowView
from detlab.view_plots import label_colour

matplotlib.use("Agg")


def test_each_view_gets_a_panel_with_its_title_and_what_it_holds(tmp_path):
    image = torch.rand(3, 40, 60)
    views = [
        BoxesView("two boxes", torch.tensor([[1.0, 2.0, 20.0, 30.0], [30.0, 5.0, 59.0, 39.0]]), ["a", "b"]),
        HeatmapView("a 2 x 3 map", torch.rand(2, 3), (0.0, 0.0, 60.0, 40.0), [["x"] * 3] * 2, grid=True),
        PointsView(
            "three points", torch.tensor([[5.0, 5.0], [10.0, 20.0], [50.0, 30.0]]), scores=torch.rand(3)
        ),
        WindowView("a window", torch.rand(3, 16, 16), boxes=torch.tensor([[2.0, 2.0, 14.0, 14.0]])),
    ]
    figure = detlab.plot_views(image, views, columns=3, title="inside")
    panels = figure.axes
    assert len(panels) == 6 and not panels[4].axison and not panels[5].axison
    assert [panel.get_title() for panel in panels[:4]] == [
        "two boxes",
        "a 2 x 3 map",
        "three points",
        "a window",
    ]
    assert sum(isinstance(patch, Rectangle) for patch in panels[0].patches) == 2
    assert [text.get_text() for text in panels[0].texts] == ["a", "b"]
    assert len(panels[1].images) == 2 and len(panels[1].texts) == 6  # the picture and the map; a text a cell
    assert panels[1].images[1].get_extent() == [0.0, 60.0, 40.0, 0.0]
    assert len(panels[2].collections[0].get_offsets()) == 3
    assert panels[3].images[0].get_array().shape[:2] == (16, 16) and len(panels[3].patches) == 1
    figure.savefig(tmp_path / "views.png")
    assert (tmp_path / "views.png").stat().st_size > 1000


def test_each_view_may_have_its_own_image():
    wide, tall = torch.rand(3, 20, 80), torch.rand(3, 80, 20)
    views = [BoxesView("wide", torch.tensor([[0.0, 0.0, 10.0, 10.0]])), BoxesView("tall", torch.zeros(0, 4))]
    first, second = detlab.plot_views([wide, tall], views).axes
    assert first.images[0].get_array().shape[:2] == (20, 80) and second.images[0].get_array().shape[:2] == (
        80,
        20,
    )
    assert first.get_xlim() == (0.0, 80.0) and second.get_ylim() == (80.0, 0.0)
    with pytest.raises(ValueError, match="3 images for 2 views"):
        detlab.plot_views([wide, tall, wide], views)


def test_the_same_label_gets_the_same_colour_and_nothing_to_draw_is_an_error():
    assert label_colour("square 3") == label_colour("square") != label_colour("circle")
    with pytest.raises(ValueError, match="no views"):
        detlab.plot_views(torch.rand(3, 8, 8), [])
    with pytest.raises(TypeError, match="not a view"):
        detlab.plot_views(torch.rand(3, 8, 8), ["boxes"])
