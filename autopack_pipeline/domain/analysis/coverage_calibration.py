"""The ``coverage`` calibration: observations with censored (truncated) rows, their groups, the method.

The method's definitions are in :mod:`.coverage_rules`. Here the observations are gathered from the
arrays: each group's rows are a slice of one gather in group order, and the coverage levels (all
groups, a category, a group) are order statistics by partition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import (
    EventArrays,
    budget_sent,
    narrow_rows,
    success_flags,
    truncated_flags,
)
from autopack_pipeline.domain.analysis.calibration_results import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    group_order,
)
from autopack_pipeline.domain.analysis.coverage_rules import (
    COVERAGE,
    DEFAULT_TARGET_PCT,
    PRIOR_WEIGHT,
    LevelValue,
    borrow,
    group_calibration,
    order_statistic_index,
)
from autopack_pipeline.domain.analysis.coverage_rules import weight as coverage_weight
from autopack_pipeline.domain.analysis.median_calibration import provenance_arrays
from autopack_pipeline.domain.analysis.order_statistics import median_of, p90_of
from autopack_pipeline.domain.analysis.samples import (
    CleanSamples,
    SampleGroups,
    _member_of,
    _radix_type,
    clean_sample_rows,
    duplicate_attempts,
    stable_order,
)
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.group_observations import RatioPairs
from autopack_pipeline.domain.shared_figures import shared
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES, UNDER_TOLERANCE


def coverage_observations(
    arrays: EventArrays, *, dedup: bool = True, all_clean: CleanSamples | None = None
) -> tuple[CleanSamples, np.ndarray]:
    """(clean samples among positive predictions, censored rows mask): what coverage learns from.

    A truncated row is censored when its prediction is positive and its actual known; with dedup a
    phase that has a clean sample drops its censored rows, and the rest keep their last attempt.
    """
    positive = arrays.predicted.notna() & (arrays.predicted.values > 0)
    if all_clean is not None and positive.all():
        clean = all_clean  # clean_samples(frame[positive]) is clean_samples(frame)
    else:
        clean = clean_sample_rows(arrays, dedup=dedup, within=positive)
    censored = positive & arrays.actual.notna() & truncated_flags(arrays)
    if dedup and censored.any():
        width = _phase_width(arrays)
        phase = arrays.phase_key
        both_known = arrays.run_code.valid is None and arrays.phase_code.valid is None  # no mask to build
        run_ok, phase_ok = arrays.run_code.notna(), arrays.phase_code.notna()
        rows = np.flatnonzero(censored if both_known else censored & run_ok & phase_ok)
        if not both_known and (clean.mask & ~(run_ok & phase_ok)).any():
            # Rows missing one id: run ids and phase ids are paired after dropping missing ones separately
            # (the reference's rule, kept so results do not change). Such pairs need not be phases that
            # exist, so they are compared as run x width + phase codes, not as phase keys.
            runs = arrays.run_code.values[clean.mask & run_ok]
            phases = arrays.phase_code.values[clean.mask & phase_ok]
            size = min(len(runs), len(phases))
            pairs = runs[:size].astype(np.int64) * width + phases[:size]
            has_clean = _member_of(arrays.run_code.values[rows].astype(np.int64) * width
                                   + arrays.phase_code.values[rows], pairs)
        else:
            # np.extract: the clean rows' phases as phase.values[clean.mask] gives them, faster for a mask
            # of about three rows in four (numpy's boolean indexing branches per row: 41 against 16 ms at 10M).
            has_clean = _member_of(phase.values[rows], np.extract(clean.mask, phase.values))
        censored = censored.copy()
        censored[rows[has_clean]] = False
        censored[duplicate_attempts(arrays, censored)] = False
    return clean, censored


def _phase_width(arrays: EventArrays) -> int:
    return int(arrays.phase_code.values.max()) + 1 if len(arrays.phase_code.values) else 1


def _coverage_level(ratios: np.ndarray, censored: int, parent: float | None, target_pct: float,
                    prior: float, *, overwrite: bool = False, ascending: bool = False) -> LevelValue:
    """The coverage bound of one level from its clean ratios and its number of censored observations:
    its own bound when it has one, else borrowed from ``parent`` (see :mod:`.coverage_rules`).
    ``overwrite``: ``ratios`` is the caller's temporary, partitioned in place (no copy of it);
    ``ascending``: ``ratios`` are sorted already, and only read."""
    n = len(ratios) + censored
    if n == 0:
        raise ValueError("no observations")
    k = order_statistic_index(n, target_pct)
    if k <= n:
        own = math.inf
        if k - 1 < len(ratios) and ascending:
            own = float(ratios[k - 1])
        elif k - 1 < len(ratios):
            picked = ratios if overwrite else ratios.copy()  # what np.partition partitions
            picked.partition(k - 1)
            own = float(picked[k - 1])
        finite = True
    else:
        own = math.inf if censored else float(ratios.max())
        finite = False
    w = coverage_weight(len(ratios), prior)
    value = own if finite or parent is None else borrow(own, parent, w)
    return LevelValue(value, own, k, finite, w, parent)


def _coverage_waste(budget_sent: np.ndarray, predicted: np.ndarray, actual: np.ndarray, scale: float,
                    table: CoefficientTable | None, key: tuple[str, str]) -> tuple[float | None, float | None]:
    """Budget-waste P50 and P90 of one group's clean samples with estimates scaled by ``scale``.

    Without a coefficient table, budgets scale with the estimate. With one, ``select_budget``'s shape
    is kept: ``min(cap, max(floor, estimate * scale * margin))``, the margin read off each call
    (budget / estimate) when its budget was above the floor, else the table's base margin.
    """
    if table is None or scale == 1.0:
        budget = budget_sent * scale
    else:
        floor = table.budget_floor(key[0], key[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = np.where(budget_sent > floor, budget_sent / predicted, table.budget.buffer_margin)
        budget = np.minimum(table.budget.cap, np.maximum(floor, np.floor(predicted * scale * margin)))
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = budget / actual
        values = waste[np.isfinite(waste) & (budget > 0)]
    if len(values) == 0:
        return None, None
    # np.median's value (the middle one, or the two middle ones' mean), by order_statistics' faster
    # selection; the P90 then reads the same copy, reordered (order statistics do not depend on order).
    return median_of(values, overwrite=True), p90_of(values, overwrite=True)


# From this many clean calls on, a group's ratios are sorted through its distinct pairs (CoverageGroup.ratio_pairs).
_PAIRS_FROM = 4096


@dataclass
class CoverageGroup:
    """One (category, complexity) group's observations: row indices and their figures, in row order."""

    key: tuple[str, str]
    clean_rows: np.ndarray
    censored_rows: np.ndarray
    predicted: np.ndarray  # of the clean rows
    actual: np.ndarray
    budget: np.ndarray
    censored_predicted: np.ndarray
    censored_actual: np.ndarray
    ratios: np.ndarray  # actual / predicted of the clean rows
    bounds: np.ndarray  # max(ceiling, actual) / predicted of the censored rows

    # What the calibration plot reads.
    @property
    def lower_bounds(self) -> np.ndarray:
        return self.bounds

    @property
    def size(self) -> int:
        return len(self.clean_rows) + len(self.censored_rows)

    @property
    def ratios_ascending(self) -> np.ndarray:
        """``ratios`` sorted, once for every reader, on whichever thread asks first: the frontier (the
        economics), the group's own coverage factor and the first pooled pass each sorted them (about
        28 ms for the 720k clean calls of a million events, each time)."""
        return shared(self, "ratios_sorted", self._ratios_sorted)[0]

    @property
    def ratio_pairs(self) -> RatioPairs | None:
        """The group's distinct (predicted, actual) pairs in ascending ratio order, with how many calls have
        each (:class:`~autopack_pipeline.domain.group_observations.RatioPairs`), or None when the token counts
        are not all whole numbers below 2**31 or a ratio is zero or NaN."""
        return shared(self, "ratios_sorted", self._ratios_sorted)[1]

    def _ratios_sorted(self) -> tuple[np.ndarray, RatioPairs | None]:
        """(``ratios`` ascending, :attr:`ratio_pairs`)."""
        pairs = RatioPairs.of(self.predicted, self.actual) if len(self.ratios) >= _PAIRS_FROM else None
        if pairs is None:
            return np.sort(self.ratios), None
        return pairs.ascending_ratios(), pairs


