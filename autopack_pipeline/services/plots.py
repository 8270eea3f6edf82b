"""The calibration plot: per-group ratio distributions and the multipliers each method chose.

A table of multipliers hides why they differ; the picture shows it at once: the median method's mark
sits in the middle of the group's ratios, the coverage bound near their top, and the truncated events
(whose ratio is only known to be at least their ceiling over the prediction) show where the data stops
telling us anything.

Each group's ratios are drawn as a shaded strip, a histogram over log-spaced bins whose shade grows
with the count (its square root, from a visible shade for a lone event in a tail): grey for the clean
samples, red below it for the truncated events' lower bounds. A strip costs the same to draw for ten
events or a million, where a dot per event cost half a second at a million events (about 70,000 dots
after sampling) and buried the shape under overlapping ink.

Drawn with Pillow, not matplotlib: the picture is some lines, a diamond per group, some text and a
shaded strip per group, and matplotlib cost ~0.5 s of ``calibrate``'s ~1.7 s at a million events
(importing it ~0.17 s; ``tight_layout`` measuring every tick label, drawing and saving ~0.34 s). Pillow
loads in ~0.01 s and the whole plot takes ~0.075 s, 0.03 s of it the PNG encoding. What matplotlib did
for us is done here by hand, in :class:`Geometry` and :func:`tick_labels`: the log axis (value -> pixel
column), the rows, the ticks and which of their labels fit, the margin measured from the widest label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autopack_pipeline.domain.analysis import COVERAGE, CalibrationResult, CoverageGroup
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

BINS = 240  # log-spaced bins across the plot's width (~700 px): about 3 px each
WIDTH, DPI = 1000, 100  # pixels; the height is in inches at DPI, as the matplotlib version sized it
# matplotlib's tab10 colours, which the plot always used.
BLUE, ORANGE, GREEN, RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
COLOURS = {"autopack-median": BLUE, COVERAGE: ORANGE}  # any other method: GREEN
CLEAN, TRUNCATED = (64, 64, 64), RED
WHITE, BLACK, REFERENCE, GRID = (255, 255, 255), (0, 0, 0), (153, 153, 153), (235, 235, 235)
# A row's bands, in row units around its centre (down is positive): clean ratios above, truncated
# lower bounds below; a method's mark spans most of the row.
CLEAN_BAND, TRUNCATED_BAND, MARK_SPAN = (-0.36, 0.12), (0.12, 0.36), (-0.38, 0.38)
# Font sizes in pixels (Pillow's own scalable font, Aileron): about matplotlib's 12, 10, 8 and 7 points.
TITLE_SIZE, LABEL_SIZE, NOTE_SIZE, SMALL_SIZE = 17, 14, 12, 11
TITLE = "Ratio distributions and proposed multipliers per (category, complexity)"
X_LABEL = "actual / predicted output tokens (log scale)"
# zlib's level, measured on the million-event plot (1000 x 2085 px, 7 saves each, median): levels 1-3 write
# 182-178 KB in 29-30 ms, 4-6 (6 is Pillow's default) 165-161 KB in 38-41 ms, 9 157 KB in 170 ms. 19 ms of
# every level is Pillow choosing each row's PNG filter (level 0: 19 ms, 6.3 MB). 3 is the smallest of the
# fast levels; the slower ones save a tenth of the bytes for a third more time.
PNG_COMPRESS_LEVEL = 3


# -- what to draw ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mark:
    """One method's choice for one group (row)."""

    row: int
    method: str
    multiplier: float
    bound: float | None  # the coverage method's 95% upper ratio bound
    unidentifiable: bool  # the multiplier is only a lower bound: no mark, a note instead


def _marks(keys: list[tuple[str, str]], results: list[CalibrationResult]) -> list[Mark]:
    rows = {key: row for row, key in enumerate(keys)}
    found = [Mark(rows[(g.category, g.complexity)], r.method, g.proposed_multiplier,
                  g.method_details.get("upper_ratio_bound"), bool(g.method_details.get("multiplier_is_lower_bound")))
             for r in results for g in r.groups if (g.category, g.complexity) in rows]
    return sorted(found, key=lambda mark: mark.row)  # stable: per row, the methods in the results' order


def _placeable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _positive(values: np.ndarray) -> np.ndarray:
    """The values a log axis can place (finite and above zero)."""
    return values[np.isfinite(values) & (values > 0)]


