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

The yardstick is drawn in-sample: a group's 98th percentile is about its second-largest of ~75
ratios, and the next round draws another. :func:`carried_oracle` measures that noise: the previous
round's multipliers (its predictions re-expressed in this round's coefficients) applied to this
round. A rule that learns from past rounds cannot be expected to sit below it; where it is itself
above 1.2x of this round's oracle, budgets that knew the previous round's percentiles exactly would
miss the issue's bar too.
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
    chosen = oracle_multipliers(groups, predicted, actual, truncated, quantile)
    budgets, waste_p90 = budget_waste_with(chosen, groups, predicted, actual)
    return Oracle(chosen, budgets, waste_p90)


def oracle_multipliers(groups: np.ndarray, predicted: np.ndarray, actual: np.ndarray, truncated: np.ndarray,
                       quantile: float = ORACLE_QUANTILE) -> dict[object, OracleGroup]:
    """Per group label, :func:`oracle_multiplier` of its calls with a positive prediction and output."""
    groups, predicted, actual, truncated = _columns(groups, predicted, actual, truncated)
    usable = (predicted > 0) & (actual > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = actual / predicted
    chosen: dict[object, OracleGroup] = {}
    for key in dict.fromkeys(groups[usable].tolist()):
        rows = usable & (groups == key)
        chosen[key] = oracle_multiplier(ratios[rows], truncated[rows], quantile)
    return chosen


def budget_waste_with(multipliers: dict[object, OracleGroup], groups: np.ndarray, predicted: np.ndarray,
                      actual: np.ndarray) -> tuple[np.ndarray, float | None]:
    """(budget per call, budget waste P90) of budgets ``multiplier x predicted``, each call taking its
    group's multiplier; a call with no positive prediction or output, or whose group has none, gets
    NaN and is left out of the P90."""
    groups, predicted, actual, _ = _columns(groups, predicted, actual, None)
    usable = (predicted > 0) & (actual > 0)
    budgets = np.full(len(actual), np.nan)
    for key in dict.fromkeys(groups[usable].tolist()):
        group = multipliers.get(key)
        if group is not None and group.multiplier is not None:
            rows = usable & (groups == key)
            budgets[rows] = group.multiplier * predicted[rows]
    known = usable & np.isfinite(budgets)
    return budgets, p90((budgets[known] / actual[known]).tolist())


@dataclass(frozen=True)
class CarriedOracle:
    """The previous round's oracle applied to this round: the oracle comparison's own noise floor."""

    groups: dict[object, OracleGroup]  # the multipliers, from the previous round's calls
    budgets: np.ndarray  # per call of this round; NaN where it has none
    budget_waste_p90: float | None
    ratio: float | None  # to this round's own oracle's budget waste P90
    budgeted: int  # this round's calls with a budget
    without_multiplier: int  # this round's usable calls whose group the previous round did not have
    over_budget: int  # budgeted calls whose output passed the budget; truncated calls count, as in the oracle


def carried_oracle(previous: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], groups: np.ndarray,
                   predicted: np.ndarray, actual: np.ndarray, truncated: np.ndarray, oracle: Oracle,
                   quantile: float = ORACLE_QUANTILE) -> CarriedOracle:
    """Each group's oracle multiplier taken from the ``previous`` round's calls (groups, predicted,
    actual, truncated, the predictions expressed in this round's coefficients) and applied to this
    round's: budgets that knew the previous round's percentiles exactly. Its budget waste P90 against
    this round's ``oracle`` is how far a rule that learns from past rounds can be expected to sit from
    an oracle drawn in-sample, before any error of its own."""
    chosen = oracle_multipliers(*previous, quantile=quantile)
    budgets, waste_p90 = budget_waste_with(chosen, groups, predicted, actual)
    groups, predicted, actual, truncated = _columns(groups, predicted, actual, truncated)
    usable = (predicted > 0) & (actual > 0)
    known = usable & np.isfinite(budgets)
    over = known & (truncated | (actual > np.where(known, budgets, np.inf)))
    own = oracle.budget_waste_p90
    return CarriedOracle(chosen, budgets, waste_p90, waste_p90 / own if waste_p90 is not None and own else None,
                         int(known.sum()), int((usable & ~known).sum()), int(over.sum()))


def _columns(groups, predicted, actual, truncated):
    return (np.asarray(groups, dtype=object), np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float),
            None if truncated is None else np.asarray(truncated, dtype=bool))
