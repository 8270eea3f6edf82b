"""What the calibration plot shows, as numbers: per group the shaded strips' colours and the marks each
method chose (``services.plots`` draws it).

Kept apart from the drawing so that it needs numpy only: ``calibrate`` hands it, a few hundred kB, to
the process drawing the plot (``services.plot_process``), which alone imports matplotlib.

Each group's ratios are a histogram over log-spaced bins whose shade grows with the count (its square
root, from a visible shade for a lone event in a tail): grey for the clean samples, red below it for
the truncated events' lower bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autopack_pipeline.domain.targets import UNDER_TOLERANCE

if TYPE_CHECKING:  # the drawing process unpickles PlotData without loading the domain's analysis
    from autopack_pipeline.domain.analysis import CalibrationResult, CoverageGroup

BINS = 240  # log-spaced bins across the plot's width (1,000 px): about 4 px each
CLEAN_COLOUR, TRUNCATED_COLOUR = (0.25, 0.25, 0.25), (0.8392156862745098, 0.15294117647058825, 0.1568627450980392)
# A row's band, in row units around its centre (the y axis is inverted: negative is up): clean
# ratios above, truncated lower bounds below.
CLEAN_BAND, TRUNCATED_BAND = (-0.36, 0.12), (0.12, 0.36)


@dataclass(frozen=True)
class PlotData:
    """Everything the plot draws: rows top to bottom, the mesh of strips and the marks per row."""

    keys: list[tuple[str, str]]
    sizes: list[int]  # events per row, for its label
    edges: np.ndarray  # the BINS + 1 log-spaced x edges
    y_edges: np.ndarray  # per row a clean band, a truncated band and the gap to the next row
    colours: np.ndarray  # (bands, BINS, RGBA)
    # Per row, per method: {"multiplier", "lower_bound" (unidentifiable), "upper_ratio_bound" or None}.
    marks: list[dict[str, dict[str, Any]]]
    tolerance: float


def _markers(results: list[CalibrationResult]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for result in results:
        for group in result.groups:
            details = group.method_details
            found.setdefault((group.category, group.complexity), {})[result.method] = {
                "multiplier": group.proposed_multiplier,
                "lower_bound": bool(details.get("multiplier_is_lower_bound")),
                "upper_ratio_bound": details.get("upper_ratio_bound"),
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


def plot_data(observations: dict[tuple[str, str], CoverageGroup], results: list[CalibrationResult], *,
              tolerance: float = UNDER_TOLERANCE) -> PlotData:
    """The plot of ``observations`` (per group, its ratios and lower bounds) and each method's marks."""
    keys = list(observations)
    markers = _markers(results)
    marks = [m for key in keys for mark in markers.get(key, {}).values()
             for m in (mark["multiplier"], mark["upper_ratio_bound"]) if m is not None]
    edges = _edges(observations, [*marks, 1.0, tolerance])
    # One mesh for every strip: per row, a clean band, a truncated band and the gap to the next row.
    y_edges = np.array([row + offset for row in range(len(keys))
                        for offset in (CLEAN_BAND[0], CLEAN_BAND[1], TRUNCATED_BAND[1])] + [len(keys) - 0.36])
    colours = np.zeros((len(y_edges) - 1, BINS, 4))
    for row, key in enumerate(keys):
        obs = observations[key]
        for band, values, colour in ((3 * row, obs.ratios, CLEAN_COLOUR), (3 * row + 1, obs.lower_bounds,
                                                                         TRUNCATED_COLOUR)):
            counts, _ = np.histogram(_positive(np.asarray(values, dtype=float)), bins=edges)
            colours[band, :, :3] = colour
            colours[band, :, 3] = _shade(counts)
    return PlotData(keys=keys, sizes=[int(observations[key].size) for key in keys], edges=edges, y_edges=y_edges,
                    colours=colours, marks=[markers.get(key, {}) for key in keys], tolerance=tolerance)
