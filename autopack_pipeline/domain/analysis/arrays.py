"""The events as numpy arrays: nullable integer and label columns, :class:`EventArrays`, per-row flags.

:class:`EventArrays` holds an events frame's columns as one numpy array per column, labels as integer
codes, in the frame's row order. Nothing in this package knows where the arrays came from: the
columnar store builds them, ``autopack_pipeline.storage.frames`` converts an events frame, and
:meth:`EventArrays.from_records` builds them from plain records. The per-row readings every later
step shares (success, truncation, the budget sent) are defined here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

import numpy as np

from autopack_pipeline.domain.categories import normalise_category, normalise_complexity

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Rows per slice where a pass over every row goes through a temporary a slice at a time: the slices'
# temporaries (half a MB) come back from malloc each time, where one of every row (tens of MB at ten
# million events) is fresh pages the kernel zeroes.
CHUNK_ROWS = 1 << 16
# Rows per slice where a pass keeps each slice's result (row lists found, sorted or reduced a slice at a
# time): its temporaries are a million rows' instead of every event's.
SLICE_ROWS = 1 << 20


@dataclass(frozen=True)
class IntColumn:
    """A nullable integer column: ``values`` (anything where ``valid`` is False) and ``valid`` (None: all)."""

    values: np.ndarray
    valid: np.ndarray | None = None

    def floats(self) -> np.ndarray:
        """As float64 with NaN where missing (what ``_floats`` of the metrics gives)."""
        out = self.values.astype(np.float64)
        if self.valid is not None:
            out[~self.valid] = np.nan
        return out

    def floats_at(self, rows: np.ndarray | None, runs: np.ndarray | None = None) -> np.ndarray:
        """``floats()`` of the rows selected by ``rows`` (indices or a mask; None: all); ``runs``: see
        :func:`rows_of`."""
        if rows is None:
            return self.floats()
        out = rows_of(self.values, rows, np.float64, runs=runs)
        if self.valid is not None:
            out[~self.valid[rows]] = np.nan
        return out

    def notna(self) -> np.ndarray:
        return np.ones(len(self.values), dtype=bool) if self.valid is None else self.valid

    @cached_property
    def increasing(self) -> bool:
        """Every value known and each above the one before it (event ids, read in id order): the least and
        the largest of any rows are then the first and the last of them, and the values order rows as
        their positions do."""
        return self.valid is None and bool((self.values[1:] > self.values[:-1]).all())

    def known_at(self, rows: np.ndarray) -> np.ndarray:
        """Whether the column is known at ``rows``: a mask of those rows only (``notna()`` of a column
        known everywhere builds a mask of every event)."""
        return np.ones(len(rows), dtype=bool) if self.valid is None else self.valid[rows]

    def known_or_zero(self, rows: np.ndarray) -> np.ndarray:
        """The values at ``rows``, 0 where missing."""
        values = self.values[rows]
        return values if self.valid is None else np.where(self.valid[rows], values, 0)

    def take(self, rows: np.ndarray) -> IntColumn:
        return IntColumn(self.values[rows], None if self.valid is None else self.valid[rows])


@dataclass(frozen=True)
class LabelColumn:
    """A nullable string column as codes into ``labels``; code -1 means missing."""

    codes: np.ndarray
    labels: tuple[str, ...]

    def notna(self) -> np.ndarray:
        return self.codes >= 0

    def canonical(self, normaliser: Callable[[str | None], str], *, narrow: bool = False
                  ) -> tuple[np.ndarray, list[str]]:
        """Codes into the sorted canonical spellings (``canonical_labels`` of the samples module), int32,
        or with ``narrow`` int8 when the spellings fit (a quarter of the memory)."""
        mapped = [normaliser(label) for label in self.labels] + [normaliser(None)]
        names = sorted(set(mapped))
        dtype = np.int8 if narrow and len(names) <= np.iinfo(np.int8).max else np.int32
        lookup = np.array([names.index(name) for name in mapped], dtype=dtype)
        return lookup[self.codes], names  # code -1 picks the last entry: normaliser(None)


@dataclass(frozen=True)
class CanonicalGroups:
    """Every event's canonical category and complexity: codes (int8 while the spellings fit) into the
    sorted canonical spellings (:meth:`LabelColumn.canonical`). Callers widen the codes before they
    combine them (a pair's code is ``category * len(complexity_names) + complexity``)."""

    category: np.ndarray
    category_names: list[str]
    complexity: np.ndarray
    complexity_names: list[str]


# EventArrays' cached figures that read no prediction: the re-expressed predictions (domain.reprediction)
# keep them, where finding them again was ~8 ms at a million events.
_KEPT_WITH_OTHER_PREDICTIONS = ("phase_key", "canonical_groups", "truncated_calls")


@dataclass(frozen=True)
class EventArrays:
    """An events frame's columns as numpy arrays, in the frame's row order.

    ``success``, ``truncated`` and ``is_truncated_output`` are int8: 1, 0, or -1 for missing.
    ``timestamp_us`` is microseconds since the epoch (UTC). ``run_code`` and ``phase_code`` number
    the distinct run ids and phase ids (equal code, equal string; invalid where missing), so a phase,
    (run_id, phase_id), is identified exactly by the pair of codes without keeping any string.
    """

    event_id: IntColumn
    timestamp_us: IntColumn
    category: LabelColumn
    complexity: LabelColumn
    deliverable_count: IntColumn
    predicted: IntColumn
    actual: IntColumn
    selected_budget: IntColumn
    actual_max_tokens: IntColumn
    success: np.ndarray
    truncated: np.ndarray
    is_truncated_output: np.ndarray
    attempt: IntColumn
    run_code: IntColumn
    phase_code: IntColumn
    # The model each call used (the spend figures price it); None when the source did not carry it.
    model: LabelColumn | None = None

    def __len__(self) -> int:
        return len(self.success)

    def take(self, rows: np.ndarray) -> EventArrays:
        """The events at ``rows`` (indices or a boolean mask), in that order; labels keep their codes."""
        columns = {}
        for name in self.__dataclass_fields__:
            column = getattr(self, name)
            if column is None:
                columns[name] = None
            elif isinstance(column, IntColumn):
                columns[name] = column.take(rows)
            elif isinstance(column, LabelColumn):
                columns[name] = LabelColumn(column.codes[rows], column.labels)
            else:
                columns[name] = column[rows]
        return EventArrays(**columns)

    def with_predicted(self, predicted: IntColumn) -> EventArrays:
        """These events with ``predicted`` in place of their predictions. The figures cached on them that
        do not read the predictions (:data:`_KEPT_WITH_OTHER_PREDICTIONS`) come along, not found again."""
        other = replace(self, predicted=predicted)
        for name in _KEPT_WITH_OTHER_PREDICTIONS:
            if name in self.__dict__:  # where cached_property keeps a figure once found
                other.__dict__[name] = self.__dict__[name]
        return other

    @cached_property
    def phase_key(self) -> IntColumn:
        """One exact integer per (run_id, phase_id); invalid where either is missing.

        When every phase id occurs under one run only (Autopack gives each run its own phase ids),
        the phase code alone is that integer: dense, below the number of phase ids, so the sample
        dedup counts and marks keys in arrays (``np.bincount``) where the pair's code, up to
        runs x phase ids, would have to be hashed (seconds at ten million events)."""
        runs, phases = self.run_code.values, self.phase_code.values
        width = int(phases.max()) + 1 if len(phases) else 1
        valid = self.run_code.notna() & self.phase_code.notna()
        every = bool(valid.all())
        # Every pair known (the usual case): the columns themselves, not boolean gathers of them.
        known_runs, known_phases = (runs, phases) if every else (runs[valid], phases[valid])
        owner = np.full(width, -1, dtype=runs.dtype)
        owner[known_phases] = known_runs  # a phase's last run wins; any other run shows below
        if np.array_equal(owner[known_phases], known_runs):
            keys = phases  # the codes themselves (int32: half the memory of pair codes)
        else:
            keys = runs.astype(np.int64) * width + phases
        return IntColumn(keys, None if every else valid)

    @cached_property
    def canonical_groups(self) -> CanonicalGroups:
        """:class:`CanonicalGroups` of these events, computed once: the samples, the strata, the gate's
        groups, the coverage groups and the economics all read them (each recomputing them was ten
        passes over every event at ten million events, where int8 codes cost 20 MB kept)."""
        categories, category_names = self.category.canonical(normalise_category, narrow=True)
        complexities, complexity_names = self.complexity.canonical(normalise_complexity, narrow=True)
        for codes in (categories, complexities):
            codes.flags.writeable = False  # shared by every reader
        return CanonicalGroups(categories, category_names, complexities, complexity_names)

    @cached_property
    def truncated_calls(self) -> np.ndarray:
        """:func:`truncated_flags`, computed once and read-only: the samples, the tier metrics, the coverage
        observations and the retries all read it (four passes and their temporaries at ten million events)."""
        flags = truncation_rule(self.truncated, self.is_truncated_output)
        flags.flags.writeable = False  # shared by every reader
        return flags

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> EventArrays:
        """Arrays of plain event records (dicts keyed by the events table's column names).

        A missing key or ``None`` is an unknown value; ``timestamp`` is a :class:`datetime` (naive
        means UTC). For the small inputs built in Python (parsed log lines, tests); a database or a
        frame is converted by the storage layer (``autopack_pipeline.storage.frames``).
        """
        def values(name: str) -> list[Any]:
            return [record.get(name) for record in records]

        def ints(name: str) -> IntColumn:
            found = values(name)
            valid = np.array([v is not None for v in found], dtype=bool)
            numbers = np.array([0 if v is None else int(v) for v in found], dtype=np.int64)
            return IntColumn(numbers, None if valid.all() else valid)

        def codes_of(found: list[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
            seen: dict[str, int] = {}  # in order of first appearance, as a factorisation numbers them
            codes = [-1 if v is None else seen.setdefault(str(v), len(seen)) for v in found]
            return np.array(codes, dtype=np.int32), tuple(seen)

        def labels(name: str) -> LabelColumn:
            return LabelColumn(*codes_of(values(name)))

        def flags(name: str) -> np.ndarray:
            return np.array([-1 if v is None else int(bool(v)) for v in values(name)], dtype=np.int8)

        def keys(name: str) -> IntColumn:
            found, _labels = codes_of(values(name))
            valid = found >= 0
            return IntColumn(np.where(valid, found, 0).astype(np.int64), None if valid.all() else valid)

        def microseconds(moment: datetime | None) -> int | None:
            if moment is None:
                return None
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
            return (moment - _EPOCH) // timedelta(microseconds=1)

        stamps = [microseconds(v) for v in values("timestamp")]
        stamp_valid = np.array([v is not None for v in stamps], dtype=bool)
        return cls(
            event_id=ints("event_id"),
            timestamp_us=IntColumn(np.array([v or 0 for v in stamps], dtype=np.int64),
                                   None if stamp_valid.all() else stamp_valid),
            category=labels("category"),
            complexity=labels("complexity"),
            deliverable_count=ints("deliverable_count"),
            predicted=ints("predicted_output_tokens"),
            actual=ints("actual_output_tokens"),
            selected_budget=ints("selected_budget"),
            actual_max_tokens=ints("actual_max_tokens"),
            success=flags("success"),
            truncated=flags("truncated"),
            is_truncated_output=flags("is_truncated_output"),
            attempt=ints("attempt"),
            run_code=keys("run_id"),
            phase_code=keys("phase_id"),
            model=labels("model"),
        )


def rows_of(values: np.ndarray, rows: np.ndarray, dtype: type | None = None, *,
            runs: np.ndarray | None = None) -> np.ndarray:
    """``values[rows]`` (``rows``: indices or a mask) as ``dtype`` (default: the values'). Indices are
    gathered by np.take a slice at a time into the result: fancy indexing with the int32 row lists the
    calibration keeps is 1.7x slower (0.11 against 0.065 s for 8M rows of a group order), np.take of all
    of them at once copies them to int64 first, and a converted gather is no second copy of the values.

    ``runs``: where ascending runs of ``rows`` begin (and the last ends), when they are such runs (each
    group's rows in a group order): they are then gathered a block of ``values`` at a time, every run's
    rows in that block, so each block is read from the CPU cache by every run (:func:`_rows_of_runs`)."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        out = values[rows]
        return out if dtype is None else out.astype(dtype)
    out = np.empty(len(rows), dtype=values.dtype if dtype is None else dtype)
    if runs is not None and len(runs) > 2 and gathers_by_runs(values):
        return _rows_of_runs(values, rows, runs, out)
    for start in range(0, len(rows), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = np.take(values, rows[start:start + CHUNK_ROWS])
    return out


# Rows of a column per block of :func:`_rows_of_runs` (2 MB of int32 values: within the CPU's caches).
_RUN_BLOCK = 1 << 19
# A column this large or smaller is gathered run by run (:func:`rows_of`): it stays in the CPU's last-level
# cache (32 MB here), where a plain gather is the faster (3M int32 values: 8 against 11 ms; 4.5M: 42 against 22).
_RUNS_FROM_BYTES = 16 << 20


def gathers_by_runs(values: np.ndarray) -> bool:
    """Whether :func:`rows_of` gathers runs of rows from ``values`` a block at a time (else run by run)."""
    return values.nbytes > _RUNS_FROM_BYTES


def _rows_of_runs(values: np.ndarray, rows: np.ndarray, runs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`rows_of` of rows made of ascending runs (``rows[runs[i]:runs[i + 1]]``), into ``out``. Gathered
    run by run, each run's rows spread over the whole column (35 groups' rows interleaved at ten million
    events: each row a cache line of its own, 0.09 s per column of 9M rows); a block of the column at a
    time, each run's rows in it, the block's lines are read once (0.045 s). The same values, in place."""
    edges = np.arange(0, len(values) + _RUN_BLOCK, _RUN_BLOCK)
    if edges.dtype != rows.dtype and edges[-1] <= np.iinfo(rows.dtype).max:
        # In the rows' own type: int64 edges searched in a run of int32 rows copy the run to int64 first.
        edges = edges.astype(rows.dtype)
    cuts = []
    for start, end in zip(runs[:-1], runs[1:]):
        if end > start:
            cut = start + np.searchsorted(rows[start:end], edges)
            # Every position of the run in exactly one block, whatever its rows: a run out of order costs
            # speed, never a value (each position gets its own row's value).
            cut[0], cut[-1] = start, end
            cuts.append(np.maximum.accumulate(cut))
    for block in range(len(edges) - 1):
        for cut in cuts:
            first, last = int(cut[block]), int(cut[block + 1])
            if last > first:
                out[first:last] = np.take(values, rows[first:last])
    return out


def kept_slices(values: np.ndarray, keep: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """``values[keep]`` a slice of ``rows`` at a time: each slice's kept values, in order. Below nine in ten
    kept, by ``np.extract`` (the positions, then a gather): a boolean index branches per row and is 2-3x
    slower there (the clean samples keep about three rows in four); above, the boolean index is faster."""
    sparse = np.count_nonzero(keep) < 0.9 * len(keep)
    for start in range(0, len(values), rows):
        chunk, flags = values[start:start + rows], keep[start:start + rows]
        yield np.extract(flags, chunk) if sparse else chunk[flags]


def rows_of_masks(parts: list[np.ndarray | None], total: int) -> tuple[np.ndarray, list]:
    """(each part's rows ascending (a mask of ``total`` rows; None: all), the parts one after the other;
    where each part ends in them): the parts' ``np.flatnonzero`` concatenated, found a million rows at a
    time into the one array (each part's list apart was a second 80 MB at ten million events)."""
    sizes = [total if part is None else int(np.count_nonzero(part)) for part in parts]
    rows, at = np.empty(sum(sizes), dtype=np.int64), 0
    for part in parts:
        if part is None:
            rows[at:at + total] = np.arange(total)
            at += total
            continue
        for start in range(0, total, SLICE_ROWS):
            found = np.flatnonzero(part[start:start + SLICE_ROWS])
            found += start
            rows[at:at + len(found)] = found
            at += len(found)
    return rows, list(np.cumsum(sizes))


def truncation_rule(truncated: np.ndarray, is_truncated_output: np.ndarray) -> np.ndarray:
    """Whether each call was truncated, from the two int8 flags (1, 0, -1 missing); DESIGN §5.

    ``truncated`` is trusted; ``is_truncated_output`` only fills in where ``truncated`` is missing:
    rows written before that later column existed carry ``False`` there even when the call was
    truncated. Both unknown: not truncated.
    """
    return np.where(truncated >= 0, truncated == 1, is_truncated_output == 1)


def truncated_flags(arrays: EventArrays) -> np.ndarray:
    """:func:`truncation_rule` of every event (read-only: :attr:`EventArrays.truncated_calls`)."""
    return arrays.truncated_calls


def success_flags(arrays: EventArrays) -> np.ndarray:
    """Successful Builder calls; an unknown outcome does not count as success."""
    return arrays.success == 1


def truncation_disagreements(arrays: EventArrays) -> int:
    """Rows whose ``truncated`` and ``is_truncated_output`` flags are both known and differ.

    A data-quality finding rather than an error: the metrics trust ``truncated``.
    """
    a, b = arrays.truncated, arrays.is_truncated_output
    return int(((a >= 0) & (b >= 0) & (a != b)).sum())


def budget_sent_rule(sent: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """The ceiling each call ran under, from ``actual_max_tokens`` and ``selected_budget`` (NaN: missing).

    ``selected_budget`` is the estimator's intent; overrides can raise the ceiling actually sent
    (Autopack's pitfall P5), so the recorded ceiling wins where it exists. Like Autopack's
    ``actual_max_tokens or selected_budget``, a zero ceiling also falls back.
    """
    return np.where(np.isnan(sent) | (sent == 0), selected, sent)


def budget_sent_integers(arrays: EventArrays, rows: np.ndarray | None = None,
                         dtype: type | None = None, runs: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`budget_sent_rule` picked on the integers, when neither column misses a value (else None):
    a zero ceiling falls back. int32 to float64 is exact, so these are the rule's floats without their
    float copies and NaN tests. ``dtype``: the result's (default: the integers'), gathered into it."""
    sent, selected = arrays.actual_max_tokens, arrays.selected_budget
    if sent.valid is not None or selected.valid is not None:
        return None
    if sent.values.dtype != selected.values.dtype:
        chosen, fallback = sent.values if rows is None else rows_of(sent.values, rows), selected.values
        picked = np.where(chosen == 0, fallback if rows is None else rows_of(fallback, rows), chosen)
        return picked if dtype is None else picked.astype(dtype)
    chosen = (sent.values.astype(dtype or sent.values.dtype) if rows is None  # (astype: a copy)
              else rows_of(sent.values, rows, dtype, runs=runs))
    # The fallback is read only where it is taken (a zero ceiling, a few calls), not gathered for every row.
    zero = np.flatnonzero(chosen == 0)
    if len(zero):
        chosen[zero] = selected.values[zero if rows is None else _positions(rows, zero)]
    return chosen


def _positions(rows: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """The rows at positions ``picked`` of ``rows`` (indices or a boolean mask)."""
    return np.flatnonzero(rows)[picked] if rows.dtype == bool else rows[picked]


def budget_sent(arrays: EventArrays, rows: np.ndarray | None = None, runs: np.ndarray | None = None) -> np.ndarray:
    """:func:`budget_sent_rule` of the events at ``rows`` (indices or a mask; None: all), as floats;
    ``runs``: see :func:`rows_of`."""
    integers = budget_sent_integers(arrays, rows, np.float64, runs)  # the integers gathered as floats (exact)
    if integers is not None:
        return integers
    return budget_sent_rule(arrays.actual_max_tokens.floats_at(rows), arrays.selected_budget.floats_at(rows))


def narrow_rows(rows: np.ndarray, total: int) -> np.ndarray:
    """Row numbers (of ``total`` rows) as int32 where they fit: half the memory of int64, for row lists
    held through the calibration."""
    return rows.astype(np.int32) if total < 2**31 else rows
