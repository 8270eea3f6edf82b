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
window, safe inside Dagster's worker processes. This module turns the calibration into plain rows
(``plot_drawing.PlotRow``); ``plot_drawing`` draws them, here or in the child process ``plot_process``
starts beside the calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from autopack_pipeline.domain.analysis import COVERAGE, CalibrationResult, CoverageGroup
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

_COLOURS = {"autopack-median": "tab:blue", COVERAGE: "tab:orange"}


def _markers(results: list[CalibrationResult]) -> dict[tuple[str, str], dict[str, dict]]:
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for result in results:
        for group in result.groups:
            found.setdefault((group.category, group.complexity), {})[result.method] = {
                "multiplier": group.proposed_multiplier,
                "details": group.method_details,
            }
    return found


def plot_rows(observations: dict[tuple[str, str], CoverageGroup], results: list[CalibrationResult]) -> list:
    """The plot's rows (``plot_drawing.PlotRow``), one per group of ``observations`` in their order,
    with each method's mark from ``results``. Plain data: a child process draws them."""
    from autopack_pipeline.services.plot_drawing import PlotMark, PlotRow  # matplotlib loads only to draw

    markers = _markers(results)
    rows = []
    for (category, complexity), obs in observations.items():
        marks = tuple(
            PlotMark(method=method, colour=_COLOURS.get(method, "tab:green"), multiplier=mark["multiplier"],
                     bound=mark["details"].get("upper_ratio_bound"),
                     lower_bound_only=bool(mark["details"].get("multiplier_is_lower_bound")))
            for method, mark in markers.get((category, complexity), {}).items())
        rows.append(PlotRow(label=f"{category}/{complexity} (n={obs.size})",
                            ratios=np.asarray(obs.ratios, dtype=float),
                            lower_bounds=np.asarray(obs.lower_bounds, dtype=float), marks=marks))
    return rows


def render_calibration_plot(
    target: Path | BinaryIO,
    observations: dict[tuple[str, str], CoverageGroup],
    results: list[CalibrationResult],
    *,
    tolerance: float = UNDER_TOLERANCE,
) -> None:
    """Write the PNG to ``target`` (a path or a binary file object), drawn in this process."""
    from autopack_pipeline.services.plot_drawing import draw_calibration_plot

    draw_calibration_plot(target, plot_rows(observations, results), tolerance)
