"""What a group's budget settings would have done to its past calls (``domain.budget_calibration``):
how many they truncate, and the floor that binds for none of them."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.domain.group_observations import GroupObservationsInForce


def truncated_past_calls(group: GroupObservationsInForce, factor: float, margin: float, floors: tuple[int, ...],
                         cap: int) -> tuple[int, ...]:
    """Past calls the settings would truncate, under each of ``floors``: clean ones whose output
    exceeds the budget, truncated ones whose budget is no larger than the ceiling they already hit.
    The budgets are ``min(cap, max(floor, floor(new prediction x margin)))``, floored once for every floor.

    Counted without a budget per call and floor: ``a > min(cap, max(floor, raw))`` is ``a > cap``, or
    ``a > floor`` and ``a > raw``; ``min(cap, max(floor, raw)) <= c`` is ``cap <= c``, or ``floor <= c``
    and ``raw <= c``. So one comparison of each call with its raw budget, and the few calls it picks
    compared with each floor (five float passes per floor over every call of the group, twice per
    group and method, were most of a section's time at ten million events)."""
    clean_raw = _raw_budgets(group.predicted, factor, margin)
    cut_raw = _raw_budgets(group.censored_predicted, factor, margin)
    if np.isnan(clean_raw.min(initial=0.0)) or np.isnan(cut_raw.min(initial=0.0)):
        # A NaN budget exceeds and covers nothing, whatever the cap: the budgets themselves then.
        return tuple(int((group.actual > np.minimum(cap, np.maximum(floor, clean_raw))).sum())
                     + int((np.minimum(cap, np.maximum(floor, cut_raw)) <= group.censored_ceiling).sum())
                     for floor in floors)
    longer = group.actual[group.actual > clean_raw]  # past their raw budget: the floor decides for them
    within = group.censored_ceiling[cut_raw <= group.censored_ceiling]  # raw budget within the ceiling hit
    over_cap = int(np.count_nonzero(group.actual > cap)) + int(np.count_nonzero(group.censored_ceiling >= cap))
    longer, within = longer[longer <= cap], within[within < cap]
    return tuple(over_cap + int(np.count_nonzero(longer > floor)) + int(np.count_nonzero(within >= floor))
                 for floor in floors)


def _raw_budgets(predicted: np.ndarray, factor: float, margin: float) -> np.ndarray:
    """``np.floor(predicted * factor * margin)``, the same operations in that order, in one array."""
    raw = predicted * factor
    raw *= margin
    return np.floor(raw, out=raw)


def proportional_floor(group: GroupObservationsInForce, factor: float, margin: float, cap: int) -> int:
    """The group's smallest new prediction x ``margin``: a floor that binds for no past call.

    No search above it is needed: the margin is the k-th smallest of the N ratios (censored calls
    above every one), so the proportional rule exceeds on at most ``N - k`` past calls, the allowance
    the order statistic gives (0 for a thin group, whose margin is the largest ratio). Only the cap
    can make it exceed on more, and no floor lifts a budget over the cap.
    """
    lowest = np.r_[group.predicted, group.censored_predicted].min() * factor
    return int(min(cap, max(1, int(lowest * margin))))
