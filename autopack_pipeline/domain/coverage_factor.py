"""A group's own lower bounds on its prediction factor, truncated calls counted as what they are: lower
bounds on their ratios. ``domain.budget_calibration`` raises every factor the patch sets to at least
these (and to the pooled bound)."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.group_observations import GroupObservationsInForce
from autopack_pipeline.domain.pooled_margin import kaplan_meier_point
from autopack_pipeline.domain.targets import FACTOR_PHASE_TARGET_PCT, UNDER_TOLERANCE, UNDERESTIMATION_TARGET_PCT


def coverage_has_no_bound(n: int, n_cut: int) -> bool:
    """Whether the coverage method's bound (at 5% of ``n`` observations, truncated calls above every
    candidate) is lost to the ``n_cut`` truncations: it then proposes no factor."""
    return n_cut > 0 and n_cut > n - order_statistic_index(n, UNDERESTIMATION_TARGET_PCT)


def own_coverage_factor(group: GroupObservationsInForce) -> float:
    """The group's own coverage factor at the phase target (``targets.FACTOR_PHASE_TARGET_PCT``): the
    ratio where the Kaplan-Meier estimate of its ratios (truncated calls right-censored at their
    ceiling / prediction) reaches the rank ``k = ceil((N + 1) x (1 - target))`` (the k-th smallest
    ratio when none is truncated), or the largest clean ratio when it never does (or when the group
    is too small for k), and never below :func:`ceiling_order_statistic`; / the 1.1 tolerance. Every
    factor the patch sets is at least this (``budget_calibration.raise_to_pooled_coverage``), and it is
    the factor of a group whose truncations leave the coverage method no bound.

    Kept on ``group`` once computed (a frozen dataclass of arrays nobody changes): the coverage method's
    pooled pass and both methods' proposals ask for it, a Kaplan-Meier estimate over the group's calls each."""
    kept = group.__dict__.get("_own_coverage_factor")
    if kept is None:
        kept = group.__dict__["_own_coverage_factor"] = _own_coverage_factor(group)
    return kept


def _own_coverage_factor(group: GroupObservationsInForce) -> float:
    ascending = group.ratios_ascending is not None  # sorted once for the group's readers (~28 ms at 1M)
    clean = group.ratios_ascending if ascending else group.actual / group.predicted
    n = len(clean) + len(group.censored_ceiling)
    k = min(order_statistic_index(n, FACTOR_PHASE_TARGET_PCT), n)
    estimate = kaplan_meier_point(clean, group.censored_ceiling / group.censored_predicted, k / n - 1e-12,
                                  ascending=ascending)
    estimate = float(clean.max()) if estimate is None else estimate
    return max(estimate, ceiling_order_statistic(group)) / UNDER_TOLERANCE


def factor_lower_bound(group: GroupObservationsInForce) -> float:
    """The least factor an unidentifiable group may get: the larger of its largest clean ratio and
    :func:`ceiling_order_statistic`, / the 1.1 tolerance. Kept on ``group`` as :func:`own_coverage_factor` is
    (both methods' sections ask for it)."""
    kept = group.__dict__.get("_factor_lower_bound")
    if kept is None:
        # The largest ratio is the sorted ratios' last (a NaN, which max gives, sorts last too).
        clean_max = float(group.ratios_ascending[-1] if group.ratios_ascending is not None
                          else (group.actual / group.predicted).max())
        kept = group.__dict__["_factor_lower_bound"] = max(clean_max, ceiling_order_statistic(group)) / UNDER_TOLERANCE
    return kept


def ceiling_order_statistic(group: GroupObservationsInForce) -> float:
    """A lower bound on the ratio the factor needs: the k-th smallest (k at the phase target; the
    largest when the group is too small for k) of the clean ratios and the truncated calls'
    ceiling / prediction, each a lower bound on that call's ratio. The largest clean ratio is the other
    bound (the truncated calls counted above every candidate): the factor takes the larger. Kept on
    ``group`` once computed (its own coverage factor and its lower bound both read it)."""
    kept = group.__dict__.get("_ceiling_order_statistic")
    if kept is None:
        kept = group.__dict__["_ceiling_order_statistic"] = _ceiling_order_statistic(group)
    return kept


def _ceiling_order_statistic(group: GroupObservationsInForce) -> float:
    ceilings = group.censored_ceiling / group.censored_predicted
    n = len(group.actual) + len(ceilings)
    k = min(order_statistic_index(n, FACTOR_PHASE_TARGET_PCT), n)
    clean = group.ratios_ascending
    if clean is None or not len(clean):
        return float(np.partition(np.r_[group.actual / group.predicted, ceilings], k - 1)[k - 1])
    # The k-th smallest of the sorted clean ratios and the ceilings (a tenth of the calls) together, with
    # no partition of a copy of every ratio (~10 ms at 1M): each ceiling's place in the merged order is its
    # rank among the ceilings plus the clean ratios at or below it; the k-th is a ceiling's value if one
    # sits there, else the clean ratio that many places in (NaN sorts last in both, as in a partition).
    ceilings.sort()
    places = clean.searchsorted(ceilings, "right") + np.arange(len(ceilings))
    at = int(np.searchsorted(places, k - 1))
    if at < len(places) and places[at] == k - 1:
        return float(ceilings[at])
    return float(clean[k - 1 - at])