def _edges(observations: dict[tuple[str, str], CoverageGroup], marks: list[float]) -> np.ndarray:
    """Log-spaced bin edges over every ratio, lower bound and mark, with a little room either side."""
    found = [_positive(np.asarray(v, dtype=float)) for g in observations.values() for v in (g.ratios, g.lower_bounds)]
    found.append(_positive(np.asarray(marks, dtype=float)))
    values = np.concatenate(found) if found else np.zeros(0)
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.5, 2.0)
    low, high = min(low, 0.9), max(high, 1.2)  # 1 and the tolerance always in view
    pad = (np.log10(high) - np.log10(low)) * 0.02
    return np.logspace(np.log10(low) - pad, np.log10(high) + pad, BINS + 1)


def _shade(counts: np.ndarray) -> np.ndarray:
    """Opacity per bin: none for an empty bin, 0.15 for a single event (so a sparse tail still shows),
    growing with the square root of the count to 0.9 at the row's fullest bin."""
    top = counts.max() if len(counts) else 0
    if top == 0:
        return np.zeros(len(counts))
    return np.where(counts > 0, 0.15 + 0.75 * np.sqrt(counts / top), 0.0)


@dataclass(frozen=True)
class LegendEntry:
    text: str
    kind: str  # "strip", "mark", "diamond" or "dashed": what its handle shows
    colour: tuple[int, int, int]


def _legend(keys: list, marks: list[Mark], tolerance: float) -> list[LegendEntry]:
    """One entry per kind of mark drawn, in the order they first appear."""
    entries = [LegendEntry("clean samples: actual/predicted (darker: more)", "strip", CLEAN),
               LegendEntry("truncated: ratio at least this (darker: more)", "strip", TRUNCATED)] if keys else []
    for mark in marks:
        colour = COLOURS.get(mark.method, GREEN)
        if not mark.unidentifiable and _placeable(mark.multiplier):
            entries.append(LegendEntry(f"{mark.method} multiplier", "mark", colour))
            if _placeable(mark.bound):
                entries.append(LegendEntry(f"{mark.method} 95% bound (= multiplier x {tolerance:g})", "diamond",
                                           colour))
    entries.append(LegendEntry(f"tolerance {tolerance:g}", "dashed", REFERENCE))
    return list(dict.fromkeys(entries))


# -- geometry: values and rows to pixels ---------------------------------------------------------------

def ticks(low: float, high: float) -> list[tuple[float, bool]]:
    """(value, is a decade) for 1..9 x every decade within [low, high]: a log axis's ticks."""
    return [(float(f"{m}e{decade}"), m == 1)
            for decade in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            for m in range(1, 10) if low <= float(f"{m}e{decade}") <= high]


