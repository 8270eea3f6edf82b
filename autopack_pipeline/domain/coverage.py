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
from typing import Any

import numpy as np
import pandas as pd

from autopack_pipeline.domain.calibration import (
    AUTOPACK_MEDIAN,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    build_provenance,
    group_order,
)
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.metrics import budget_sent, p90, percent
from autopack_pipeline.domain.samples import (
    as_events_frame,
    canonical_labels,
    clean_samples,
    sample_exclusions,
    success_mask,
    truncated_mask,
)
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

COVERAGE = "coverage"
# Every calibration method, the default first.
CALIBRATION_METHODS = (COVERAGE, AUTOPACK_MEDIAN)
DEFAULT_TARGET_PCT = 5.0
DEFAULT_TOLERANCE = UNDER_TOLERANCE
PRIOR_WEIGHT = 8
# Multipliers this close to 1 are not worth a coefficient change.
NO_CHANGE_BAND = 0.05
_DEDUP_ORDER = ["attempt", "event_id", "timestamp"]


@dataclass(frozen=True)
class GroupObservations:
    """One group's data: clean rows (with ratios) and censored rows (with their lower bounds)."""

    clean: pd.DataFrame
    censored: pd.DataFrame

    @property
    def ratios(self) -> np.ndarray:
        return _ratio(self.clean)

    @property
    def lower_bounds(self) -> np.ndarray:
        """``max(ceiling, actual) / predicted`` of each truncated event: its ratio is at least this."""
        frame = self.censored
        ceiling = np.nan_to_num(budget_sent(frame), nan=0.0)
        actual = frame["actual_output_tokens"].to_numpy(dtype=float, na_value=0.0)
        return np.maximum(ceiling, actual) / frame["predicted_output_tokens"].to_numpy(dtype=float)

    @property
    def size(self) -> int:
        return len(self.clean) + len(self.censored)


def _ratio(frame: pd.DataFrame) -> np.ndarray:
    actual = frame["actual_output_tokens"].to_numpy(dtype=float)
    return actual / frame["predicted_output_tokens"].to_numpy(dtype=float)


def _latest_per_phase(frame: pd.DataFrame) -> pd.DataFrame:
    """The last attempt of each (run_id, phase_id); rows without both ids stand alone."""
    keyed = frame["run_id"].notna() & frame["phase_id"].notna()
    ordered = frame[keyed].sort_values(_DEDUP_ORDER, na_position="first", kind="mergesort")
    last = ordered[~ordered.duplicated(subset=["run_id", "phase_id"], keep="last")]
    return frame.loc[sorted(set(last.index) | set(frame.index[~keyed]))]


def split_observations(events: pd.DataFrame, *, dedup: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean samples, censored truncated events) that coverage learns from, labels canonical.

    Both need a positive prediction: a zero prediction cannot be scaled by any multiplier.
    """
    frame = as_events_frame(events)
    positive = frame["predicted_output_tokens"].fillna(0) > 0
    clean = clean_samples(frame[positive.to_numpy()], dedup=dedup)
    usable = positive & frame["actual_output_tokens"].notna() & truncated_mask(frame)
    censored = frame[usable.to_numpy()]
    if dedup and len(censored):
        # A phase with a clean attempt is represented by it: that output was measured, not cut off.
        has_clean = set(zip(clean["run_id"].dropna(), clean["phase_id"].dropna()))
        keys = list(zip(censored["run_id"], censored["phase_id"]))
        censored = censored[[not (pd.notna(r) and pd.notna(p) and (r, p) in has_clean) for r, p in keys]]
        censored = _latest_per_phase(censored)
    censored = censored.copy()  # keeps the input's index, so callers can find the rows used
    censored["category"] = canonical_labels(censored["category"], normalise_category)
    censored["complexity"] = canonical_labels(censored["complexity"], normalise_complexity)
    return clean, censored


def group_observations(events: pd.DataFrame, *, dedup: bool = True) -> dict[tuple[str, str], GroupObservations]:
    """Observations per canonical (category, complexity), sorted by key."""
    clean, censored = split_observations(events, dedup=dedup)
    keys = set(zip(clean["category"], clean["complexity"])) | set(zip(censored["category"], censored["complexity"]))

    def rows(frame: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
        return frame[((frame["category"] == key[0]) & (frame["complexity"] == key[1])).to_numpy(dtype=bool)]

    return {key: GroupObservations(rows(clean, key), rows(censored, key)) for key in sorted(keys)}


def order_statistic_index(n: int, target_pct: float) -> int:
    """``k = ceil((n + 1) * (1 - alpha))``, computed exactly (no float fuzz at 19.0000001)."""
    alpha = Fraction(str(target_pct)) / 100
    return math.ceil((n + 1) * (1 - alpha))


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


def level_value(obs: list[GroupObservations], parent: float | None, target_pct: float, prior: float) -> LevelValue:
    """The value of a set of observations: its own bound if it has one, else borrowed from ``parent``."""
    ratios = np.concatenate([o.ratios for o in obs]) if obs else np.array([])
    censored = sum(len(o.censored) for o in obs)
    own, k, finite = upper_bound(ratios, censored, target_pct)
    w = weight(len(ratios), prior)
    value = own if finite or parent is None else borrow(own, parent, w)
    return LevelValue(value, own, k, finite, w, parent)


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded value is reported as ``None``."""
    return None if value is None or math.isinf(value) else float(value)


