"""The oracle a calibration round is judged against: per-group multipliers known in advance.

For one round's events, the oracle gives every call the budget ``m_g x predicted``, where ``m_g`` is
its group's 98th percentile of ``actual / predicted`` *in that same round* (nearest rank: the
``ceil(0.98 n)``-th smallest of the group's ``n`` ratios). A truncated call's real length is unknown,
so its ratio counts above every multiplier. When the rank falls on one, the percentile is not known,
only bounded below: each truncated call's ratio is at least its ceiling ratio (its output at the cut
/ predicted), and an order statistic only grows with the values, so the oracle takes the k-th
smallest of the clean ratios and the ceiling ratios together (marked ``censored``). That is the
tightest multiplier consistent with what is known and still in the oracle's favour; the group's
largest clean ratio, the earlier choice, could sit below ceilings the truncated calls are known to
have passed, budgets that would truncate them again. Its budget waste
(budget / actual) P90 over the round is the least a proportional budget could waste while truncating
about 2% of each group: the yardstick for ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autopack_pipeline.domain.analysis.order_statistics import p90

ORACLE_QUANTILE = 0.98


@dataclass(frozen=True)
class OracleGroup:
    multiplier: float | None
    observations: int
    censored: bool  # the rank fell on a truncated call: the multiplier is a lower bound (ceilings as lengths)


@dataclass(frozen=True)
class Oracle:
    groups: dict[object, OracleGroup]
    budgets: np.ndarray  # per call; NaN where a prediction or an output is not positive
    budget_waste_p90: float | None


def oracle_multiplier(ratios: np.ndarray, truncated: np.ndarray, quantile: float = ORACLE_QUANTILE) -> OracleGroup:
    """The group's nearest-rank ``quantile`` of ``ratios``, truncated calls counted as +infinity; when
    the rank falls on one, the k-th smallest with truncated calls at their ceiling ratio (``ratios``
    holds, for a truncated call, its output at the cut / predicted)."""
    ratios = np.asarray(ratios, dtype=float)
    n = len(ratios)
    if n == 0:
        return OracleGroup(None, 0, False)
    k = max(1, math.ceil(quantile * n - 1e-9))
    chosen = float(np.sort(np.where(np.asarray(truncated, dtype=bool), np.inf, ratios))[k - 1])
    if math.isfinite(chosen):
        return OracleGroup(chosen, n, False)
    return OracleGroup(float(np.sort(ratios)[k - 1]), n, True)


def oracle_budget_waste(groups: np.ndarray, predicted: np.ndarray, actual: np.ndarray, truncated: np.ndarray,
                        quantile: float = ORACLE_QUANTILE) -> Oracle:
    """The oracle of one round: ``groups`` labels each call (any hashable values), the rest per call."""
    groups = np.asarray(groups, dtype=object)
    predicted = np.asarray(predicted, dtype=float)
    actual = np.asarray(actual, dtype=float)
    truncated = np.asarray(truncated, dtype=bool)
    usable = (predicted > 0) & (actual > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = actual / predicted
    budgets = np.full(len(actual), np.nan)
    chosen: dict[object, OracleGroup] = {}
    for key in dict.fromkeys(groups[usable].tolist()):
        rows = usable & (groups == key)
        group = oracle_multiplier(ratios[rows], truncated[rows], quantile)
        chosen[key] = group
        if group.multiplier is not None:
            budgets[rows] = group.multiplier * predicted[rows]
    known = usable & np.isfinite(budgets)
    waste = (budgets[known] / actual[known]).tolist()
    return Oracle(chosen, budgets, p90(waste))
