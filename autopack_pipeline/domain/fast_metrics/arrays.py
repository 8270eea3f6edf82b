"""The events as numpy arrays: nullable integer and label columns, :class:`EventArrays`, per-row flags.

:class:`EventArrays` holds an events frame's columns as one numpy array per column, labels as integer
codes, in the frame's row order. Nothing in this package knows where the arrays came from: the
columnar store builds them, and so does :meth:`EventArrays.from_frame`, which the tests use. The
per-row readings every later step shares (success, truncation, the budget sent) are here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from autopack_pipeline.domain.samples import as_events_frame


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

    def floats_at(self, rows: np.ndarray | None) -> np.ndarray:
        """``floats()`` of the rows selected by ``rows`` (indices or a mask; None: all)."""
        if rows is None:
            return self.floats()
        out = self.values[rows].astype(np.float64)
        if self.valid is not None:
            out[~self.valid[rows]] = np.nan
        return out

    def notna(self) -> np.ndarray:
        return np.ones(len(self.values), dtype=bool) if self.valid is None else self.valid

    def take(self, rows: np.ndarray) -> IntColumn:
        return IntColumn(self.values[rows], None if self.valid is None else self.valid[rows])


@dataclass(frozen=True)
class LabelColumn:
    """A nullable string column as codes into ``labels``; code -1 means missing."""

    codes: np.ndarray
    labels: tuple[str, ...]

    def notna(self) -> np.ndarray:
        return self.codes >= 0

    def canonical(self, normaliser: Callable[[str | None], str]) -> tuple[np.ndarray, list[str]]:
        """Codes into the sorted canonical spellings (``canonical_labels`` of the samples module)."""
        mapped = [normaliser(label) for label in self.labels] + [normaliser(None)]
        names = sorted(set(mapped))
        lookup = np.array([names.index(name) for name in mapped], dtype=np.int32)
        return lookup[self.codes], names  # code -1 picks the last entry: normaliser(None)


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

    @cached_property
    def phase_key(self) -> IntColumn:
        """One exact integer per (run_id, phase_id); invalid where either is missing."""
        width = int(self.phase_code.values.max()) + 1 if len(self.phase_code.values) else 1
        keys = self.run_code.values.astype(np.int64) * width + self.phase_code.values
        valid = self.run_code.notna() & self.phase_code.notna()
        return IntColumn(keys, None if valid.all() else valid)

    @classmethod
    def from_frame(cls, events: pd.DataFrame) -> EventArrays:
        """Arrays of an events frame (conformed first, as every domain function does)."""
        frame = as_events_frame(events)

        def ints(name: str) -> IntColumn:
            column = frame[name]
            valid = column.notna().to_numpy()
            return IntColumn(column.fillna(0).to_numpy(dtype=np.int64), None if valid.all() else valid)

        def labels(name: str) -> LabelColumn:
            codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
            return LabelColumn(codes.astype(np.int32), tuple(str(u) for u in uniques))

        def flags(name: str) -> np.ndarray:
            column = frame[name]
            return np.where(column.isna().to_numpy(), -1, column.fillna(False).to_numpy(dtype=bool)).astype(np.int8)

        def codes(name: str) -> IntColumn:
            found, _uniques = pd.factorize(frame[name], use_na_sentinel=True)
            valid = found >= 0
            return IntColumn(np.where(valid, found, 0).astype(np.int64), None if valid.all() else valid)

        stamps = frame["timestamp"]
        stamp_valid = stamps.notna().to_numpy()
        stamp_us = np.zeros(len(frame), dtype=np.int64)
        stamp_us[stamp_valid] = stamps[stamp_valid].to_numpy(dtype="datetime64[us]").astype(np.int64)
        return cls(
            event_id=ints("event_id"),
            timestamp_us=IntColumn(stamp_us, None if stamp_valid.all() else stamp_valid),
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
            run_code=codes("run_id"),
            phase_code=codes("phase_id"),
            model=labels("model"),
        )


def as_event_arrays(events: pd.DataFrame | EventArrays) -> EventArrays:
    """``events`` as arrays: an events frame is converted, arrays are returned as they are."""
    return events if isinstance(events, EventArrays) else EventArrays.from_frame(events)


def truncated_flags(arrays: EventArrays) -> np.ndarray:
    """``samples.truncated_mask``: ``truncated``, else ``is_truncated_output``, else False."""
    t = arrays.truncated
    return np.where(t >= 0, t == 1, arrays.is_truncated_output == 1)


def success_flags(arrays: EventArrays) -> np.ndarray:
    return arrays.success == 1


def truncation_disagreements(arrays: EventArrays) -> int:
    """``samples.truncation_flag_disagreements``: both truncation flags known and different."""
    a, b = arrays.truncated, arrays.is_truncated_output
    return int(((a >= 0) & (b >= 0) & (a != b)).sum())


def _budget_sent(arrays: EventArrays, rows: np.ndarray | None) -> np.ndarray:
    """``metrics.budget_sent``: the ceiling sent, else (missing or 0) the selected budget."""
    sent = arrays.actual_max_tokens.floats_at(rows)
    selected = arrays.selected_budget.floats_at(rows)
    return np.where(np.isnan(sent) | (sent == 0), selected, sent)
