"""The calibration plot, checked in its pixels through the geometry it was drawn with."""

from __future__ import annotations

import io
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image, ImageDraw

from autopack_pipeline.domain.analysis import CoverageGroup
from autopack_pipeline.domain.analysis.calibration_results import CalibrationResult, GroupCalibration, Provenance
from autopack_pipeline.services import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOLERANCE = 1.1


def _group(key: tuple[str, str], ratios, bounds=()) -> CoverageGroup:
    ratios, bounds = np.asarray(ratios, dtype=float), np.asarray(bounds, dtype=float)
    clean, cut = np.arange(len(ratios)), np.arange(len(ratios), len(ratios) + len(bounds))
    return CoverageGroup(key=key, clean_rows=clean, censored_rows=cut, predicted=np.ones(len(ratios)),
                         actual=ratios, budget=np.ones(len(ratios)), censored_predicted=np.ones(len(bounds)),
                         censored_actual=bounds, ratios=ratios, bounds=bounds)


def _result(method: str, chosen: dict[tuple[str, str], tuple[float, dict]]) -> CalibrationResult:
    """A method's result proposing ``multiplier`` with ``method_details`` per group; the rest is filler."""
    groups = [GroupCalibration(category=c, complexity=x, sample_count=10, avg_actual=1.0, avg_estimated=1.0,
                               avg_ratio=1.0, median_ratio=1.0, min_ratio=1.0, max_ratio=1.0, ratio_std=0.0,
                               confidence=1.0, proposed_multiplier=multiplier, median_budget_waste=None,
                               p90_budget_waste=None, avg_selected_budget=None, actionable=True, action="",
                               method_details=details)
              for (c, x), (multiplier, details) in chosen.items()]
    return CalibrationResult(method=method, parameters={}, groups=groups, below_threshold=[], provenance=Provenance())


def _render(observations, results=()) -> tuple[np.ndarray, plots.Geometry]:
    """The PNG's pixels (height, width, RGB) and the geometry they were drawn with."""
    out = io.BytesIO()
    plots.render_calibration_plot(out, observations, list(results), tolerance=TOLERANCE)
    assert out.getvalue().startswith(PNG_MAGIC)
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    geometry = plots.plot_geometry(observations, list(results), tolerance=TOLERANCE)
    assert pixels.shape == (geometry.height, plots.WIDTH, 3)
    return pixels, geometry


def _line_columns(geometry: plots.Geometry) -> set[int]:
    """The columns the vertical lines cross every row on (grid, 1 and the tolerance), a pixel either side."""
    values = [value for value, _ in plots.ticks(geometry.low, geometry.high)] + [1.0, TOLERANCE]
    return {round(geometry.x(v)) + d for v in values for d in (-1, 0, 1)}


def _ink(pixels: np.ndarray, geometry: plots.Geometry, y: int) -> np.ndarray:
    """Per bin, the darkest ink (255 - the lowest channel) on pixel row ``y``, off the vertical lines."""
    lines, bins = _line_columns(geometry), geometry.bin_of_columns()
    ink = np.zeros(plots.BINS, dtype=int)
    for offset, index in enumerate(bins):
        column = geometry.left + offset
        if column not in lines:
            ink[index] = max(ink[index], 255 - pixels[y, column].min())
    return ink


def _bin(geometry: plots.Geometry, value: float) -> int:
    return int(np.searchsorted(geometry.edges, value, side="right")) - 1


def _middle(band: tuple[int, int]) -> int:
    return (band[0] + band[1]) // 2


def test_each_value_shades_its_own_bin_in_its_groups_band_and_more_events_darker():
    observations = {("docs", "low"): _group(("docs", "low"), [0.5, 0.5, 0.5, 2.0], [3.0]),
                    ("tests", "low"): _group(("tests", "low"), [1.05])}
    pixels, g = _render(observations)
    docs_clean = _ink(pixels, g, _middle(g.band(0, plots.CLEAN_BAND)))
    assert list(np.flatnonzero(docs_clean)) == [_bin(g, 0.5), _bin(g, 2.0)]
    assert docs_clean[_bin(g, 0.5)] > docs_clean[_bin(g, 2.0)] > 0  # three events shade darker than one
    truncated_row = _middle(g.band(0, plots.TRUNCATED_BAND))
    assert list(np.flatnonzero(_ink(pixels, g, truncated_row))) == [_bin(g, 3.0)]  # below, in red
    red = pixels[truncated_row, g.left + np.flatnonzero(g.bin_of_columns() == _bin(g, 3.0))]
    assert (red[:, 0] > red[:, 1] + 100).all()
    assert list(np.flatnonzero(_ink(pixels, g, _middle(g.band(1, plots.CLEAN_BAND))))) == [_bin(g, 1.05)]
    assert not _ink(pixels, g, _middle(g.band(1, plots.TRUNCATED_BAND))).any()  # tests has no truncated event
    # Between the rows (the end of docs' red band to the top of tests' grey one), nothing but the lines.
    assert g.band(0, plots.TRUNCATED_BAND)[1] < round(g.y(0.5)) < g.band(1, plots.CLEAN_BAND)[0]
    for y in range(g.band(0, plots.TRUNCATED_BAND)[1], g.band(1, plots.CLEAN_BAND)[0]):
        assert not _ink(pixels, g, y).any()
    # And the ink sits where the log axis puts each value.
    for row, band, value in ((0, plots.CLEAN_BAND, 0.5), (0, plots.CLEAN_BAND, 2.0), (0, plots.TRUNCATED_BAND, 3.0),
                             (1, plots.CLEAN_BAND, 1.05)):
        inked = np.flatnonzero(pixels[_middle(g.band(row, band)), g.left:g.right].min(axis=1) < 250) + g.left
        assert np.abs(inked - g.x(value)).min() <= 2


