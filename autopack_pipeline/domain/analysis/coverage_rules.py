"""``coverage`` calibration (DESIGN §7): the multiplier that brings underestimation down to the target.

Autopack's median multiplier aims at the middle of the ratio distribution, so about half of the
calls still come out above the estimate; the Tier-1 target is that at most 5% do. This method aims
at an upper quantile instead. Definitions, for one (category, complexity) group:

- An *observation* is a clean sample (ratio ``r = actual / predicted``) or a truncated event. A
  truncated event only tells us its real output was at least the ceiling it hit, so it is *censored*:
  it counts as exceeding every candidate multiplier, those up to ``ceiling / predicted`` (certain)
  and those above (unknown, so counted against us). It is never dropped, unlike in Autopack.
  With dedup, a phase contributes its last clean attempt, or, if it has none, its last truncated one.
- With ``alpha = target_pct / 100`` and ``N`` observations sorted (censored ones last, as +inf),
  ``k = ceil((N + 1) * (1 - alpha))``. When ``k <= N`` the group's *own bound* ``U`` is the k-th
  smallest value: for a new call from the same (exchangeable) population,
  ``P(r_new > U) <= alpha`` (split-conformal, peers §4.2). When ``k > N`` (fewer than 19
  observations at 5%) no such bound exists; ``U`` is then the maximum, a weaker bound.
- *Shrinkage*: ``w = n_clean / (n_clean + PRIOR_WEIGHT)`` is the group's weight, reported as its
  confidence. A group with an own bound keeps it: ``Q = U``. A *thin* group borrows from its
  parent ``P`` (its category's value, which in turn borrows from the global one the same way):
  ``Q = max(U, U**w * P**(1 - w))``. Borrowing can only raise a group's figure, never talk it out of
  the risk its own data shows. ``Q`` never decreases when events become truncated or truncated
  events are added: ``U`` and ``P`` only grow, and a thin group with any truncation is unbounded.
- The proposed multiplier is ``m = Q / tolerance``: predictions scaled by ``m`` make
  ``actual > tolerance * m * predicted`` (DESIGN's underestimation with the 1.1 tolerance) happen
  in at most ``alpha`` of new calls.
- When ``Q`` is infinite the quantile is *unidentifiable*: more truncated observations than the
  bound tolerates (``> N - k``; any truncation at all in a group under 19), or a thin group whose
  parent is itself censored. No number is proposed; the advice is to raise the floor and collect.

``PRIOR_WEIGHT`` = 8 is "the parent is worth 8 observations"; with it a group reaches the default
confidence threshold 0.7 exactly at 19 clean samples, the size at which its own 95% bound exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from autopack_pipeline.domain.analysis.calibration_results import AUTOPACK_MEDIAN, GroupCalibration
from autopack_pipeline.domain.analysis.rates import percent
from autopack_pipeline.domain.targets import UNDERESTIMATION_TARGET_PCT

COVERAGE = "coverage"
# Every calibration method, the default first.
CALIBRATION_METHODS = (COVERAGE, AUTOPACK_MEDIAN)
# Coverage aims at the Tier-1 underestimation target.
DEFAULT_TARGET_PCT = UNDERESTIMATION_TARGET_PCT
PRIOR_WEIGHT = 8
# Multipliers this close to 1 are not worth a coefficient change.
NO_CHANGE_BAND = 0.05


def order_statistic_index(n: int, target_pct: float) -> int:
    """``k = ceil((n + 1) * (1 - alpha))``, computed exactly (no float fuzz at 19.0000001)."""
    return math.ceil((n + 1) * _exact_coverage(target_pct))


@lru_cache(maxsize=64)
def _exact_coverage(target_pct: float) -> Fraction:
    """``1 - alpha`` as an exact fraction, kept per target: the Fraction from its text cost ~20 us, asked
    for by every pooled bound (105 per calibration) with the same few targets."""
    return 1 - Fraction(str(target_pct)) / 100


def upper_bound(ratios: np.ndarray, censored: int, target_pct: float) -> tuple[float, int, bool]:
    """(bound, k, whether it is a finite-sample 1-alpha bound) over ratios plus censored (+inf) values.

    Without enough observations for the k-th order statistic, the maximum is returned with ``False``.
    """
    values = np.concatenate([np.sort(np.asarray(ratios, dtype=float)), np.full(censored, np.inf)])
    n = len(values)
    if n == 0:
        raise ValueError("no observations")
    k = order_statistic_index(n, target_pct)
    return (float(values[k - 1]), k, True) if k <= n else (float(values[-1]), k, False)


def weight(clean_count: int, prior_weight: float = PRIOR_WEIGHT) -> float:
    """The group's own share against its parent, ``n / (n + prior_weight)``; reported as confidence."""
    return clean_count / (clean_count + prior_weight) if clean_count else 0.0


def borrow(own: float, parent: float, w: float) -> float:
    """``max(own, own**w * parent**(1 - w))``, on the log scale; infinite if either side is (w < 1)."""
    if math.isinf(own) or (math.isinf(parent) and w < 1):
        return math.inf
    return max(own, math.exp(w * math.log(own) + (1 - w) * math.log(parent)))


