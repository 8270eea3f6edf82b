"""The oracle a calibration round is judged against: per-group multipliers known in advance.

For one round's events, the oracle gives every call the budget ``m_g x predicted``, where ``m_g`` is
its group's 98th percentile of ``actual / predicted`` *in that same round* (nearest rank: the
``ceil(0.98 n)``-th smallest of the group's ``n`` ratios). A truncated call's real length is unknown,
so its ratio counts above every multiplier; when the rank falls on one, no finite multiplier covers
the group and the oracle uses the largest ratio it can see (marked ``censored``). Its budget waste
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
    censored: bool  # the rank fell on a truncated call: the multiplier is the largest finite ratio


@dataclass(frozen=True)
class Oracle:
    groups: dict[object, OracleGroup]
    budgets: np.ndarray  # per call; NaN where the group has no finite ratio at all
    budget_waste_p90: float | None


def oracle_multiplier(ratios: np.ndarray, truncated: np.ndarray, quantile: float = ORACLE_QUANTILE) -> OracleGroup:
    """The group's nearest-rank ``quantile`` of ``ratios``, truncated calls counted as +infinity."""
    values = np.sort(np.where(np.asarray(truncated, dtype=bool), np.inf, np.asarray(ratios, dtype=float)))
    n = len(values)
    if n == 0:
        return OracleGroup(None, 0, False)
    k = max(1, math.ceil(quantile * n - 1e-9))
    chosen = float(values[k - 1])
    if math.isfinite(chosen):
        return OracleGroup(chosen, n, False)
    finite = values[np.isfinite(values)]
    return OracleGroup(float(finite[-1]) if len(finite) else None, n, True)


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