def test_each_methods_mark_is_at_its_multiplier_in_its_row_and_the_coverage_diamond_at_its_bound():
    rng = np.random.default_rng(2)
    observations = {k: _group(k, rng.lognormal(0, 0.5, 200)) for k in (("docs", "low"), ("tests", "high"))}
    results = [_result("coverage", {("docs", "low"): (1.6, {"upper_ratio_bound": 1.76}),
                                    ("tests", "high"): (0.7, {"upper_ratio_bound": 0.77})}),
               _result("autopack-median", {("docs", "low"): (0.8, {}), ("tests", "high"): (1.3, {})})]
    pixels, g = _render(observations, results)

    def at(value: float, row: int, offset: float = 0.0) -> tuple[int, int, int]:
        return tuple(pixels[round(g.y(row + offset)), round(g.x(value))])

    for row, median, coverage, bound in ((0, 0.8, 1.6, 1.76), (1, 1.3, 0.7, 0.77)):
        for offset in (-0.3, 0.3):  # the marks span the row, over both bands
            assert at(median, row, offset) == plots.BLUE and at(coverage, row, offset) == plots.ORANGE
        assert at(bound, row) == plots.ORANGE
        assert at(bound, row, 0.3) != plots.ORANGE  # a diamond, not a line
        assert at(median, 1 - row) != plots.BLUE and at(coverage, 1 - row) != plots.ORANGE  # only in its row


def test_an_unidentifiable_group_gets_red_words_at_the_right_edge_of_its_row_and_no_mark():
    observations = {k: _group(k, np.linspace(0.5, 3.0, 50)) for k in (("docs", "low"), ("tests", "high"))}
    lower_bound = {"multiplier_is_lower_bound": True, "upper_ratio_bound": None}
    results = [_result("coverage", {("docs", "low"): (2.0, lower_bound), ("tests", "high"): (1.5, {})})]
    pixels, g = _render(observations, results)

    def red_columns(row: int) -> np.ndarray:
        middle = round(g.y(row))
        block = pixels[middle - 6:middle + 7, g.left:g.right]
        return np.flatnonzero(((block[..., 0] > 180) & (block[..., 1] < 90)).any(axis=0)) + g.left

    columns = red_columns(0)
    assert len(columns) and g.right - 12 <= columns.max() < g.right and columns.min() > g.right - 120  # right-aligned
    assert not len(red_columns(1))
    docs_column = pixels[round(g.y(-0.3)):round(g.y(0.3)), round(g.x(2.0))]
    assert not (docs_column == plots.ORANGE).all(axis=1).any()  # no mark for docs
    assert tuple(pixels[round(g.y(1.3)), round(g.x(1.5))]) == plots.ORANGE  # tests keeps its mark


@pytest.mark.parametrize("observations", [
    {("docs", "low"): _group(("docs", "low"), [], [2.0, 4.0]),  # all truncated
     ("tests", "low"): _group(("tests", "low"), [0.0, np.inf, 1.5])},  # a log axis cannot place 0 or inf
    {("docs", "low"): _group(("docs", "low"), [0.0, np.inf])},
    {},
], ids=["truncated-zero-inf", "nothing-placeable", "no-groups"])
def test_groups_without_placeable_values_and_no_groups_still_draw(observations):
    pixels, g = _render(observations)
    assert g.height == round(100 * max(2.5, 0.55 * len(observations) + 1.6))
    assert (pixels[g.top + 2:g.bottom - 2, g.left + 2:g.right - 2] != 255).any()  # at least the 1.0 line


