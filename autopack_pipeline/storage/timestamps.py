"""Timestamps as a SQLite file may hold them: text that is not always a date.

SQLite keeps whatever it is given in a ``DATETIME`` column ('not a date', '2025-13-45 99:00:00', a
number), and one such row used to stop every analysis with a parse error naming no row. PostgreSQL's
``timestamp`` type refuses those values, so this only matters for SQLite, but the helpers work on any
text. Readers take the column as text, parse it here in one vectorised pass, and set the rows whose
timestamp cannot be read aside: the analysis runs without them and the command names them (table,
event id, column, the stored value).

A timestamp is readable when it is an ISO-8601 date or date-time (space or ``T``, optional fraction
and UTC offset), which is what SQLAlchemy, and so Autopack, writes. Values without an offset are UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autopack_pipeline.storage.arrow_modules import pa

if TYPE_CHECKING:  # pandas loads only when a batch Arrow refuses is parsed: the columnar reads never need it
    import pandas as pd

EVENTS_TABLE = "token_estimation_v2_events"
SHOWN_ROWS = 20  # rows named in a JSON document or a warning; the count is always complete
_VALUE_CHARS = 80  # how much of a stored value is quoted back
_OFFSET_SUFFIX = r"(?:Z|[+-]\d{2}:?\d{2})$"


@dataclass(frozen=True)
class UnreadableTimestamp:
    """One row whose timestamp column holds something that is not a date."""

    table: str
    event_id: int
    column: str
    value: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_timestamp_text(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Parse ``values`` (text, nulls allowed) into ``timestamp[us, UTC]``; also return the unreadable mask.

    The mask is True where a value is present but is not a date; those positions are null in the
    result. Nulls stay null and are not unreadable. Arrow's ISO-8601 cast takes a whole clean batch
    in one C++ pass; only a batch it refuses is parsed by pandas, value by value with errors coerced
    (offsets and ``Z`` included), and what pandas cannot read either gets Arrow's verdict one at a time.
    """
    values = values.cast(pa.string())
    try:
        return values.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")), np.zeros(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import pandas as pd

    text = values.to_pandas()
    # Values with an offset and values without are parsed apart: in one call, pandas 2.x gives a naive
    # value that follows an offset-bearing one that value's offset.
    has_offset = text.str.contains(_OFFSET_SUFFIX, regex=True, na=False).to_numpy()
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    for group in (has_offset, ~has_offset):
        if group.any():
            parsed[group] = pd.to_datetime(text[group], format="ISO8601", utc=True, errors="coerce")
    micros = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype("datetime64[us]")
    unread = parsed.isna().to_numpy() & text.notna().to_numpy()
    for position in np.flatnonzero(unread):
        try:  # Arrow's range (years 1-9999) is wider than pandas' nanoseconds (1677-2262)
            micros[position] = pa.array([text.iloc[position]]).cast(pa.timestamp("us")).to_numpy()[0]
            unread[position] = False
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    result = pa.array(micros, type=pa.timestamp("us"), mask=unread | text.isna().to_numpy())
    return result.cast(pa.timestamp("us", tz="UTC")), unread


def readable_column(column: Any, dialect: str) -> Any:
    """``column`` labelled by its name for a SELECT. On SQLite a timestamp column comes back as the
    stored value, not through SQLAlchemy's date parser, which stops the whole read at the first row that
    is not a date; parse it with :func:`set_aside_in_frame`."""
    from sqlalchemy import DateTime, String, type_coerce  # here: reading the columnar copy needs no SQLAlchemy

    if dialect == "sqlite" and isinstance(column.type, DateTime):
        return type_coerce(column, String).label(column.name)
    return column.label(column.name)