def _coverage_group(arrays: EventArrays, group: CoverageGroup, level: LevelValue, tolerance: float,
                    target_pct: float, threshold: float, table: CoefficientTable | None) -> GroupCalibration:
    """One group's coverage figures (:func:`.coverage_rules.group_calibration`) from its arrays."""
    clean = len(group.ratios) > 0
    selected = arrays.selected_budget.floats_at(group.clean_rows if clean else group.censored_rows)

    def waste(scale: float, with_table: CoefficientTable | None) -> tuple[float | None, float | None]:
        return _coverage_waste(group.budget, group.predicted, group.actual, scale, with_table, group.key)

    return group_calibration(
        group.key, ratios=group.ratios, bounds=group.bounds,
        source_actual=np.asarray(group.actual if clean else group.censored_actual, dtype=float),
        source_predicted=np.asarray(group.predicted if clean else group.censored_predicted, dtype=float),
        selected=selected[~np.isnan(selected)],
        level=level, parent_name=f"category {group.key[0]}", tolerance=tolerance, target_pct=target_pct,
        threshold=threshold, waste_now=waste(1.0, None), projected_waste=lambda scale: waste(scale, table),
        ratios_ascending=group.ratios_ascending,
    )


def coverage_groups(
    arrays: EventArrays, *, dedup: bool = True, all_clean: CleanSamples | None = None,
    clean_groups: SampleGroups | None = None,
) -> tuple[CleanSamples, np.ndarray, list[CoverageGroup]]:
    """(clean samples, censored rows mask, observations per canonical group sorted by key).
    ``clean_groups``: ``sample_groups(arrays, all_clean.mask)``, when the caller has them (the pipeline's
    sample stage found them): the clean rows are then not grouped again."""
    clean, censored = coverage_observations(arrays, dedup=dedup, all_clean=all_clean)
    named = arrays.canonical_groups
    cat_names, cx_names = named.category_names, named.complexity_names
    if clean_groups is not None and clean is all_clean:
        rows, begins = _rows_with_clean_groups(arrays, clean_groups, censored)
    else:
        rows, begins = _rows_by_group(arrays, clean.mask, censored)
    # The figures of the used rows, gathered once in group order; every group is a slice (a view).
    # Each group's clean rows, then its censored rows, ascending: runs that begin at ``begins`` (rows_of).
    predicted, actual = arrays.predicted.floats_at(rows, begins), arrays.actual.floats_at(rows, begins)
    budget = budget_sent(arrays, rows, begins)

    groups: list[CoverageGroup] = []
    for code in np.flatnonzero(begins[2::2] > begins[:-1:2]):  # the groups with rows
        cat, cx = divmod(int(code), len(cx_names))
        start, split, end = (int(v) for v in begins[2 * code:2 * code + 3])
        kept, cut = slice(start, split), slice(split, end)
        ceiling = np.nan_to_num(budget[cut], nan=0.0)
        groups.append(CoverageGroup(
            key=(cat_names[cat], cx_names[cx]),
            clean_rows=rows[kept],
            censored_rows=rows[cut],
            predicted=predicted[kept], actual=actual[kept], budget=budget[kept],
            censored_predicted=predicted[cut], censored_actual=actual[cut],
            ratios=actual[kept] / predicted[kept],
            bounds=np.maximum(ceiling, np.nan_to_num(actual[cut], nan=0.0)) / predicted[cut],
        ))
    groups.sort(key=lambda g: g.key)
    return clean, censored, groups


