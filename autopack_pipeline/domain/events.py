"""The shape of an events DataFrame, as storage readers, the NDJSON importer and the log parser produce it.

Columns carry the names of Autopack's ``token_estimation_v2_events`` table (the key is ``event_id``),
plus our nullable ``attempt``. The analysis itself reads arrays (``fast_metrics.EventArrays``), which
``autopack_pipeline.storage.frames`` makes from this shape. This module stays in the domain only while
the log parser and the backtest still build frames; it belongs beside ``storage.frames`` after that.
"""

from __future__ import annotations

import pandas as pd

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
    return conform_events_frame(pd.DataFrame({name: [] for name in EVENT_COLUMNS}))


def conform_events_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with exactly the event columns, in order, with their dtypes.

    Missing optional columns are added as nulls, so data from older Autopack databases (no
    ``actual_max_tokens``, no ``attempt``) flows through the same code.
    """
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
