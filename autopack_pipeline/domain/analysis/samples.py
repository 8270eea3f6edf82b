"""Clean samples: the events calibration may learn from, attempt dedup, and the samples' groups.

Autopack's first baseline was computed on failed calls with ~120-token outputs and told people to cut
coefficients by 80% (its pitfall P2); truncated rows only give a lower bound on the real output (P3);
tiny outputs are parser failures (P4); and retries put several rows under one phase (P11). A clean
sample is therefore: ``success`` and not truncated and ``actual_output_tokens >= 50`` with both token
counts known, and, unless dedup is turned off, one row per ``(run_id, phase_id)``: its highest
attempt, ties going to the newest event id, then the latest timestamp. Every excluded row is counted
under exactly one reason (the first it meets), so the counts add up to the rows given.

Dedup is exact without comparing strings: a phase, (run_id, phase_id), is identified by the pair of
integer codes :class:`EventArrays` keeps (its ``phase_key``), and only rows whose phase occurs more than
once are sorted. The key helpers here (stable radix order, repeated keys, membership) are shared with
the coverage calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autopack_pipeline.domain.analysis.arrays import (
    SLICE_ROWS,
    EventArrays,
    IntColumn,
    narrow_rows,
    success_flags,
    truncated_flags,
)
from autopack_pipeline.domain.targets import MIN_ACTUAL_TOKENS

# Exclusion reasons, in the order they are tested. A row failing several tests is counted under the
# first one, so the counts partition the excluded rows.
EXCLUSION_REASONS: tuple[str, ...] = (
    "failed",
    "truncated",
    "missing_tokens",
    "below_min_actual",
    "duplicate_attempt",
)


def stable_order(keys: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, as a radix sort when the keys fit in 16 bits (one byte per key
    when they fit in 8: a quarter less time than two bytes at ten million keys); floats by
    :func:`_stable_float_order` (``near``: see there)."""
    if keys.dtype.kind == "f":
        return _stable_float_order(keys, near)
    if len(keys) and int(keys.min()) >= 0 and int(keys.max()) < 1 << 16:
        return np.argsort(keys.astype(_radix_type(int(keys.max()))), kind="stable")
    return np.argsort(keys, kind="stable")


def _radix_type(largest: int) -> type:
    """The narrowest unsigned type numpy's stable sort takes as a radix sort for keys up to ``largest``."""
    return np.uint8 if largest < 1 << 8 else np.uint16