@dataclass(frozen=True)
class LevelValue:
    """A bound at one level (group, category, global) and how it was obtained."""

    value: float
    own: float
    k: int
    finite_sample: bool
    weight: float
    parent: float | None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded value is reported as ``None``."""
    return None if value is None or math.isinf(value) else float(value)


def coverage_action(status: str, multiplier: float, size: int, censored: int, level: LevelValue,
            level_tolerance: float) -> str:
    if status == "unidentifiable":
        if math.isinf(level.own):
            allowed = max(0, size - level.k) if level.finite_sample else 0
            why = (f"{censored} of {size} observations were truncated; a 95% bound from "
                   f"{size} observations can absorb at most {allowed}")
        else:
            why = "too few observations for a bound of its own, and its category's bound is censored"
        return (f"Unidentifiable: {why}. Raise this group's budget floor above x{multiplier * level_tolerance:.2f} "
                "of the estimate (the highest ceiling that was hit) and collect more data; no multiplier is proposed.")
    change = (multiplier - 1) * 100
    if abs(multiplier - 1) < NO_CHANGE_BAND:
        verb = f"No adjustment needed (within ±{NO_CHANGE_BAND:.0%})"
    elif change > 0:
        verb = f"Increase coefficients by {change:.0f}%"
    else:
        verb = f"Decrease coefficients by {-change:.0f}%"
    return verb + (" (advisory: too few observations for a 95% bound of its own; borrows from its category)"
                   if status == "thin" else "")


def group_calibration(
    key: tuple[str, str],
    *,
    ratios: np.ndarray,
    bounds: np.ndarray,
    source_actual: np.ndarray,
    source_predicted: np.ndarray,
    selected: np.ndarray,
    level: LevelValue,
    parent_name: str,
    tolerance: float,
    target_pct: float,
    threshold: float,
    waste_now: tuple[float | None, float | None],
    projected_waste: Callable[[float], tuple[float | None, float | None]],
    ratios_ascending: np.ndarray | None = None,
) -> GroupCalibration:
    """One group's coverage figures from plain arrays, shared by every way of gathering them.

    ``ratios`` are the clean samples' actual/predicted, ``bounds`` the censored events' lower bounds;
    ``source_*`` and ``selected`` describe the clean samples (the censored ones when none is clean);
    ``waste_now`` is budget waste P50/P90 as sent; ``projected_waste(scale)`` the same with estimates
    scaled by ``scale`` and budgets recomputed (called only for a multiplier that exists).
    ``ratios_ascending``: ``ratios`` sorted, when the caller has them (the median is read off them).
    """
    described = ratios if len(ratios) else bounds
    middle = len(described) // 2
    median = (ratios_ascending[middle] if ratios_ascending is not None and len(ratios)
              else np.partition(described, middle)[middle])
    censored = len(bounds)
    q = level.value
    status = "unidentifiable" if math.isinf(q) else ("identifiable" if level.finite_sample else "thin")
    floor_hint = float(bounds.max()) if len(bounds) else float(described.max())
    multiplier = q / tolerance if status != "unidentifiable" else floor_hint / tolerance
    n = len(ratios) + censored
    now_over = int((ratios > tolerance).sum()) + censored
    new_over = None if math.isinf(q) else int((ratios > q).sum()) + censored
    waste_new = projected_waste(multiplier) if status != "unidentifiable" else (None, None)
    details = {
        "status": status,
        "clean_samples": len(ratios),
        "censored_samples": censored,
        "order_statistic_k": level.k,
        "own_bound": finite_or_none(level.own),
        "own_bound_is_finite_sample": level.finite_sample,
        "parent": parent_name,
        "parent_bound": finite_or_none(level.parent),
        "weight": level.weight,
        "upper_ratio_bound": finite_or_none(q),
        "tolerance": tolerance,
        "target_underestimation_pct": target_pct,
        "censored_lower_bound_max": float(bounds.max()) if len(bounds) else None,
        "multiplier_is_lower_bound": status == "unidentifiable",
        "underestimation_pct_now": percent(now_over, n),
        "underestimation_pct_projected": None if new_over is None else percent(new_over, n),
        "budget_waste_p50_now": waste_now[0],
        "budget_waste_p90_now": waste_now[1],
        "budget_waste_p50_projected": waste_new[0],
        "budget_waste_p90_projected": waste_new[1],
    }
    return GroupCalibration(
        category=key[0],
        complexity=key[1],
        sample_count=n,
        avg_actual=float(source_actual.mean()),
        avg_estimated=float(source_predicted.mean()),
        avg_ratio=float(described.mean()),
        median_ratio=float(median),
        min_ratio=float(described.min()),
        max_ratio=float(described.max()),
        ratio_std=float(described.std()),
        confidence=level.weight,
        proposed_multiplier=float(multiplier),
        median_budget_waste=waste_now[0],
        p90_budget_waste=waste_now[1],
        avg_selected_budget=float(selected.mean()) if len(selected) else None,
        actionable=status != "unidentifiable" and level.weight >= threshold,
        action=coverage_action(status, multiplier, n, censored, level, tolerance),
        method_details=details,
    )
