"""Oracle: the ``coverage`` calibration over a pandas frame (the product: ``domain.analysis.coverage_calibration``,
with the method's definitions in ``domain.analysis.coverage_rules``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from autopack_pipeline.domain.analysis.calibration_results import (
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    group_order,
)
from autopack_pipeline.domain.analysis.coverage_rules import (  # noqa: F401 - re-exported for the tests
    CALIBRATION_METHODS,
    COVERAGE,
    DEFAULT_TARGET_PCT,
    NO_CHANGE_BAND,
    PRIOR_WEIGHT,
    LevelValue,
    borrow,
    group_calibration,
    order_statistic_index,
    upper_bound,
    weight,
)
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.targets import UNDER_TOLERANCE as DEFAULT_TOLERANCE
from autopack_pipeline_tests.oracle.calibration import build_provenance
from autopack_pipeline_tests.oracle.metrics import budget_sent, p90
from autopack_pipeline_tests.oracle.samples import (
    as_events_frame,
    canonical_labels,
    clean_samples,
    sample_exclusions,
    success_mask,
    truncated_mask,
)

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


def level_value(obs: list[GroupObservations], parent: float | None, target_pct: float, prior: float) -> LevelValue:
    """The value of a set of observations: its own bound if it has one, else borrowed from ``parent``."""
    ratios = np.concatenate([o.ratios for o in obs]) if obs else np.array([])
    censored = sum(len(o.censored) for o in obs)
    own, k, finite = upper_bound(ratios, censored, target_pct)
    w = weight(len(ratios), prior)
    value = own if finite or parent is None else borrow(own, parent, w)
    return LevelValue(value, own, k, finite, w, parent)


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
