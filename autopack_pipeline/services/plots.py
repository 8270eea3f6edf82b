"""The calibration plot: per-group ratio distributions and the multipliers each method chose.

A table of multipliers hides why they differ; the picture shows it at once: the median method's mark
sits in the middle of the group's ratios, the coverage bound near their top, and the truncated events
(whose ratio is only known to be at least their ceiling over the prediction) show where the data stops
telling us anything.

Each group's ratios are drawn as a shaded strip (``services.plot_data`` computes its shades): grey for
the clean samples, red below it for the truncated events' lower bounds. A strip costs the same to draw
for ten events or a million, where a dot per event cost half a second at a million events (about 70,000
dots after sampling) and buried the shape under overlapping ink.

Drawn with matplotlib's object API on the Agg canvas, never pyplot: no global backend switch, no
window, safe inside Dagster's worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.services.plot_data import BINS, PlotData, plot_data

if TYPE_CHECKING:  # the drawing process (services.plot_process) imports matplotlib, not the domain's analysis
    from autopack_pipeline.domain.analysis import CalibrationResult, CoverageGroup

__all__ = ["BINS", "draw_plot", "render_calibration_plot"]

# Per method (domain.analysis.CALIBRATION_METHODS, spelled out for the reason above), its marks' colour.
_COLOURS = {"autopack-median": "tab:blue", "coverage": "tab:orange"}
_CLEAN, _TRUNCATED = "0.25", "tab:red"  # the legend's names of plot_data's strip colours


def render_calibration_plot(
    target: Path | BinaryIO,
    observations: dict[tuple[str, str], CoverageGroup],
    results: list[CalibrationResult],
    *,
    tolerance: float = UNDER_TOLERANCE,
) -> None:
    """Write the PNG to ``target`` (a path or a binary file object)."""
    draw_plot(target, plot_data(observations, results, tolerance=tolerance))


def draw_plot(target: Path | BinaryIO, data: PlotData) -> None:
    """Write the PNG of ``data`` (``plot_data.plot_data``) to ``target`` (a path or a binary file object)."""
    keys, tolerance, edges = data.keys, data.tolerance, data.edges
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

    if keys:
        axes.pcolormesh(edges, data.y_edges, data.colours, shading="flat", antialiased=False)
    for row, marks in enumerate(data.marks):
        for method, mark in marks.items():
            colour = _COLOURS.get(method, "tab:green")
            if mark["lower_bound"]:
                axes.annotate("unidentifiable", (1.0, row), xycoords=("axes fraction", "data"),
                              xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                              fontsize=8, color="tab:red")
                continue
            axes.plot([mark["multiplier"]] * 2, [row - 0.38, row + 0.38], color=colour, linewidth=2.5,
                      label=label(f"{method} multiplier"))
            bound = mark["upper_ratio_bound"]
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
    axes.set_yticks(range(len(keys)), [f"{c}/{x} (n={n})" for (c, x), n in zip(keys, data.sizes)])
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
    # Room at the bottom for the figure-level legend (two rows of entries).
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    figure.set_layout_engine(None)  # laid out once: savefig would otherwise draw the figure twice
    figure.savefig(target, format="png")