def _stable_float_order(keys: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
    """The stable order of float ``keys``, the same permutation, from numpy's unstable sort: its
    stable one of float64 is a merge sort, 4x slower, and a pooled margin sorts a group of 1.5M
    ratios per call. The unstable order differs only inside runs of equal keys, and those (token
    ratios repeat: three in four at 3M events) are put back in row order by one sort of (run, row).

    ``near``: an order that nearly sorts ``keys`` (the same calls' ratios before a factor moved
    them), when the caller has one: numpy's stable sort of the keys in that order is a timsort,
    which runs through sorted stretches, 5x faster than sorting from scratch. Only speed depends on
    it: the order returned is the same."""
    order = np.argsort(keys) if near is None else near[np.argsort(keys[near], kind="stable")]
    ordered = keys[order]
    if len(keys) < 2 or np.isnan(ordered[-1]):  # NaN (sorted last) is unequal to itself: no runs to find
        return np.argsort(keys, kind="stable")
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    tied = ~starts
    tied[:-1] |= ~starts[1:]  # the first of each run too
    at = np.flatnonzero(tied)
    if len(at):
        run = np.cumsum(starts)[at].astype(np.int64)
        order[at] = np.sort(run * len(keys) + order[at]) % len(keys)
    return order


def _occurs_twice(keys: np.ndarray) -> np.ndarray:
    """Mask of the non-negative ``keys`` that occur more than once."""
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    top = int(keys.max()) + 1
    if top <= 4 * len(keys) + 4096:
        # Each key's test read off one flag per value, not its count gathered (an int64 per key).
        return (np.bincount(keys, minlength=top) > 1)[keys]
    # Few keys over a wide range (the censored calls' phases): a value occurring more than once equals its
    # neighbour once sorted, and those values are marked (np.unique's inverse and counts cost 4x as much:
    # 0.10 against 0.03 s for 1.8M keys at ten million events).
    # Keys in nearly ascending order (the censored calls' phases, in row order: 99.98% ascending at ten
    # million events) are sorted by timsort's runs, 3 against 60 ms for 1.8M keys; others by quicksort,
    # which a timsort of keys in no order is slower than. The same sorted integers either way.
    descents = int(np.count_nonzero(keys[1:] < keys[:-1]))
    ordered = np.sort(keys, kind="stable" if descents < len(keys) // 64 else None)
    return _member_of(keys, ordered[1:][ordered[1:] == ordered[:-1]])


def _member_of(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Mask of the non-negative ``keys`` found in ``pool``."""
    if len(keys) == 0 or len(pool) == 0:
        return np.zeros(len(keys), dtype=bool)
    top = max(int(keys.max()), int(pool.max())) + 1
    if top <= 4 * (len(keys) + len(pool)) + 4096:
        marks = np.zeros(top, dtype=bool)
        marks[pool] = True
        return marks[keys]
    return np.isin(keys, pool)


@dataclass(frozen=True)
class CleanSamples:
    """Which rows are clean samples (``mask``) and why the others are not (counts by reason)."""

    mask: np.ndarray
    exclusions: dict[str, int]

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def clean_sample_rows(
    arrays: EventArrays,
    *,
    dedup: bool = True,
    min_actual: int = MIN_ACTUAL_TOKENS,
    within: np.ndarray | None = None,
) -> CleanSamples:
    """Which rows are clean samples and, for the others, the count per exclusion reason, in one pass.

    ``within`` (a boolean mask) restricts both to those rows (the others are neither kept nor counted).
    """
    n = len(arrays)
    outside = len(EXCLUSION_REASONS) + 1
    missing = ~arrays.predicted.notna() | ~arrays.actual.notna()
    # A missing actual counts as min_actual (not short): the known ones compared, no copy of the column.
    short = arrays.actual.values < min_actual
    if arrays.actual.valid is not None:
        short &= arrays.actual.valid
    tests = (~success_flags(arrays), truncated_flags(arrays), missing, short)
    del short
    # 0: kept, else 1 + index into EXCLUSION_REASONS, the first test a row fails: the tests written last
    # to first, each over the ones after it (a select per test, not a masked write of every row per test).
    reason = np.zeros(n, dtype=np.int8)
    for code in range(len(tests), 0, -1):
        reason = np.where(tests[code - 1], np.int8(code), reason)
    del tests
    if within is not None:
        reason[~within] = outside
    if dedup:
        reason[duplicate_attempts(arrays, reason == 0)] = len(EXCLUSION_REASONS)
    counts = np.bincount(reason, minlength=outside + 1)
    exclusions = {name: int(counts[i + 1]) for i, name in enumerate(EXCLUSION_REASONS)}
    return CleanSamples(mask=reason == 0, exclusions=exclusions)


def duplicate_attempts(arrays: EventArrays, candidates: np.ndarray) -> np.ndarray:
    """Row indices that lose their phase's one slot to a later attempt (``keep="last"`` after sorting).

    Only rows whose phase occurs more than once among the candidates are sorted, as
    ``sort_values(["attempt", "event_id", "timestamp"], na_position="first", kind="mergesort")``
    sorts them, the original position breaking ties.
    """
    phase = arrays.phase_key
    keyed = np.flatnonzero(candidates & phase.notna())
    if len(keyed) < 2:
        return np.zeros(0, dtype=np.int64)
    rows = keyed[_occurs_twice(phase.values[keyed])]
    if len(rows) == 0:
        return rows
    group = phase.values[rows]
    attempt, ids = arrays.attempt, arrays.event_id
    if attempt.valid is None and ids.increasing:
        # Event ids unique and increasing with the rows: the ids, then the timestamps and the rows, order
        # a phase's equal attempts as the rows' own order does, so one stable sort of (phase, attempt) in
        # one integer is the same order. The rows come in phase order nearly, which numpy's stable sort
        # of 64-bit keys (a timsort) runs through, where lexsort sorted five keys from scratch.
        tries = attempt.values[rows].astype(np.int64)
        low, span = (int(tries.min()), int(tries.max()) - int(tries.min()) + 1) if len(tries) else (0, 1)
        if (int(group.max()) + 1) * span < 1 << 62 and int(group.min()) >= 0:
            tries -= low
            tries += group.astype(np.int64) * span
            order = np.argsort(tries, kind="stable")
            ordered_group = group[order]
            last_of_group = np.r_[ordered_group[1:] != ordered_group[:-1], True]
            return rows[order[~last_of_group]]

    def key(column: IntColumn) -> tuple[np.ndarray, ...]:
        """(value, whether known), least significant first; a column known everywhere sorts by its
        values alone (a constant key orders nothing, and each key is a pass of lexsort)."""
        if column.valid is None:
            return (column.values[rows],)
        present = column.valid[rows]
        return np.where(present, column.values[rows], 0), present.astype(np.int8)

    order = np.lexsort((rows, *key(arrays.timestamp_us), *key(arrays.event_id), *key(arrays.attempt), group))
    ordered_group = group[order]
    last_of_group = np.r_[ordered_group[1:] != ordered_group[:-1], True]
    return rows[order[~last_of_group]]


@dataclass(frozen=True)
class SampleGroups:
    """Clean samples split into canonical (category, complexity) groups, row indices per group."""

    keys: list[tuple[str, str]]  # sorted
    rows: list[np.ndarray]  # row indices into the arrays, in row order

    def counts(self) -> dict[tuple[str, str], int]:
        return {key: len(r) for key, r in zip(self.keys, self.rows)}


def sample_groups(arrays: EventArrays, samples: np.ndarray) -> SampleGroups:
    """The clean rows ``samples`` (a boolean mask) split into canonical (category, complexity) groups."""
    usable = samples & arrays.predicted.notna() & arrays.actual.notna()
    named = arrays.canonical_groups
    cat_names, cx_names = named.category_names, named.complexity_names
    # A million rows at a time (rows_by_pair): one stable sort of every row's pair code took twice the
    # time, and its int64 order and the sort's own buffer were 160 MB of fresh pages at ten million events.
    rows = rows_by_pair(usable, named.category, named.complexity, len(cx_names), len(cat_names) * len(cx_names))
    del usable
    found = []
    for code in [code for code, mine in enumerate(rows) if len(mine)]:
        cat, cx = divmod(code, len(cx_names))
        found.append(((cat_names[cat], cx_names[cx]), rows[code]))
    found.sort(key=lambda item: item[0])
    return SampleGroups(keys=[k for k, _r in found], rows=[r for _k, r in found])


def rows_by_pair(usable: np.ndarray, cat_codes: np.ndarray, cx_codes: np.ndarray, width: int, count: int,
                 chunk: int = SLICE_ROWS) -> list[np.ndarray]:
    """Per (category, complexity) pair code (``category * width + complexity``), the ``usable`` rows, ascending
    (the clean samples' groups, the economics' rows per group).

    Every group's rows from stable sorts of the rows by pair, rather than a mask over every event per
    group (35 groups x 10M events was most of the economics' time); a million rows at a time, as int32
    row numbers, so the sort's temporaries are those of a million rows, not of every event (the
    analysis is near its peak memory when the economics run)."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(count)]
    for begin in range(0, len(usable), chunk):
        rows = narrow_rows(np.flatnonzero(usable[begin:begin + chunk]), len(usable))
        rows += begin
        pair = np.multiply(cat_codes[rows], width, dtype=np.int32)  # int32 from the int8 codes
        pair += cx_codes[rows]
        order = stable_order(pair)  # radix: each pair's rows stay ascending
        ends = np.cumsum(np.bincount(pair, minlength=count))
        rows = rows[order]
        for code in np.flatnonzero(np.diff(np.r_[0, ends])):
            pieces[code].append(rows[(ends[code - 1] if code else 0):ends[code]])
    empty = narrow_rows(np.zeros(0, dtype=np.int64), len(usable))
    return [np.concatenate(parts) if parts else empty for parts in pieces]