def projected_budgets(frame: pd.DataFrame, scale: float, table: CoefficientTable | None, key: tuple[str, str]) -> np.ndarray:
    """The budgets ``frame``'s calls would get with estimates scaled by ``scale``.

    Without a coefficient table, budgets scale with the estimate. With one, ``select_budget``'s shape
    is kept: ``min(cap, max(floor, estimate * scale * margin))``, the margin read off each call
    (budget / estimate) when its budget was above the floor, else the table's base margin. A budget
    held up by its floor may then not move at all.
    """
    sent = budget_sent(frame)
    if table is None or scale == 1.0:
        return sent * scale
    floor = table.budget_floor(key[0], key[1])
    predicted = frame["predicted_output_tokens"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(sent > floor, sent / predicted, table.budget.buffer_margin)
    return np.minimum(table.budget.cap, np.maximum(floor, np.floor(predicted * scale * margin)))


def _waste(obs: GroupObservations, scale: float, table: CoefficientTable | None = None,
           key: tuple[str, str] = ("", "")) -> tuple[float | None, float | None]:
    """Budget waste (budget / actual) P50 and P90 over clean samples, with estimates scaled by ``scale``."""
    budget = projected_budgets(obs.clean, scale, table, key)
    actual = obs.clean["actual_output_tokens"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = budget / actual
    values = waste[np.isfinite(waste) & (budget > 0)].tolist()
    if not values:
        return None, None
    return float(np.median(values)), p90(values)


def _action(status: str, multiplier: float, size: int, censored: int, level: LevelValue,
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


def _group(key: tuple[str, str], obs: GroupObservations, level: LevelValue, parent_name: str,
           tolerance: float, target_pct: float, threshold: float, table: CoefficientTable | None) -> GroupCalibration:
    source = obs.clean if len(obs.ratios) else obs.censored  # only lower bounds when nothing was clean
    return group_calibration(
        key, ratios=obs.ratios, bounds=obs.lower_bounds,
        source_actual=source["actual_output_tokens"].to_numpy(dtype=float),
        source_predicted=source["predicted_output_tokens"].to_numpy(dtype=float),
        selected=source["selected_budget"].dropna().to_numpy(dtype=float),
        level=level, parent_name=parent_name, tolerance=tolerance, target_pct=target_pct, threshold=threshold,
        waste_now=_waste(obs, 1.0), projected_waste=lambda scale: _waste(obs, scale, table, key),
    )


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
) -> GroupCalibration:
    """One group's coverage figures from plain arrays, so the pandas and the columnar paths share them.

    ``ratios`` are the clean samples' actual/predicted, ``bounds`` the censored events' lower bounds;
    ``source_*`` and ``selected`` describe the clean samples (the censored ones when none is clean);
    ``waste_now`` is budget waste P50/P90 as sent; ``projected_waste(scale)`` the same with estimates
    scaled by ``scale`` and budgets recomputed (called only for a multiplier that exists).
    """
    described = ratios if len(ratios) else bounds
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
        "own_bound": _finite(level.own),
        "own_bound_is_finite_sample": level.finite_sample,
        "parent": parent_name,
        "parent_bound": _finite(level.parent),
        "weight": level.weight,
        "upper_ratio_bound": _finite(q),
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
        median_ratio=float(np.partition(described, len(described) // 2)[len(described) // 2]),
        min_ratio=float(described.min()),
        max_ratio=float(described.max()),
        ratio_std=float(described.std()),
        confidence=level.weight,
        proposed_multiplier=float(multiplier),
        median_budget_waste=waste_now[0],
        p90_budget_waste=waste_now[1],
        avg_selected_budget=float(selected.mean()) if len(selected) else None,
        actionable=status != "unidentifiable" and level.weight >= threshold,
        action=_action(status, multiplier, n, censored, level, tolerance),
        method_details=details,
    )


def _provenance_exclusions(frame: pd.DataFrame, censored: pd.DataFrame, dedup: bool) -> dict[str, int]:
    """Exclusion counts of :func:`sample_exclusions`, minus the truncated events used as censored
    observations, plus clean samples left out for a zero prediction; kept + excluded = all rows."""
    counts = sample_exclusions(frame, dedup=dedup)
    used = frame.loc[censored.index]
    failed = int((~success_mask(used)).sum())  # a failed truncated row was counted as "failed" first
    counts["failed"] -= failed
    counts["truncated"] -= len(used) - failed
    positive = (frame["predicted_output_tokens"].fillna(0) > 0).to_numpy()
    counts["zero_prediction"] = len(clean_samples(frame, dedup=dedup)) - len(clean_samples(frame[positive], dedup=dedup))
    return counts


def calibrate_coverage(
    events: pd.DataFrame,
    *,
    min_samples: int = 5,
    confidence_threshold: float = 0.7,
    dedup: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    target_pct: float = DEFAULT_TARGET_PCT,
    prior_weight: float = PRIOR_WEIGHT,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any],
) -> CalibrationResult:
    """Coverage-targeted multipliers for every group with at least ``min_samples`` observations.

    ``events`` is the whole analysis set (not only clean samples): truncated events are part of the
    evidence. Groups below ``min_samples`` observations are listed in ``below_threshold``; every
    level (group, category, global) still uses all observations. With ``coefficients``, projected
    budgets respect its floors and cap (see :func:`projected_budgets`).
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if not 0 < target_pct < 100 or tolerance <= 0 or prior_weight <= 0:
        raise ValueError("need 0 < target_pct < 100, tolerance > 0 and prior_weight > 0")
    frame = as_events_frame(events)
    groups = group_observations(frame, dedup=dedup)
    everything = list(groups.values())
    root = level_value(everything, None, target_pct, prior_weight) if everything else None
    categories = {}
    for category in sorted({c for c, _ in groups}):
        members = [o for (c, _), o in groups.items() if c == category]
        categories[category] = level_value(members, root.value, target_pct, prior_weight)

    calibrated, below = [], []
    for key, obs in groups.items():
        if obs.size < min_samples:
            below.append(BelowThresholdGroup(category=key[0], complexity=key[1], sample_count=obs.size,
                                             needed=min_samples - obs.size))
            continue
        level = level_value([obs], categories[key[0]].value, target_pct, prior_weight)
        calibrated.append(_group(key, obs, level, f"category {key[0]}", tolerance, target_pct, confidence_threshold,
                                 coefficients))

    clean, censored = split_observations(frame, dedup=dedup)
    used = pd.concat([clean, censored], ignore_index=True) if len(censored) else clean
    exclusions = _provenance_exclusions(frame, censored, dedup)
    return CalibrationResult(
        method=COVERAGE,
        parameters={
            "min_samples": int(min_samples),
            "confidence_threshold": float(confidence_threshold),
            "target_underestimation_pct": float(target_pct),
            "tolerance": float(tolerance),
            "prior_weight": float(prior_weight),
            "censored_observations": len(censored),
        },
        groups=sorted(calibrated, key=group_order),
        below_threshold=sorted(below, key=group_order),
        provenance=build_provenance(used, {**provenance, "exclusions": exclusions}),
    )
