"""One calibration group's observations under the coefficients in force: what the budget margins and
the factors' own bounds are computed from."""

from __future__ import annotations

from dataclasses import dataclass

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