def set_aside_unreadable(table: pa.Table, columns: Sequence[str], *, table_name: str = EVENTS_TABLE,
                         key: str = "event_id", drop: bool = True) -> tuple[pa.Table, list[UnreadableTimestamp]]:
    """Parse the text ``columns`` of ``table`` into timestamps; return it and the unreadable cells.

    With ``drop`` the rows holding an unreadable cell are removed (the analysis goes on without
    them); without it they stay, with the column left as the stored text (an export writes them as
    stored).
    """
    found: list[UnreadableTimestamp] = []
    keep = np.ones(table.num_rows, dtype=bool)
    parsed_columns: dict[str, pa.Array] = {}
    for column in columns:
        raw = table.column(column).combine_chunks()
        parsed, unread = parse_timestamp_text(raw)
        parsed_columns[column] = parsed
        if unread.any():
            positions = np.flatnonzero(unread)
            ids = table.column(key).take(pa.array(positions)).to_pylist()
            texts = raw.cast(pa.string()).take(pa.array(positions)).to_pylist()
            found += [UnreadableTimestamp(table_name, int(i), column, str(v)[:_VALUE_CHARS])
                      for i, v in zip(ids, texts)]
            keep &= ~unread
    if not drop:
        return table, found
    for column, parsed in parsed_columns.items():
        table = table.set_column(table.schema.get_field_index(column), column, parsed)
    if not keep.all():
        table = table.filter(pa.array(keep))
    return table, found


def text_column(values: Iterable[Any]) -> pa.Array:
    """Values a driver returned for a timestamp column read as text (str, a number, a datetime, None)."""
    return pa.array([None if v is None else v.isoformat(sep=" ") if hasattr(v, "isoformat") else str(v)
                     for v in values], type=pa.string())


def unreadable_document(rows: Sequence[UnreadableTimestamp] | dict[str, Any]) -> dict[str, Any]:
    """``{"count": n, "rows": [the first SHOWN_ROWS as dicts]}``, for JSON output and metadata."""
    if isinstance(rows, dict):
        return rows
    return {"count": len(rows), "rows": [row.to_dict() for row in rows[:SHOWN_ROWS]]}


def describe_unreadable(document: dict[str, Any], *, what: str = "those rows are left out of the analysis"
                        ) -> str | None:
    """One warning naming the rows set aside (table, event id, column, stored value), or None when none."""
    count = int(document.get("count") or 0)
    if not count:
        return None
    named = "; ".join(f"{row['table']} event_id {row['event_id']} {row['column']}={row['value']!r}"
                      for row in document["rows"])
    more = f"; and {count - len(document['rows'])} more" if count > len(document["rows"]) else ""
    return (f"{count} unreadable timestamp{'s' if count != 1 else ''} (not a date); {what}: {named}{more}. "
            "Fix or delete them in the database (an ISO-8601 date-time, e.g. 2025-01-31 12:00:00).")


def merge_ids(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids as ``[[first, last], ...]`` runs of consecutive ids (a compact list to ask for again)."""
    ranges: list[list[int]] = []
    for event_id in sorted(set(int(i) for i in ids)):
        if ranges and event_id == ranges[-1][1] + 1:
            ranges[-1][1] = event_id
        else:
            ranges.append([event_id, event_id])
    return ranges




def set_aside_in_frame(frame: pd.DataFrame, columns: Sequence[str], *, table_name: str = EVENTS_TABLE,
                       key: str = "event_id") -> tuple[pd.DataFrame, list[UnreadableTimestamp]]:
    """:func:`set_aside_unreadable` for a frame read row by row: ``columns`` hold whatever the driver
    returned (text, a number, a datetime); they come back as UTC timestamps, unreadable rows removed."""
    present = [column for column in columns if column in frame.columns]
    if not present or frame.empty:
        return frame, []
    table = pa.table({key: pa.array(frame[key].astype("int64").to_numpy()),
                      **{column: text_column(frame[column]) for column in present}})
    checked, found = set_aside_unreadable(table, present, table_name=table_name, key=key)
    kept = frame.set_index(frame[key].astype("int64")).loc[checked.column(key).to_numpy()]
    for column in present:
        kept[column] = checked.column(column).to_pandas().to_numpy()
    return kept.reset_index(drop=True), found