def _rows_by_group(arrays: EventArrays, clean: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the clean and censored rows in group order: per (category, complexity) pair code, its clean rows
    ascending, then its censored ones; where each code's clean rows (at ``2 x code``) and censored rows
    (at ``2 x code + 1``) begin in them, and where the last end)."""
    named = arrays.canonical_groups
    # Every row's code, the unused rows on one code after the others', in one stable sort (a radix sort
    # while the codes fit in 16 bits), whose first rows are the used ones in group order (no list of the
    # used rows gathered and sorted apart).
    codes = 2 * len(named.category_names) * len(named.complexity_names)
    pair = named.category.astype(_radix_type(codes) if codes < 1 << 16 else np.int64)
    pair *= len(named.complexity_names)
    pair += named.complexity.astype(pair.dtype)
    pair *= 2
    pair += censored
    pair[~(clean | censored)] = codes
    order = np.argsort(pair, kind="stable")
    # Where each group's clean rows, then its censored ones, begin in that order: the counts of the
    # codes, summed up (no pass over the sorted codes).
    begins = np.r_[0, np.cumsum(np.bincount(pair, minlength=codes + 1))[:codes]]
    del pair
    return narrow_rows(order[:begins[-1]], len(arrays)), begins


def _rows_with_clean_groups(arrays: EventArrays, clean_groups: SampleGroups, censored: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_rows_by_group`, the clean rows taken from their groups (``sample_groups``: each group's clean
    rows ascending) and only the censored rows (a tenth of the calls) sorted by group: the same order
    without a sort of every event."""
    named = arrays.canonical_groups
    width, count = len(named.complexity_names), len(named.category_names) * len(named.complexity_names)
    cut = narrow_rows(np.flatnonzero(censored), len(arrays))
    pair = named.category[cut].astype(np.int64) * width + named.complexity[cut]
    cut = cut[stable_order(pair)]  # stable: each group's censored rows stay ascending
    cut_ends = np.cumsum(np.bincount(pair, minlength=count))
    del pair
    clean_of = {named.category_names.index(cat) * width + named.complexity_names.index(cx): rows
                for (cat, cx), rows in zip(clean_groups.keys, clean_groups.rows)}
    empty = cut[:0]
    parts, sizes = [], []
    for code in range(count):
        mine = cut[(cut_ends[code - 1] if code else 0):cut_ends[code]]
        parts += [clean_of.get(code, empty), mine]
        sizes += [len(parts[-2]), len(mine)]
    return np.concatenate(parts).astype(cut.dtype, copy=False), np.r_[0, np.cumsum(sizes)]


