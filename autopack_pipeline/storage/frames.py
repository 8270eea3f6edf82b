"""The events frame: its columns and dtypes, conforming a frame to them, and its arrays for the analysis.

Storage readers, the NDJSON importer and reports work with an events frame. Its columns carry the
names of Autopack's ``token_estimation_v2_events`` table (the key is ``event_id``), plus our nullable
``attempt``. The analysis (:mod:`autopack_pipeline.domain.analysis`) works on :class:`EventArrays`
and never imports pandas; ``event_arrays_from_frame`` is where pandas hands over to the numpy domain.

pandas is imported by the functions that make or read a frame, not by this module: the columns
(``EVENT_COLUMNS``) and ``as_event_arrays`` of arrays serve ``calibrate`` and ``metrics``, which read
the columnar copy and never hold a frame, and importing pandas costs them a quarter second and 50 MB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# Column -> pandas dtype, in the frame's column order.
EVENT_COLUMNS: dict[str, str] = {
    "event_id": "Int64",
    "run_id": "string",
    "phase_id": "string",
    "timestamp": "datetime64[ns, UTC]",
    "category": "string",
    "complexity": "string",
    "deliverable_count": "Int64",
    "predicted_output_tokens": "Int64",
    "actual_output_tokens": "Int64",
    "selected_budget": "Int64",
    "actual_max_tokens": "Int64",
    "success": "boolean",
    "truncated": "boolean",
    "is_truncated_output": "boolean",
    "stop_reason": "string",
    "model": "string",
    "attempt": "Int64",
}


def empty_events_frame() -> pd.DataFrame:
    """An events frame with no rows and every column typed."""
    import pandas as pd

    return conform_events_frame(pd.DataFrame({name: [] for name in EVENT_COLUMNS}))


def conform_events_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with exactly the event columns, in order, with their dtypes.

    Missing optional columns are added as nulls, so data from older Autopack databases (no
    ``actual_max_tokens``, no ``attempt``) flows through the same code.
    """
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name, dtype in EVENT_COLUMNS.items():
        column = frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        if dtype.startswith("datetime"):
            out[name] = pd.to_datetime(column, utc=True)
        else:
            out[name] = column.astype(dtype)
    return out.reset_index(drop=True)


def as_events_frame(events: pd.DataFrame) -> pd.DataFrame:
    """Return ``events`` in the canonical events shape, without copying when it already is."""
    # A duplicated index would make row-wise assignments ambiguous, so such frames get a fresh one.
    already = events.index.is_unique and list(events.columns) == list(EVENT_COLUMNS) and all(
        str(events[name].dtype) == dtype for name, dtype in EVENT_COLUMNS.items()
    )
    return events if already else conform_events_frame(events)


def events_frame_of_table(table: pa.Table) -> pd.DataFrame:
    """The events frame of an Arrow table with the event columns (the columnar copy's)."""
    import pandas as pd
    import pyarrow as pa

    mapping = {pa.int32(): pd.Int64Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(),
               pa.string(): pd.StringDtype()}
    return conform_events_frame(table.to_pandas(types_mapper=mapping.get, coerce_temporal_nanoseconds=True))


def event_arrays_from_frame(events: pd.DataFrame) -> EventArrays:
    """Arrays of an events frame (conformed first), in the frame's row order."""
    import pandas as pd

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
