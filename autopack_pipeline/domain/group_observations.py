"""One calibration group's observations under the coefficients in force: what the budget margins and
the factors' own bounds are computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GroupObservationsInForce:
    """One group's observations, predictions in force (before the proposed factor)."""

    category: str
    complexity: str
    predicted: np.ndarray  # clean samples
    actual: np.ndarray
    censored_predicted: np.ndarray  # truncated calls
    censored_ceiling: np.ndarray  # the ceiling each truncated call hit (at least its output)
    # ``actual / predicted`` ascending, when the coverage group has them sorted (``ratios_ascending``): the
    # group's own coverage factor and a pooled pass at factor 1 read them without sorting them again.
    ratios_ascending: np.ndarray | None = field(default=None, compare=False, repr=False)


def observations_in_force(group: Any) -> GroupObservationsInForce:
    """A coverage group (``domain.analysis.CoverageGroup``) as the budget margins read it: one object per
    group for every method's pooled pass, kept on the group, so what is read off it once (its own coverage
    factor, ``coverage_factor.own_coverage_factor``) is not computed again for each method."""
    kept = group.__dict__.get("_observations_in_force")
    if kept is None:
        kept = group.__dict__["_observations_in_force"] = GroupObservationsInForce(
            group.key[0], group.key[1], np.asarray(group.predicted, dtype=float), np.asarray(group.actual, dtype=float),
            np.asarray(group.censored_predicted, dtype=float),
            np.asarray(group.bounds * group.censored_predicted, dtype=float),
            # CoverageGroup.ratios is actual / predicted of these columns: the same floats, sorted.
            getattr(group, "ratios_ascending", None))
    return kept