def calibrate_coverage_arrays(
    arrays: EventArrays,
    *,
    min_samples: int = MIN_GROUP_SAMPLES,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    dedup: bool = True,
    tolerance: float = UNDER_TOLERANCE,
    target_pct: float = DEFAULT_TARGET_PCT,
    prior_weight: float = PRIOR_WEIGHT,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any],
    all_clean: CleanSamples | None = None,
    observed: tuple[CleanSamples, np.ndarray, list[CoverageGroup]] | None = None,
) -> CalibrationResult:
    """Coverage-targeted multipliers for every group with at least ``min_samples`` observations.

    ``arrays`` is the whole analysis set (not only clean samples): truncated events are part of the
    evidence. Groups below ``min_samples`` observations are listed in ``below_threshold``; every
    level (group, category, global) still uses all observations. With ``coefficients``, projected
    budgets respect its floors and cap (``select_budget``'s shape). Provenance counts the exclusions
    of the clean samples, minus the truncated events used as censored observations, plus the clean
    samples left out for a zero prediction (``zero_prediction``): kept + excluded = all rows.
    ``all_clean`` may pass ``clean_sample_rows(arrays, dedup=dedup)`` and ``observed`` the result of
    ``coverage_groups(arrays, dedup=dedup)`` when the caller has them already.
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if not 0 < target_pct < 100 or tolerance <= 0 or prior_weight <= 0:
        raise ValueError("need 0 < target_pct < 100, tolerance > 0 and prior_weight > 0")
    clean, censored, groups = observed or coverage_groups(arrays, dedup=dedup, all_clean=all_clean)

    calibrated: list[GroupCalibration] = []
    below: list[BelowThresholdGroup] = []
    if groups:
        # The root's and each category's ratios are concatenated for them alone: partitioned in place.
        root = _coverage_level(np.concatenate([g.ratios for g in groups]), sum(len(g.censored_rows) for g in groups),
                               None, target_pct, prior_weight, overwrite=True)
        categories = {}
        for category in sorted({g.key[0] for g in groups}):
            members = [g for g in groups if g.key[0] == category]
            categories[category] = _coverage_level(np.concatenate([g.ratios for g in members]),
                                                   sum(len(g.censored_rows) for g in members), root.value,
                                                   target_pct, prior_weight, overwrite=True)
        for group in groups:
            size = len(group.clean_rows) + len(group.censored_rows)
            if size < min_samples:
                below.append(BelowThresholdGroup(category=group.key[0], complexity=group.key[1], sample_count=size,
                                                 needed=min_samples - size))
                continue
            # Its ratios sorted once for every reader (CoverageGroup.ratios_ascending): no copy to partition.
            level = _coverage_level(group.ratios_ascending, len(group.censored_rows), categories[group.key[0]].value,
                                    target_pct, prior_weight, ascending=True)
            calibrated.append(_coverage_group(arrays, group, level, tolerance, target_pct, confidence_threshold,
                                              coefficients))

    everything = all_clean if all_clean is not None else clean_sample_rows(arrays, dedup=dedup)
    exclusions = dict(everything.exclusions)
    failed = int((~success_flags(arrays)[censored]).sum())
    exclusions["failed"] -= failed
    exclusions["truncated"] -= int(censored.sum()) - failed
    exclusions["zero_prediction"] = everything.count - clean.count
    return CalibrationResult(
        method=COVERAGE,
        parameters={
            "min_samples": int(min_samples),
            "confidence_threshold": float(confidence_threshold),
            "target_underestimation_pct": float(target_pct),
            "tolerance": float(tolerance),
            "prior_weight": float(prior_weight),
            "censored_observations": int(censored.sum()),
        },
        groups=sorted(calibrated, key=group_order),
        below_threshold=sorted(below, key=group_order),
        provenance=provenance_arrays(arrays, clean.mask | censored, {**provenance, "exclusions": exclusions}),
    )
