"""Events frames to the analysis' arrays: where pandas hands over to the numpy domain.

Storage readers, the NDJSON importer and reports work with an events frame (the shape of
:mod:`autopack_pipeline.domain.events`); the analysis (:mod:`autopack_pipeline.domain.fast_metrics`)
works on :class:`EventArrays` and never imports pandas. This module is the one conversion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from autopack_pipeline.domain.events import as_events_frame
from autopack_pipeline.domain.fast_metrics import EventArrays, IntColumn, LabelColumn


def event_arrays_from_frame(events: pd.DataFrame) -> EventArrays:
    """Arrays of an events frame (conformed first), in the frame's row order."""
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
    return EventArrays(
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
    return events if isinstance(events, EventArrays) else event_arrays_from_frame(events)
