"""The calibration plot draws each group as shaded strips: one mesh whatever the number of events."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.figure import Figure

from autopack_pipeline.domain.analysis import CoverageGroup
from autopack_pipeline.services import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _group(key: tuple[str, str], ratios, bounds=()) -> CoverageGroup:
    ratios, bounds = np.asarray(ratios, dtype=float), np.asarray(bounds, dtype=float)
    clean, cut = np.arange(len(ratios)), np.arange(len(ratios), len(ratios) + len(bounds))
    return CoverageGroup(key=key, clean_rows=clean, censored_rows=cut, predicted=np.ones(len(ratios)),
                         actual=ratios, budget=np.ones(len(ratios)), censored_predicted=np.ones(len(bounds)),
                         censored_actual=bounds, ratios=ratios, bounds=bounds)


@pytest.fixture
def drawn(monkeypatch):
    """Render into memory and keep the figure that was saved, to look at what it drew."""
    saved: list[Figure] = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)

    def render(observations):
        out = io.BytesIO()
        plots.render_calibration_plot(out, observations, [])
        assert out.getvalue().startswith(PNG_MAGIC)
        return saved[-1].axes[0]

    return render


@pytest.mark.parametrize("events", [10, 200_000])
def test_one_mesh_draws_every_group_however_many_events(drawn, events):
    rng = np.random.default_rng(1)
    observations = {(c, "low"): _group((c, "low"), rng.lognormal(0, 0.4, events), rng.uniform(1, 3, events // 10))
                    for c in ("docs", "tests", "frontend")}
    axes = drawn(observations)
    assert len([c for c in axes.collections if isinstance(c, QuadMesh)]) == 1
    assert not [c for c in axes.collections if isinstance(c, PathCollection)]  # no dot per event


def test_each_value_shades_its_own_bin_in_its_groups_band(drawn):
    observations = {("docs", "low"): _group(("docs", "low"), [0.5, 0.5, 0.5, 2.0], [3.0]),
                    ("tests", "low"): _group(("tests", "low"), [1.0])}
    axes = drawn(observations)
    mesh = next(c for c in axes.collections if isinstance(c, QuadMesh))
    colours = np.asarray(mesh.get_array())  # (bands, bins, RGBA): per row a clean, a truncated and a gap band
    edges = np.asarray(mesh.get_coordinates())[0, :, 0]
    alpha = colours[..., 3]

    def bins_of(*values):
        return sorted({int(np.searchsorted(edges, v, side="right")) - 1 for v in values})

    assert list(np.flatnonzero(alpha[0])) == bins_of(0.5, 2.0)  # docs, clean
    assert alpha[0, bins_of(0.5)[0]] > alpha[0, bins_of(2.0)[0]] > 0  # three events shade darker than one
    assert list(np.flatnonzero(alpha[1])) == bins_of(3.0)  # docs, truncated lower bounds
    assert not alpha[2].any() and not alpha[4].any()  # the gap between rows; tests has no truncated event
    assert list(np.flatnonzero(alpha[3])) == bins_of(1.0)


def test_groups_without_placeable_values_still_draw(drawn):
    # All truncated; a zero and an infinite ratio (a log axis cannot place them); and no groups at all.
    drawn({("docs", "low"): _group(("docs", "low"), [], [2.0, 4.0]),
           ("tests", "low"): _group(("tests", "low"), [0.0, np.inf, 1.5])})
    axes = drawn({})
    assert not axes.collections


def test_the_layout_is_tight_layouts_with_the_legend_room_to_the_bit(drawn, monkeypatch):
    """``_lay_out`` measures the labels once, where ``tight_layout(rect=...)`` measures them twice: the
    subplot parameters must be the very same floats, so the picture is the same PNG."""
    rng = np.random.default_rng(3)
    observations = {(c, x): _group((c, x), rng.lognormal(0, 0.5, 50), rng.uniform(1, 3, 5))
                    for c in ("configuration", "implementation", "docs") for x in ("maintenance", "low")}

    def picture() -> tuple[dict, bytes]:
        out = io.BytesIO()
        plots.render_calibration_plot(out, observations, [])
        return vars(drawn(observations).figure.subplotpars).copy(), out.getvalue()

    ours = picture()

    def tight(figure: Figure, legend_room: float) -> None:
        figure.tight_layout(rect=(0, legend_room, 1, 1))
        figure.set_layout_engine(None)

    monkeypatch.setattr(plots, "_lay_out", tight)
    assert picture() == ours
    assert ours[0]["bottom"] > 0.45 / 4.9  # the legend's room (figure height 4.9 in) and the x labels' below the axes


def test_loading_the_plot_module_leaves_matplotlibs_property_tables_as_they_were():
    """plots.py stubs matplotlib.artist.kwdoc only while it imports the artists it draws with: afterwards
    the real function is back (any artist defined later gets its table) and set() keeps its signature."""
    import inspect

    import matplotlib.artist

    with plots._property_tables_left_out():
        assert matplotlib.artist.kwdoc(Figure) == ""
    assert matplotlib.artist.kwdoc.__module__ == "matplotlib.artist"
    assert "facecolor" in matplotlib.artist.kwdoc(Figure)
    assert "facecolor" in inspect.signature(Figure.set).parameters
