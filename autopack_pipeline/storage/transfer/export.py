"""NDJSON export of ``token_estimation_v2_events``: one JSON object per event, newest first, Autopack's
keys in its order followed by ours (``deliverables`` as a parsed list instead of ``deliverables_json``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from sqlalchemy import DateTime, select
from sqlalchemy.engine import Engine

from autopack_pipeline.output_files import AtomicFile
from autopack_pipeline.storage.models import TokenEstimationV2Event
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, parse_timestamp_text, readable_column, text_column

_EVENTS = TokenEstimationV2Event.__table__

# Autopack's export keys, in its order; our other columns follow them.
_AUTOPACK_KEYS = (
    "run_id", "phase_id", "timestamp", "category", "complexity", "deliverable_count", "deliverables",
    "predicted_output_tokens", "actual_output_tokens", "selected_budget", "success", "truncated",
    "stop_reason", "model", "smape_percent", "waste_ratio", "underestimated",
)


def export_columns() -> list[str]:
    """Keys of an exported record, in order."""
    ours = [c.name for c in _EVENTS.columns if c.name not in _AUTOPACK_KEYS and c.name != "deliverables_json"]
    return [*_AUTOPACK_KEYS, *ours]


def _export_record(row: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``row`` as an export record with ``keys`` (:func:`export_columns`, found once per export)."""
    try:
        deliverables = json.loads(row.get("deliverables_json") or "[]")
    except ValueError:
        deliverables = []  # as Autopack's exporter: an unreadable list exports as empty
    record = {}
    for key in keys:
        value = deliverables if key == "deliverables" else row.get(key)
        record[key] = value.isoformat() if isinstance(value, datetime) else value
    return record


_DATETIME_COLUMNS = [column.name for column in _EVENTS.columns if isinstance(column.type, DateTime)]


def _read_datetimes(rows: list[dict[str, Any]]) -> list[UnreadableTimestamp]:
    """Turn the stored text of each date-time column of ``rows`` into datetimes, in place; a value that
    is not a date stays as stored and is returned (SQLite only: PostgreSQL hands datetimes over)."""
    found: list[UnreadableTimestamp] = []
    for column in _DATETIME_COLUMNS:
        parsed, unread = parse_timestamp_text(text_column(row.get(column) for row in rows))
        values = parsed.cast(pa.timestamp("us")).to_pylist()  # naive UTC, as the ORM reads them
        for row, value, bad in zip(rows, values, unread):
            if bad:
                row[column] = str(row[column])
                found.append(UnreadableTimestamp(_EVENTS.name, int(row["event_id"]), column, row[column][:80]))
            else:
                row[column] = value
    return found


def iter_export(engine: Engine, unreadable: list[UnreadableTimestamp] | None = None) -> Iterator[dict[str, Any]]:
    """Every event as an export record, newest first (ties: highest event id first), streamed.

    A date-time that is not a date (SQLite holds any text) is exported as stored and appended to
    ``unreadable``; the row is exported all the same.
    """
    dialect = engine.dialect.name
    keys = export_columns()
    statement = select(*(readable_column(column, dialect) for column in _EVENTS.columns))
    statement = statement.order_by(_EVENTS.c.timestamp.desc(), _EVENTS.c.event_id.desc())
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=1000).execute(statement)
        names = list(result.keys())
        for partition in result.partitions():
            rows = [dict(zip(names, row)) for row in partition]  # plain rows: a mapping per row costs more
            if dialect == "sqlite":
                found = _read_datetimes(rows)
                if unreadable is not None:
                    unreadable += found
            for row in rows:
                yield _export_record(row, keys)


def write_export(engine: Engine, out: IO[str], unreadable: list[UnreadableTimestamp] | None = None) -> int:
    """Write the NDJSON export to ``out``; return the number of events (see :func:`iter_export`)."""
    # One encoder for every line: json.dumps with an option builds a new one per call (a tenth of the export).
    encode = json.JSONEncoder(ensure_ascii=False).encode
    count = 0
    for record in iter_export(engine, unreadable):
        out.write(encode(record) + "\n")
        count += 1
    return count


def export_to_file(engine: Engine, path: Path, unreadable: list[UnreadableTimestamp] | None = None) -> int:
    """Write the export to ``path`` atomically (a reader never sees half a file); return the count."""
    with AtomicFile(Path(path), text=True, encoding="utf-8", newline="\n") as target:
        return write_export(engine, target.handle, unreadable)