@dataclass(frozen=True)
class Geometry:
    """Where everything goes, in pixels: the plot area [left, right) x [top, bottom), its log x axis
    over the bins' edges and its rows (row r's centre is at r row units; the axis shows -0.7 .. rows - 0.3)."""

    height: int
    left: int
    right: int
    top: int
    bottom: int
    edges: np.ndarray = field(repr=False, compare=False)  # the bins' (``_edges``), first to last across the area
    rows: int = 0

    @property
    def low(self) -> float:
        return float(self.edges[0])

    @property
    def high(self) -> float:
        return float(self.edges[-1])

    def x(self, value: float) -> float:
        """The pixel column (a float) of a value on the log axis."""
        share = (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return self.left + share * (self.right - self.left)

    def y(self, position: float) -> float:
        """The pixel row (a float) of a position in row units."""
        shown = max(0.7, self.rows - 0.3) + 0.7
        return self.top + (position + 0.7) / shown * (self.bottom - self.top)

    def band(self, row: int, offsets: tuple[float, float]) -> tuple[int, int]:
        """The pixel rows [start, stop) of a band of ``row`` (``CLEAN_BAND`` or ``TRUNCATED_BAND``)."""
        return round(self.y(row + offsets[0])), round(self.y(row + offsets[1]))

    def bin_of_columns(self) -> np.ndarray:
        """Per pixel column of the plot area, left to right, the bin its centre falls in: on a log axis the
        bins are equally wide."""
        return ((np.arange(self.right - self.left) + 0.5) * BINS / (self.right - self.left)).astype(np.intp)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (no font file to ship), read once per size: each load decodes it."""
    return ImageFont.load_default(size=size)


def _row_labels(observations: dict[tuple[str, str], CoverageGroup]) -> list[str]:
    return [f"{c}/{x} (n={group.size})" for (c, x), group in observations.items()]


def plot_geometry(observations: dict[tuple[str, str], CoverageGroup], results: list[CalibrationResult], *,
                  tolerance: float = UNDER_TOLERANCE) -> Geometry:
    """The geometry :func:`render_calibration_plot` draws with, for the same arguments."""
    marks = _marks(list(observations), results)
    return _geometry(observations, marks, _legend(list(observations), marks, tolerance), tolerance)


def _geometry(observations: dict[tuple[str, str], CoverageGroup], marks: list[Mark], legend: list[LegendEntry],
              tolerance: float) -> Geometry:
    """:func:`plot_geometry` from the marks and legend entries found already."""
    edges = _edges(observations, [*[m.multiplier for m in marks], *[m.bound for m in marks if m.bound is not None],
                                  1.0, tolerance])
    label_width = max((_font(LABEL_SIZE).getlength(text) for text in _row_labels(observations)), default=0)
    height = round(DPI * max(2.5, 0.55 * len(observations) + 1.6))
    # Below the plot: tick marks and labels (30 px), the axis label (26 px), the legend (15 px a row).
    return Geometry(height=height, left=max(40, math.ceil(label_width) + 24), right=WIDTH - 18, top=38,
                    bottom=height - 30 - 26 - 15 * math.ceil(len(legend) / 3) - 14, edges=edges,
                    rows=len(observations))


def tick_labels(geometry: Geometry, width_of: Callable[[str, bool], float]) -> list[tuple[float, str, bool]]:
    """(value, label, is a decade) of the ticks whose ``%g`` label fits: the decades' first, then the
    others by how round they are (2 and 5, then 3, 4, 6..9), each kept only if it stays inside the picture
    and 6 px clear of every label kept. ``width_of(text, is_decade)``: the label's width in pixels."""
    order = {1: 0, 2: 1, 5: 2}
    candidates = sorted(ticks(geometry.low, geometry.high),
                        key=lambda tick: order.get(int(f"{tick[0]:e}"[0]), 3 + int(f"{tick[0]:e}"[0])))
    kept: list[tuple[float, str, bool, float, float]] = []
    for value, major in candidates:
        text = f"{value:g}"
        half = width_of(text, major) / 2 + 3
        x = geometry.x(value)
        if x - half >= 0 and x + half <= WIDTH and all(x + half <= a or x - half >= b for *_, a, b in kept):
            kept.append((value, text, major, x - half, x + half))
    return sorted((value, text, major) for value, text, major, *_ in kept)


# -- drawing -----------------------------------------------------------------------------------------------

def _draw_strips(image: Image.Image, geometry: Geometry,
                 observations: dict[tuple[str, str], CoverageGroup]) -> None:
    """Per group and band, one histogram and one paste of its colour through the bins' opacities,
    stretched over the band: the same few calls for ten events or a million."""
    width, columns = geometry.right - geometry.left, geometry.bin_of_columns()
    for row, group in enumerate(observations.values()):
        ascending = getattr(group, "ratios_ascending", None)  # a CoverageGroup's (not every test's groups)
        for band, values, colour in ((CLEAN_BAND, group.ratios if ascending is None else ascending, CLEAN),
                                     (TRUNCATED_BAND, group.lower_bounds, TRUNCATED)):
            # Zero, infinite and NaN values fall outside the edges: the histogram leaves them out.
            counts = (_ascending_counts(values, geometry.edges) if values is ascending
                      else np.histogram(np.asarray(values, dtype=float), bins=geometry.edges)[0])
            if not counts.any():
                continue
            top, bottom = geometry.band(row, band)
            opacity = np.rint(_shade(counts) * 255).astype(np.uint8)[columns]  # one pixel row
            stretched = Image.fromarray(opacity[None, :], "L").resize((width, bottom - top), Image.Resampling.NEAREST)
            image.paste(colour, (geometry.left, top, geometry.right, bottom), stretched)


def _ascending_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(values, bins=edges)[0]`` of ascending ``values`` (the clean ratios, sorted once for
    every reader: ``CoverageGroup.ratios_ascending``). np.histogram counts uneven bins by sorting the values
    and searching each edge in them, the last edge inclusive: here the same searches, without its sort of
    the group's ratios (~30 ms of the plot at a million events)."""
    found = np.concatenate((values.searchsorted(edges[:-1], "left"), values.searchsorted(edges[-1:], "right")))
    return np.diff(found)


def _dashed(draw: ImageDraw.ImageDraw, x: int, top: int, bottom: int, colour: tuple[int, int, int]) -> None:
    for start in range(top, bottom, 8):  # 5 px on, 3 off
        draw.line([(x, start), (x, min(start + 4, bottom - 1))], fill=colour)


def _diamond(draw: ImageDraw.ImageDraw, x: float, y: float, colour: tuple[int, int, int], size: int = 6) -> None:
    draw.polygon([(x, y - size), (x + size, y), (x, y + size), (x - size, y)], fill=colour, outline=WHITE)


def _draw_legend(draw: ImageDraw.ImageDraw, entries: list[LegendEntry], top: int) -> None:
    """Three columns, filled column by column, centred under the plot."""
    font, handle, rows = _font(SMALL_SIZE), 22, math.ceil(len(entries) / 3)
    columns = [entries[i:i + rows] for i in range(0, len(entries), rows)]
    widths = [handle + 6 + max(font.getlength(e.text) for e in column) for column in columns]
    x = (WIDTH - sum(widths) - 24 * (len(columns) - 1)) / 2
    for column, width in zip(columns, widths, strict=True):
        for i, entry in enumerate(column):
            y = top + 15 * i + 7
            if entry.kind == "strip":  # the strip's colour at 0.6 opacity over white
                fill = tuple(round(255 - 0.6 * (255 - c)) for c in entry.colour)
                draw.rectangle([x, y - 4, x + handle, y + 4], fill=fill, outline=fill)
            elif entry.kind == "mark":
                draw.line([(x, y), (x + handle, y)], fill=entry.colour, width=3)
            elif entry.kind == "diamond":
                _diamond(draw, x + handle / 2, y, entry.colour, size=5)
            else:
                for start in range(0, handle, 8):
                    draw.line([(x + start, y), (x + min(start + 4, handle), y)], fill=entry.colour)
            draw.text((x + handle + 6, y), entry.text, fill=BLACK, font=font, anchor="lm")
        x += width + 24


def _draw_marks(draw: ImageDraw.ImageDraw, g: Geometry, marks: list[Mark]) -> None:
    note = _font(NOTE_SIZE)
    for mark in marks:
        colour, centre = COLOURS.get(mark.method, GREEN), g.y(mark.row)
        if mark.unidentifiable:  # at the plot area's right edge, in the row's middle
            draw.text((g.right - 6, centre), "unidentifiable", fill=RED, font=note, anchor="rm")
            continue
        if _placeable(mark.multiplier):
            x = round(g.x(mark.multiplier))
            draw.line([(x, round(g.y(mark.row + MARK_SPAN[0]))), (x, round(g.y(mark.row + MARK_SPAN[1])))],
                      fill=colour, width=3)
        if _placeable(mark.bound):
            _diamond(draw, round(g.x(mark.bound)), round(centre), colour)


def _draw_axes(draw: ImageDraw.ImageDraw, g: Geometry, row_labels: list[str]) -> None:
    """The frame, the x axis's ticks and labels, each row's tick and label, the title and the axis label."""
    labels, small = _font(LABEL_SIZE), _font(SMALL_SIZE)
    draw.rectangle([g.left - 1, g.top - 1, g.right, g.bottom], outline=BLACK)  # around the area
    for value, major in ticks(g.low, g.high):
        x = round(g.x(value))
        draw.line([(x, g.bottom), (x, g.bottom + (5 if major else 3))], fill=BLACK)
    for value, text, major in tick_labels(g, lambda text, major: (labels if major else small).getlength(text)):
        draw.text((g.x(value), g.bottom + 8), text, fill=BLACK, font=labels if major else small, anchor="ma")
    for row, text in enumerate(row_labels):
        centre = round(g.y(row))
        draw.line([(g.left - 6, centre), (g.left - 2, centre)], fill=BLACK)
        draw.text((g.left - 10, centre), text, fill=BLACK, font=labels, anchor="rm")
    middle = (g.left + g.right) / 2
    draw.text((middle, 10), TITLE, fill=BLACK, font=_font(TITLE_SIZE), anchor="ma")
    draw.text((middle, g.bottom + 30), X_LABEL, fill=BLACK, font=labels, anchor="ma")


def render_calibration_plot(
    target: Path | BinaryIO,
    observations: dict[tuple[str, str], CoverageGroup],
    results: list[CalibrationResult],
    *,
    tolerance: float = UNDER_TOLERANCE,
) -> None:
    """Write the PNG to ``target`` (a path or a binary file object)."""
    marks = _marks(list(observations), results)
    legend = _legend(list(observations), marks, tolerance)
    g = _geometry(observations, marks, legend, tolerance)
    image = Image.new("RGB", (WIDTH, g.height), WHITE)
    draw = ImageDraw.Draw(image)
    for value, _ in ticks(g.low, g.high):  # the grid, under the strips
        draw.line([(round(g.x(value)), g.top), (round(g.x(value)), g.bottom - 1)], fill=GRID)
    _draw_strips(image, g, observations)
    draw.line([(round(g.x(1.0)), g.top), (round(g.x(1.0)), g.bottom - 1)], fill=REFERENCE)
    _dashed(draw, round(g.x(tolerance)), g.top, g.bottom, REFERENCE)
    _draw_marks(draw, g, marks)
    _draw_axes(draw, g, _row_labels(observations))
    _draw_legend(draw, legend, g.bottom + 56)
    image.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
