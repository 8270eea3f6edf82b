"""Drawing the calibration plot from plain rows (``services.plots`` turns the calibration into them).

Apart from the domain, so that a process drawing it imports numpy and matplotlib only: ``plot_process``
draws it beside the calibration, in a child started when ``calibrate`` starts. matplotlib is imported
when drawing (:func:`matplotlib_parts`), not with the rows: the parent builds them without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

BINS = 240  # log-spaced bins across the plot's width (1,000 px): about 4 px each
_CLEAN, _TRUNCATED = "0.25", "tab:red"
# A row's band, in row units around its centre (the y axis is inverted: negative is up): clean
# ratios above, truncated lower bounds below.
_CLEAN_BAND, _TRUNCATED_BAND = (-0.36, 0.12), (0.12, 0.36)


@dataclass(frozen=True)
class PlotMark:
    """One method's mark on a row: its multiplier (a bar) and 95% bound (a diamond), or a note that
    the multiplier is only a lower bound (unidentifiable)."""

    method: str
    colour: str
    multiplier: float | None
    bound: float | None
    lower_bound_only: bool


@dataclass(frozen=True)
class PlotRow:
    """One (category, complexity) group: its label, its clean ratios and truncated lower bounds
    (floats) and each method's mark, in the methods' order."""

    label: str
    ratios: np.ndarray
    lower_bounds: np.ndarray
    marks: tuple[PlotMark, ...]


def matplotlib_parts() -> tuple[Any, ...]:
    """What the drawing uses of matplotlib (importing it costs half a second of CPU)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    return FigureCanvasAgg, to_rgb, Figure, Patch, FuncFormatter


def _positive(values: np.ndarray) -> np.ndarray:
    """The values a log axis can place (finite and above zero)."""
    return values[np.isfinite(values) & (values > 0)]


def _edges(rows: list[PlotRow], marks: list[float]) -> np.ndarray:
    """Log-spaced bin edges over every ratio, lower bound and mark, with a little room either side."""
    found = [_positive(v) for row in rows for v in (row.ratios, row.lower_bounds)]
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


def draw_calibration_plot(target: Path | BinaryIO, rows: list[PlotRow], tolerance: float) -> None:
    """Write the PNG of ``rows`` to ``target`` (a path or a binary file object)."""
    FigureCanvasAgg, to_rgb, Figure, Patch, FuncFormatter = matplotlib_parts()  # noqa: N806 (the classes' names)
    height = max(2.5, 0.55 * len(rows) + 1.6)
    figure = Figure(figsize=(10, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    seen_labels: set[str] = set()

    def label(text: str) -> str | None:
        # One legend entry per kind of mark, however many groups draw it.
        if text in seen_labels:
            return None
        seen_labels.add(text)
        return text

    marks = [m for row in rows for mark in row.marks for m in (mark.multiplier, mark.bound) if m is not None]
    edges = _edges(rows, [*marks, 1.0, tolerance])
    # One mesh for every strip: per row, a clean band, a truncated band and the gap to the next row.
    y_edges = np.array([index + offset for index in range(len(rows))
                        for offset in (_CLEAN_BAND[0], _CLEAN_BAND[1], _TRUNCATED_BAND[1])] + [len(rows) - 0.36])
    colours = np.zeros((len(y_edges) - 1, BINS, 4))
    for index, row in enumerate(rows):
        for band, values, colour in ((3 * index, row.ratios, _CLEAN), (3 * index + 1, row.lower_bounds, _TRUNCATED)):
            counts, _ = np.histogram(_positive(values), bins=edges)
            colours[band, :, :3] = to_rgb(colour)
            colours[band, :, 3] = _shade(counts)
    if rows:
        axes.pcolormesh(edges, y_edges, colours, shading="flat", antialiased=False)
    for index, row in enumerate(rows):
        for mark in row.marks:
            if mark.lower_bound_only:
                axes.annotate("unidentifiable", (1.0, index), xycoords=("axes fraction", "data"),
                              xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                              fontsize=8, color="tab:red")
                continue
            axes.plot([mark.multiplier] * 2, [index - 0.38, index + 0.38], color=mark.colour, linewidth=2.5,
                      label=label(f"{mark.method} multiplier"))
            if mark.bound is not None:
                axes.plot([mark.bound], [index], marker="D", color=mark.colour, markersize=6, markeredgecolor="white",
                          label=label(f"{mark.method} 95% bound (= multiplier x {tolerance:g})"))

    axes.axvline(1.0, color="0.6", linewidth=1)
    axes.axvline(tolerance, color="0.6", linewidth=1, linestyle="--", label=label(f"tolerance {tolerance:g}"))
    axes.set_xscale("log")
    axes.set_xlim(edges[0], edges[-1])
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5 and 2, not 5x10^-1
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_yticks(range(len(rows)), [row.label for row in rows])
    axes.set_ylim(-0.7, max(0.7, len(rows) - 0.3))
    axes.invert_yaxis()
    axes.set_xlabel("actual / predicted output tokens (log scale)")
    axes.set_title("Ratio distributions and proposed multipliers per (category, complexity)")
    axes.grid(axis="x", which="both", alpha=0.25)
    handles, labels = axes.get_legend_handles_labels()
    if rows:
        strips = [Patch(color=_CLEAN, alpha=0.6, label="clean samples: actual/predicted (darker: more)"),
                  Patch(color=_TRUNCATED, alpha=0.6, label="truncated: ratio at least this (darker: more)")]
        handles, labels = strips + handles, [s.get_label() for s in strips] + labels
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    # Room at the bottom for the figure-level legend (two rows of entries).
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    figure.set_layout_engine(None)  # laid out once: savefig would otherwise draw the figure twice
    figure.savefig(target, format="png")
