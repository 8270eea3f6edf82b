"""The calibration plot: per-group ratio distributions and the multipliers each method chose.

A table of multipliers hides why they differ; the picture shows it at once: the median method's mark
sits in the middle of the dots, the coverage bound near their top, and truncated events (drawn as
arrows at the ceiling they hit) show where the data stops telling us anything.

Drawn with matplotlib's object API on the Agg canvas, never pyplot: no global backend switch, no
window, safe inside Dagster's worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from autopack_pipeline.domain.analysis import COVERAGE, CalibrationResult, CoverageGroup
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

# Beyond this many points per group a strip plot is just ink; a seeded sample keeps its shape.
MAX_POINTS_PER_GROUP = 1500
_COLOURS = {"autopack-median": "tab:blue", COVERAGE: "tab:orange"}


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= MAX_POINTS_PER_GROUP else rng.choice(values, MAX_POINTS_PER_GROUP, replace=False)


def _markers(results: list[CalibrationResult]) -> dict[tuple[str, str], dict[str, dict]]:
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for result in results:
        for group in result.groups:
            found.setdefault((group.category, group.complexity), {})[result.method] = {
                "multiplier": group.proposed_multiplier,
                "details": group.method_details,
            }
    return found


def render_calibration_plot(
    target: Path | BinaryIO,
    observations: dict[tuple[str, str], CoverageGroup],
    results: list[CalibrationResult],
    *,
    tolerance: float = UNDER_TOLERANCE,
) -> None:
    """Write the PNG to ``target`` (a path or a binary file object)."""
    rng = np.random.default_rng(0)  # same data, same picture
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

    for row, key in enumerate(keys):
        obs = observations[key]
        ratios = _sample(obs.ratios, rng)
        jitter = rng.uniform(-0.18, 0.18, len(ratios))
        axes.scatter(ratios, row + jitter, s=9, alpha=0.45, color="0.35", label=label("clean sample (actual/predicted)"))
        bounds = _sample(obs.lower_bounds, rng)
        if len(bounds):
            axes.scatter(bounds, np.full(len(bounds), row), marker=">", s=45, color="tab:red",
                         label=label("truncated: ratio at least this"))
        for method, mark in markers.get(key, {}).items():
            colour = _COLOURS.get(method, "tab:green")
            details = mark["details"]
            if details.get("multiplier_is_lower_bound"):
                axes.annotate("unidentifiable", (1.0, row), xycoords=("axes fraction", "data"),
                              xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                              fontsize=8, color="tab:red")
                continue
            axes.plot([mark["multiplier"]] * 2, [row - 0.32, row + 0.32], color=colour, linewidth=2.5,
                      label=label(f"{method} multiplier"))
            bound = details.get("upper_ratio_bound")
            if bound is not None:
                axes.plot([bound], [row], marker="D", color=colour, markersize=6,
                          label=label(f"{method} 95% bound (= multiplier x {tolerance:g})"))

    axes.axvline(1.0, color="0.6", linewidth=1)
    axes.axvline(tolerance, color="0.6", linewidth=1, linestyle="--", label=label(f"tolerance {tolerance:g}"))
    axes.set_xscale("log")
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
    if seen_labels:
        figure.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    # Room at the bottom for the figure-level legend (two rows of entries).
    figure.tight_layout(rect=(0, 0.45 / height, 1, 1))
    figure.savefig(target, format="png")