def test_the_drawing_calls_do_not_grow_with_the_events(monkeypatch):
    """200,000 events are one histogram per band, never a shape per event."""
    calls: list[str] = []

    def counting(name: str, real):
        def counted(self, *args, **kwargs):
            calls.append(name)
            return real(self, *args, **kwargs)
        return counted

    for cls, names in ((ImageDraw.ImageDraw, ("line", "polygon", "rectangle", "text", "point", "ellipse")),
                       (Image.Image, ("paste",))):
        for name in names:
            monkeypatch.setattr(cls, name, counting(name, getattr(cls, name)))

    def drawn(events: int) -> int:
        rng = np.random.default_rng(1)
        # The same extremes whatever the number of events: the same axis, ticks and labels.
        observations = {(c, "low"): _group((c, "low"), [0.2, 5.0, *rng.lognormal(0, 0.4, events).clip(0.2, 5)],
                                           rng.uniform(1, 3, max(1, events // 10)))
                        for c in ("docs", "tests", "frontend")}
        calls.clear()
        _render(observations, [_result("coverage", {(c, "low"): (1.5, {"upper_ratio_bound": 1.65})
                                                    for c in ("docs", "tests", "frontend")})])
        return len(calls)

    few, many = drawn(10), drawn(200_000)
    assert few == many < 250


def test_the_log_axis_ticks_and_their_labels():
    g = plots.Geometry(height=300, left=100, right=900, top=40, bottom=200, edges=np.logspace(-2, 2, plots.BINS + 1))
    assert g.x(0.01) == pytest.approx(100) and g.x(100) == pytest.approx(900) and g.x(1) == pytest.approx(500)
    assert g.x(0.3) - g.x(0.1) == pytest.approx(g.x(30) - g.x(10))  # log scale
    values = [value for value, _ in plots.ticks(0.15, 25)]
    assert values == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20]
    assert [value for value, major in plots.ticks(0.15, 25) if major] == [1, 10]
    labelled = plots.tick_labels(g, lambda text, major: 8 * len(text))
    texts = [text for _, text, _ in labelled]
    assert {"0.01", "0.1", "1", "10", "100", "0.02", "0.05", "2", "50"} <= set(texts)  # decades, then 2 and 5
    assert "0.09" not in texts and "0.08" not in texts  # too close to 0.1, a rounder label

    def span(value: float, text: str) -> tuple[float, float]:
        return g.x(value) - 4 * len(text) - 3, g.x(value) + 4 * len(text) + 3

    spans = sorted(span(v, t) for v, t, _ in labelled)
    assert all(a[1] <= b[0] for a, b in pairwise(spans))  # no two overlap
    for value, _ in plots.ticks(g.low, g.high):  # and one is left out only where it would overlap one kept
        if f"{value:g}" not in texts:
            low, high = span(value, f"{value:g}")
            assert any(low < b and high > a for a, b in spans)
    roomy = plots.Geometry(height=300, left=100, right=900, top=40, bottom=200,
                           edges=np.logspace(np.log10(0.15), np.log10(6.5), plots.BINS + 1))
    assert [t for _, t, _ in plots.tick_labels(roomy, lambda text, major: 5 * len(text))] == [
        "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1", "2", "3", "4", "5", "6"]  # all fit: all kept


def test_the_left_margin_fits_the_widest_label():
    short = {("docs", "low"): _group(("docs", "low"), [1.0])}
    long = short | {("configuration", "maintenance"): _group(("configuration", "maintenance"), [1.0] * 12345)}
    (_, narrow), (pixels, wide) = _render(short), _render(long)
    assert wide.left > narrow.left + 100
    label_rows = pixels[round(wide.y(0.8)):round(wide.y(1.2)), :wide.left - 7]  # left of the row's tick mark
    inked = np.flatnonzero((label_rows < 128).any(axis=(0, 2)))
    assert 2 <= inked.min() and inked.max() <= wide.left - 10  # the whole label in the picture, clear of the axis


def test_the_clean_strips_counts_of_sorted_ratios_are_np_histograms():
    """A coverage group's clean ratios are counted from their sorted copy (two searches per edge): the
    counts np.histogram gives, values on an edge, on the last edge, outside the edges, zero, inf and NaN too."""
    edges = np.logspace(-1.5, 1.2, plots.BINS + 1)
    rng = np.random.default_rng(3)
    values = np.r_[np.exp(rng.standard_normal(5000)), edges[[0, 7, 7, 100, -1, -1]], 0.0, 0.01, 40.0,
                   np.inf, np.nan, rng.integers(1, 5, 300) / 2.0]
    got = plots._ascending_counts(np.sort(values), edges)
    assert got.dtype == np.histogram(values, bins=edges)[0].dtype
    assert np.array_equal(got, np.histogram(values, bins=edges)[0])
