"""The ``autopack-median`` calibration of the clean samples, and the provenance both methods report.

``autopack-median`` reproduces Autopack's ``calibrate_token_estimator.py`` figure by figure
(autopack_spec §4 step 6) so its recommendations can be compared with ours: per (category,
complexity) group the upper-middle ratio actual/predicted (``sorted(r)[n // 2]``), its population
standard deviation, budget waste at ``n // 2`` and ``min(int(0.9 n), n - 1)``. Each group's figures
come from one partition of its ratios and budget waste.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import (
    SLICE_ROWS,
    EventArrays,
    IntColumn,
    gathers_by_runs,
    kept_slices,
    rows_of,
)
from autopack_pipeline.domain.analysis.calibration_results import (
    AUTOPACK_MEDIAN,
    DEFAULT_CONFIDENCE_THRESHOLD,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    Provenance,
    action_text,
    group_order,
    median_confidence,
)
from autopack_pipeline.domain.analysis.order_statistics import order_statistics
from autopack_pipeline.domain.analysis.samples import SampleGroups, sample_groups
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _datetime_from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _masked_range(column: IntColumn, rows: np.ndarray) -> tuple[int, int] | None:
    """(min, max) of ``column`` over ``rows`` where it is known; None when empty."""
    chosen = rows if column.valid is None else rows & column.valid
    if not chosen.any():
        return None
    if column.increasing:  # event ids in the order they were written: the first and the last chosen
        first, last = int(np.argmax(chosen)), len(chosen) - 1 - int(np.argmax(chosen[::-1]))
        return int(column.values[first]), int(column.values[last])
    # The chosen values copied out, then two plain reductions: twice as fast as reducing with
    # ``where=`` (not vectorised). A million rows at a time: a copy the size of the column (80 MB of
    # timestamps at ten million events) would be fresh pages, the chunks' copies reuse malloc's.
    low, high = None, None
    for values in kept_slices(column.values, chosen, SLICE_ROWS):
        if len(values):
            least, most = int(values.min()), int(values.max())
            low, high = (least, most) if low is None else (min(low, least), max(high, most))
    return low, high


def provenance_arrays(arrays: EventArrays, samples: np.ndarray, provenance: dict[str, Any]) -> Provenance:
    """Provenance of the rows ``samples`` (a boolean mask): their id range and time window, plus what
    the caller knows (``exclusions``, ``coefficient_file_version``, ``dagster_run_id``, ``forced``,
    ``dedup``, ``run_ids``, ``database``, ``gate_summary``, ``window``); an unknown key is refused by
    :class:`Provenance`, so a typo cannot silently drop audit data."""
    ids = _masked_range(arrays.event_id, samples)
    stamps = _masked_range(arrays.timestamp_us, samples)
    exclusions = {str(k): int(v) for k, v in (provenance.get("exclusions") or {}).items()}
    return Provenance(
        event_id_min=ids[0] if ids else None,
        event_id_max=ids[1] if ids else None,
        time_window_start=_datetime_from_us(stamps[0]) if stamps else None,
        time_window_end=_datetime_from_us(stamps[1]) if stamps else None,
        samples_kept=int(samples.sum()),
        samples_excluded=sum(exclusions.values()),
        **{**provenance, "exclusions": exclusions},
    )


def calibrate_autopack_median_arrays(
    arrays: EventArrays,
    samples: np.ndarray,
    *,
    groups: SampleGroups | None = None,
    min_samples: int = MIN_GROUP_SAMPLES,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    provenance: dict[str, Any],
    gathered: Mapping[tuple[str, str], Any] | None = None,
) -> CalibrationResult:
    """Autopack's median-ratio calibration of the clean rows ``samples`` (a boolean mask).

    Groups with fewer than ``min_samples`` are listed in ``below_threshold``; the others get the
    full figure set, ``actionable`` when confidence >= ``confidence_threshold``. Both lists are sorted
    by (-samples, category, complexity), the order of Autopack's detailed table.

    ``gathered``: the coverage method's groups by key (``coverage_calibration.CoverageGroup``), whose
    clean rows' predictions, lengths, budgets and ratios were gathered already: a group whose clean
    rows are these same rows reads them (:func:`_gathered_figures`) instead of gathering them again.
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    groups = groups or sample_groups(arrays, samples)
    big = [i for i, rows in enumerate(groups.rows) if len(rows) >= min_samples]
    below = [
        BelowThresholdGroup(category=groups.keys[i][0], complexity=groups.keys[i][1], sample_count=len(rows),
                            needed=min_samples - len(rows))
        for i, rows in enumerate(groups.rows) if len(rows) < min_samples
    ]
    calibrated: list[GroupCalibration] = []
    # Every group's selected budgets in one gather, a block of the column at a time (arrays.rows_of with
    # runs), where each group's rows, spread over every event, were a cache line each (~0.04 s at 10M).
    every_selected = _selected_of_groups(arrays.selected_budget, [groups.rows[i] for i in big])
    # One group at a time (temporaries stay the size of the largest group), the last first: the coverage method,
    # on another thread, reads the same groups' sorted ratios from the first (CoverageGroup.ratios_ascending,
    # computed once by whichever asks first), so the two sort half of them each instead of one waiting for
    # the other's group after group. The groups are put in order below.
    for at, i in reversed(list(enumerate(big))):
        rows = groups.rows[i]
        selected_known = arrays.selected_budget.known_at(rows)
        selected = (arrays.selected_budget.known_or_zero(rows) if every_selected is None
                    else every_selected[at])
        figures = _gathered_figures(arrays, (gathered or {}).get(groups.keys[i]), rows)
        ascending = None
        if figures is not None:
            predicted, actual, ratios, budgets, ascending = figures
        else:
            predicted = arrays.predicted.values[rows]
            actual = arrays.actual.values[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(predicted != 0, actual / predicted, 0.0)  # int / int: the exact quotient, rounded
            sent = arrays.actual_max_tokens.known_or_zero(rows)
            budgets = np.where(sent != 0, sent, selected)  # Python's `s or b or 0`
        with np.errstate(divide="ignore", invalid="ignore"):
            waste = np.where(actual != 0, budgets / actual, 0.0)
        calibrated.append(_group_figures(groups.keys[i], ratios, waste, predicted, actual, selected[selected_known],
                                         confidence_threshold, ascending))
    return CalibrationResult(
        method=AUTOPACK_MEDIAN,
        parameters={"min_samples": int(min_samples), "confidence_threshold": float(confidence_threshold)},
        groups=sorted(calibrated, key=group_order),
        below_threshold=sorted(below, key=group_order),
        provenance=provenance_arrays(arrays, samples, provenance),
    )


def _selected_of_groups(column: IntColumn, rows: list[np.ndarray]) -> list[np.ndarray] | None:
    """``column.known_or_zero(r)`` of each of ``rows`` (each ascending), gathered together; None when the
    column misses a value, there is one group at most, or the column is small enough to be gathered group
    by group as fast (then each is gathered alone)."""
    if column.valid is not None or len(rows) < 2 or not gathers_by_runs(column.values):
        return None
    bounds = np.r_[0, np.cumsum([len(r) for r in rows])]
    values = rows_of(column.values, np.concatenate(rows), runs=bounds)
    return [values[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def _gathered_figures(arrays: EventArrays, group: Any, rows: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(predicted, actual, ratios, budgets, the ratios ascending) of ``rows`` read off a coverage group, or
    None when they cannot stand for this method's own: the group's clean rows must be ``rows`` (they are
    when every prediction is positive), and no budget may be missing (the coverage group's budget is then
    the integer rule's, as floats). Every value is the one gathered here: an int32 count converts to
    float64 exactly, the ratios are the same quotients (no prediction is 0 among them), and sums of
    those counts are exact integers either way. The median is read off the ratios sorted once for every
    reader (``CoverageGroup.ratios_ascending``), where a copy of them was partitioned."""
    if (group is None or arrays.actual_max_tokens.valid is not None or arrays.selected_budget.valid is not None
            or not np.array_equal(group.clean_rows, rows)):
        return None
    return group.predicted, group.actual, group.ratios, group.budget, group.ratios_ascending


def _group_figures(key: tuple[str, str], ratios: np.ndarray, waste: np.ndarray, predicted: np.ndarray,
                   actual: np.ndarray, known_selected: np.ndarray, threshold: float,
                   ascending: np.ndarray | None = None) -> GroupCalibration:
    """One group's figures; ``ascending``: ``ratios`` sorted (then only read), else ``ratios`` are this
    method's own copy, reordered by the median's partition."""
    n = len(ratios)
    low, high = float(ratios.min()), float(ratios.max())
    mean, std = float(ratios.mean()), float(ratios.std())  # before the partition reorders the ratios
    upper_middle = (float(ascending[n // 2]) if ascending is not None
                    else order_statistics(ratios, [n // 2], overwrite=True)[n // 2])
    p90_index = min(int(0.9 * n), n - 1)
    picked = order_statistics(waste, [n // 2, p90_index], overwrite=True)
    confidence = median_confidence(n, std)
    return GroupCalibration(
        category=key[0],
        complexity=key[1],
        sample_count=n,
        avg_actual=float(int(actual.sum())) / n,
        avg_estimated=float(int(predicted.sum())) / n,
        avg_ratio=mean,
        median_ratio=upper_middle,
        min_ratio=low,
        max_ratio=high,
        ratio_std=std,
        confidence=confidence,
        proposed_multiplier=upper_middle,
        median_budget_waste=float(picked[n // 2]),
        p90_budget_waste=float(picked[p90_index]),
        avg_selected_budget=float(int(known_selected.sum())) / len(known_selected) if len(known_selected) else None,
        actionable=confidence >= threshold,
        action=action_text(upper_middle),
    )
