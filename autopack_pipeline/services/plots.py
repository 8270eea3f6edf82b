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

Drawn with matplotlib's object API on the Agg canvas, never pyplot: no global backend switch, no
window, safe inside Dagster's worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import matplotlib.artist
import numpy as np

from autopack_pipeline.domain.analysis import COVERAGE, CalibrationResult, CoverageGroup
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


@contextmanager
def _property_tables_left_out() -> Iterator[None]:
    """While matplotlib's artists load, their ``set()`` docstrings go without the table of settable
    properties: every Artist subclass builds that table as it is defined (``matplotlib.artist.kwdoc``,
    an inspection of each setter's docstring), a quarter to a third of importing matplotlib's figure and
    Agg canvas (~0.06 s of CPU, in ``calibrate``'s wall time). Nothing drawn reads a docstring; the
    signatures ``set()`` gets are built as before. Put back at once: only the classes loaded here, and
    the ``%(Class:kwdoc)s`` docstring entries matplotlib fills (and keeps) meanwhile, go without it."""
    built = matplotlib.artist.kwdoc
    matplotlib.artist.kwdoc = lambda artist: ""
    try:
        yield
    finally:
        matplotlib.artist.kwdoc = built


with _property_tables_left_out():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

BINS = 240  # log-spaced bins across the plot's width (1,000 px): about 4 px each
_COLOURS = {"autopack-median": "tab:blue", COVERAGE: "tab:orange"}
_CLEAN, _TRUNCATED = "0.25", "tab:red"
# A row's band, in row units around its centre (the y axis is inverted: negative is up): clean
# ratios above, truncated lower bounds below.
_CLEAN_BAND, _TRUNCATED_BAND = (-0.36, 0.12), (0.12, 0.36)


def _markers(results: list[CalibrationResult]) -> dict[tuple[str, str], dict[str, dict]]:
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for result in results:
        for group in result.groups:
            found.setdefault((group.category, group.complexity), {})[result.method] = {
                "multiplier": group.proposed_multiplier,
                "details": group.method_details,
            }
    return found


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


def render_calibration_plot(
    target: Path | BinaryIO,
    observations: dict[tuple[str, str], CoverageGroup],
    results: list[CalibrationResult],
    *,
    tolerance: float = UNDER_TOLERANCE,
) -> None:
    """Write the PNG to ``target`` (a path or a binary file object)."""
    keys = list(observations)
    markers = _markers(results)
    height = max(2.5, 0.55 * len(keys) + 1.6)
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

    marks = [m for key in keys for mark in markers.get(key, {}).values()
             for m in (mark["multiplier"], mark["details"].get("upper_ratio_bound")) if m is not None]
    edges = _edges(observations, [*marks, 1.0, tolerance])
    # One mesh for every strip: per row, a clean band, a truncated band and the gap to the next row.
    y_edges = np.array([row + offset for row in range(len(keys))
                        for offset in (_CLEAN_BAND[0], _CLEAN_BAND[1], _TRUNCATED_BAND[1])] + [len(keys) - 0.36])
    colours = np.zeros((len(y_edges) - 1, BINS, 4))
    for row, key in enumerate(keys):
        obs = observations[key]
        for band, values, colour in ((3 * row, obs.ratios, _CLEAN), (3 * row + 1, obs.lower_bounds, _TRUNCATED)):
            counts, _ = np.histogram(_positive(np.asarray(values, dtype=float)), bins=edges)
            colours[band, :, :3] = to_rgb(colour)
            colours[band, :, 3] = _shade(counts)
    if keys:
        axes.pcolormesh(edges, y_edges, colours, shading="flat", antialiased=False)
    for row, key in enumerate(keys):
        for method, mark in markers.get(key, {}).items():
            colour = _COLOURS.get(method, "tab:green")
            details = mark["details"]
            if details.get("multiplier_is_lower_bound"):
                axes.annotate("unidentifiable", (1.0, row), xycoords=("axes fraction", "data"),
                              xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                              fontsize=8, color="tab:red")
                continue
            axes.plot([mark["multiplier"]] * 2, [row - 0.38, row + 0.38], color=colour, linewidth=2.5,
                      label=label(f"{method} multiplier"))
            bound = details.get("upper_ratio_bound")
            if bound is not None:
                axes.plot([bound], [row], marker="D", color=colour, markersize=6, markeredgecolor="white",
                          label=label(f"{method} 95% bound (= multiplier x {tolerance:g})"))

    axes.axvline(1.0, color="0.6", linewidth=1)
    axes.axvline(tolerance, color="0.6", linewidth=1, linestyle="--", label=label(f"tolerance {tolerance:g}"))
    axes.set_xscale("log")
    axes.set_xlim(edges[0], edges[-1])
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5 and 2, not 5x10^-1
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_yticks(range(len(keys)), [f"{c}/{x} (n={observations[(c, x)].size})" for c, x in keys])
    axes.set_ylim(-0.7, max(0.7, len(keys) - 0.3))
    axes.invert_yaxis()
    axes.set_xlabel("actual / predicted output tokens (log scale)")
    axes.set_title("Ratio distributions and proposed multipliers per (category, complexity)")
    axes.grid(axis="x", which="both", alpha=0.25)
    handles, labels = axes.get_legend_handles_labels()
    if keys:
        strips = [Patch(color=_CLEAN, alpha=0.6, label="clean samples: actual/predicted (darker: more)"),
                  Patch(color=_TRUNCATED, alpha=0.6, label="truncated: ratio at least this (darker: more)")]
        handles, labels = strips + handles, [s.get_label() for s in strips] + labels
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    _lay_out(figure, legend_room=0.45 / height)
    figure.savefig(target, format="png")


def _lay_out(figure: Figure, legend_room: float) -> None:
    """``figure.tight_layout(rect=(0, legend_room, 1, 1))``: the room at the bottom is for the figure-level
    legend (two rows of entries), the rest is the axes and their labels, tight.

    With a ``rect``, tight_layout measures every tick label twice (its second pass measures them again and
    uses only the rect it was handed: 0.02-0.04 s of the plot's 0.45 s at a million events): here the one pass
    without a rect measures them, and its margins are shifted by the rect with tight_layout's own
    arithmetic, so the subplot parameters, and the picture, are the same to the bit."""
    figure.tight_layout()
    figure.set_layout_engine(None)  # laid out once: savefig would otherwise draw the figure twice
    first = figure.subplotpars
    left, bottom, right, top = 0 + first.left, legend_room + first.bottom, 1 - (1 - first.right), 1 - (1 - first.top)
    figure.subplots_adjust(left=left, bottom=bottom, right=1 - (1 - right), top=1 - (1 - top))
