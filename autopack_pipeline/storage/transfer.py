"""NDJSON export and import of ``token_estimation_v2_events``.

Export writes one JSON object per event with the table's column names (``deliverables`` as a parsed
list instead of ``deliverables_json``), newest first, like Autopack's
``export_token_estimation_telemetry.py`` but with every column, ours included.

Import reads that format and Autopack's (no ``event_uid``, no ``actual_max_tokens``). Every line is
validated on its own; a bad line is reported with its number and reason and written verbatim to a
quarantine file, and the good lines are imported in batches, each batch one transaction. A line is
therefore either fully imported (run/tier/phase rows it needs plus the event) or not at all. Rows
without an ``event_uid`` get one derived from their content, so importing a file twice adds nothing.
Import keeps what the source had: the under-50-token guard of the live writer does not apply.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
from sqlalchemy import DateTime, select
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.categories import canonical_complexity, normalise_category
from autopack_pipeline.output_files import AtomicFile, check_output_path
from autopack_pipeline.storage.database import safe_error_text
from autopack_pipeline.storage.events import (
    deliverables_json,
    ensure_run_and_phase,
    estimation_metrics,
    insert_estimation_row,
)
from autopack_pipeline.storage.models import TokenEstimationV2Event, naive_utc, utc_now
from autopack_pipeline.storage.spool import is_transient_failure
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, parse_timestamp_text, readable_column, text_column

_EVENTS = TokenEstimationV2Event.__table__

MAX_ACTUAL_OUTPUT_TOKENS = 200_000
MAX_PREDICTED_OUTPUT_TOKENS = 1_000_000
_MAX_OTHER_INT = 2_147_483_647  # PostgreSQL INTEGER
_MAX_TEXT = 255  # identifiers and labels; longer values overflow PostgreSQL's index rows anyway
DEFAULT_BATCH_SIZE = 500

# Autopack's export keys, in its order; our other columns follow them.
_AUTOPACK_KEYS = (
    "run_id", "phase_id", "timestamp", "category", "complexity", "deliverable_count", "deliverables",
    "predicted_output_tokens", "actual_output_tokens", "selected_budget", "success", "truncated",
    "stop_reason", "model", "smape_percent", "waste_ratio", "underestimated",
)
REQUIRED_FIELDS = (
    "run_id", "phase_id", "category", "complexity", "predicted_output_tokens", "actual_output_tokens", "success",
)
_OPTIONAL_BOOLS = (
    "api_reference_required", "examples_required", "research_required", "usage_guide_required",
    "actual_is_total_tokens", "phase_completed", "underestimated",
)
_OPTIONAL_TEXT = ("stop_reason", "context_quality", "sot_file_name", "coefficients_version")
_OPTIONAL_INTS = ("actual_max_tokens", "attempt", "sot_entry_count_hint")


def export_columns() -> list[str]:
    """Keys of an exported record, in order."""
    ours = [c.name for c in _EVENTS.columns if c.name not in _AUTOPACK_KEYS and c.name != "deliverables_json"]
    return [*_AUTOPACK_KEYS, *ours]


def _export_record(row: dict[str, Any]) -> dict[str, Any]:
    try:
        deliverables = json.loads(row.get("deliverables_json") or "[]")
    except ValueError:
        deliverables = []  # as Autopack's exporter: an unreadable list exports as empty
    record = {}
    for key in export_columns():
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
    statement = select(*(readable_column(column, dialect) for column in _EVENTS.columns))
    statement = statement.order_by(_EVENTS.c.timestamp.desc(), _EVENTS.c.event_id.desc())
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=1000).execute(statement).mappings()
        for partition in result.partitions():
            rows = [dict(row) for row in partition]
            if dialect == "sqlite":
                found = _read_datetimes(rows)
                if unreadable is not None:
                    unreadable += found
            for row in rows:
                yield _export_record(row)


def write_export(engine: Engine, out: IO[str], unreadable: list[UnreadableTimestamp] | None = None) -> int:
    """Write the NDJSON export to ``out``; return the number of events (see :func:`iter_export`)."""
    count = 0
    for record in iter_export(engine, unreadable):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def export_to_file(engine: Engine, path: Path, unreadable: list[UnreadableTimestamp] | None = None) -> int:
    """Write the export to ``path`` atomically (a reader never sees half a file); return the count."""
    with AtomicFile(Path(path), text=True, encoding="utf-8", newline="\n") as target:
        return write_export(engine, target.handle, unreadable)


class LineRejected(ValueError):
    """A line that cannot be imported; the message is the reason shown to the user."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _text(record: dict[str, Any], key: str, *, required: bool = False, limit: int | None = _MAX_TEXT) -> str | None:
    """A string field; ``required`` ones may not be blank (their presence is checked by ``_parse_line``)."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineRejected(f"'{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise LineRejected(f"'{key}' is empty")
    if "\x00" in value:
        raise LineRejected(f"'{key}' contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineRejected(f"'{key}' is not valid Unicode text") from None
    if limit is not None and len(value) > limit:
        raise LineRejected(f"'{key}' is longer than {limit} characters")
    return value


def _int(record: dict[str, Any], key: str, *, maximum: int = _MAX_OTHER_INT) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineRejected(f"'{key}' must be an integer, got {type(value).__name__}")
    if value < 0:
        raise LineRejected(f"'{key}' is negative ({value})")
    if value > maximum:
        raise LineRejected(f"'{key}' is absurdly large ({value} > {maximum})")
    return value


def _bool(record: dict[str, Any], key: str) -> bool | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise LineRejected(f"'{key}' must be true or false, got {type(value).__name__}")
    return value


def _float(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:  # an integer beyond any float
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise LineRejected(f"'{key}' must be a non-negative number")
    return number


def _timestamp(record: dict[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineRejected(f"'{key}' must be an ISO-8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip())
        return naive_utc(moment)
    except (ValueError, OverflowError):
        raise LineRejected(f"unreadable timestamp in '{key}': {value[:40]!r}") from None


def _deliverables(record: dict[str, Any]) -> list[str]:
    value = record.get("deliverables")
    if value is None and isinstance(record.get("deliverables_json"), str):
        try:
            value = json.loads(record["deliverables_json"])
        except (ValueError, RecursionError):
            raise LineRejected("'deliverables_json' is not a JSON list") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise LineRejected(f"'deliverables' must be a list, got {type(value).__name__}")
    # Autopack's nested dict deliverables (its pitfall P6) are kept as their JSON text.
    return [item if isinstance(item, str) else json.dumps(item, sort_keys=True) for item in value]


def derive_event_uid(run_id: str, phase_id: str, timestamp: datetime | None, predicted: int, actual: int,
                     category: str) -> str:
    """A stable id for a row that has none: the same event imported twice gets the same id."""
    key = json.dumps([run_id, phase_id, timestamp.isoformat() if timestamp else None, predicted, actual, category])
    return "imp1-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def parse_line(raw: bytes) -> dict[str, Any]:
    """The events row for one NDJSON line (column -> value, no ``event_id``); raises LineRejected."""
    try:
        return _parse_line(raw)
    except RecursionError:  # absurdly nested JSON, in the line or in a deliverable
        raise LineRejected("nested too deeply") from None


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineRejected("not valid UTF-8") from None
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise LineRejected(f"not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(record, dict):
        raise LineRejected(f"not a JSON object (got {type(record).__name__})")
    missing = [key for key in REQUIRED_FIELDS if record.get(key) is None]
    if missing:
        raise LineRejected("missing required field" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))

    run_id = _text(record, "run_id", required=True)
    phase_id = _text(record, "phase_id", required=True)
    category = normalise_category(_text(record, "category", required=True))
    raw_complexity = _text(record, "complexity", required=True)
    complexity = canonical_complexity(raw_complexity)
    if complexity is None:
        raise LineRejected(f"unknown complexity {raw_complexity!r}")
    predicted = _int(record, "predicted_output_tokens", maximum=MAX_PREDICTED_OUTPUT_TOKENS)
    actual = _int(record, "actual_output_tokens", maximum=MAX_ACTUAL_OUTPUT_TOKENS)
    success = _bool(record, "success")
    timestamp = _timestamp(record, "timestamp")
    created_at = _timestamp(record, "created_at")
    deliverables = _deliverables(record)
    truncated = bool(_bool(record, "truncated"))
    is_truncated_output = _bool(record, "is_truncated_output")
    row: dict[str, Any] = {
        "run_id": run_id,
        "phase_id": phase_id,
        "timestamp": timestamp or utc_now(),
        "category": category,
        "complexity": complexity,
        "deliverable_count": _int(record, "deliverable_count", maximum=MAX_PREDICTED_OUTPUT_TOKENS),
        "deliverables_json": deliverables_json(deliverables),
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": _int(record, "selected_budget", maximum=MAX_PREDICTED_OUTPUT_TOKENS) or 0,
        "success": success,
        "truncated": truncated,
        "is_truncated_output": truncated if is_truncated_output is None else is_truncated_output,
        "model": _text(record, "model") or "unknown",
        "is_sot_file": _bool(record, "is_sot_file") if "is_sot_file" in record else False,
        "created_at": created_at or utc_now(),
    }
    if row["deliverable_count"] is None:
        row["deliverable_count"] = len(deliverables)
    for key in _OPTIONAL_TEXT:
        row[key] = _text(record, key)
    for key in _OPTIONAL_BOOLS:
        row[key] = _bool(record, key)
    for key in _OPTIONAL_INTS:
        row[key] = _int(record, key, maximum=MAX_PREDICTED_OUTPUT_TOKENS)
    row["smape_percent"] = _float(record, "smape_percent")
    row["waste_ratio"] = _float(record, "waste_ratio")
    if not any(key in record for key in ("smape_percent", "waste_ratio", "underestimated")):
        row["smape_percent"], row["waste_ratio"], row["underestimated"] = estimation_metrics(predicted, actual)
    uid = _text(record, "event_uid", limit=64)
    row["event_uid"] = uid or derive_event_uid(run_id, phase_id, timestamp, predicted, actual, category)
    return row


@dataclass
class ImportReport:
    """Outcome of an import: every non-blank line is imported, a duplicate, or rejected."""

    lines: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    quarantine_file: str | None = None
    aborted: str | None = None  # the database became unavailable; later lines were not attempted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Quarantine:
    """Rejected lines, verbatim with line number and reason, written atomically at the end.

    The path is checked up front (a directory, link or FIFO there stops the import before any line
    is read); the file is only created when a line is rejected, so a clean import from a read-only
    directory works.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        self._file: AtomicFile | None = None

    def add(self, line_no: int, raw: bytes, reason: str) -> None:
        if self._file is None:
            self._file = AtomicFile(self.path, text=True, encoding="ascii")
        # surrogateescape keeps undecodable bytes recoverable; ensure_ascii keeps the file valid UTF-8.
        record = {"line": line_no, "reason": reason, "raw": raw.decode("utf-8", errors="surrogateescape")}
        self._file.handle.write(json.dumps(record, ensure_ascii=True) + "\n")

    def close(self) -> str | None:
        if self._file is None:
            return None
        self._file.commit()
        return str(self.path)


_UTF8_BOM = b"\xef\xbb\xbf"


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, start=1):
        line = raw.rstrip(b"\r\n")
        if number == 1 and line.startswith(_UTF8_BOM):  # a file's byte order mark, as Windows tools write it
            line = line[len(_UTF8_BOM):]
        if line.strip():
            yield number, line


class _Importer:
    def __init__(self, engine: Engine, quarantine: _Quarantine, report: ImportReport) -> None:
        self.engine = engine
        self.quarantine = quarantine
        self.report = report
        self.known_phases: set[tuple[str, str]] = set()  # committed run/phase pairs; saves queries

    def reject(self, line_no: int, raw: bytes, reason: str) -> None:
        self.report.rejected += 1
        self.report.rejections.append({"line": line_no, "reason": reason})
        self.quarantine.add(line_no, raw, reason)

    def _write(self, batch: list[tuple[int, bytes, dict[str, Any]]]) -> tuple[int, int]:
        """Import ``batch`` in one transaction; returns (inserted, duplicates) or raises (rolled back)."""
        inserted = 0
        ensured: set[tuple[str, str]] = set()
        with self.engine.begin() as connection:
            for _line_no, _raw, row in batch:
                pair = (row["run_id"], row["phase_id"])
                if pair not in self.known_phases and pair not in ensured:
                    ensure_run_and_phase(connection, *pair, category=row["category"], complexity=row["complexity"])
                    ensured.add(pair)
                inserted += insert_estimation_row(connection, row)
        self.known_phases |= ensured
        return inserted, len(batch) - inserted

    def flush(self, batch: list[tuple[int, bytes, dict[str, Any]]]) -> None:
        if not batch:
            return
        try:
            inserted, duplicates = self._write(batch)
        except Exception as exc:
            if is_transient_failure(exc):
                raise
            # Something in the batch was refused: redo it line by line to find and quarantine it.
            inserted = duplicates = 0
            for item in batch:
                try:
                    one_in, one_dup = self._write([item])
                except Exception as line_exc:
                    if is_transient_failure(line_exc):
                        raise
                    self.reject(item[0], item[1], f"database refused the row: {safe_error_text(line_exc)}")
                    continue
                inserted, duplicates = inserted + one_in, duplicates + one_dup
        self.report.imported += inserted
        self.report.duplicates += duplicates


def import_events(
    engine: Engine,
    source: IO[bytes],
    quarantine_path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the NDJSON lines of ``source`` (a binary file) into ``engine``'s events table.

    Bad lines are rejected with their 1-based line number and reason and written to
    ``quarantine_path`` (only created when something was rejected). When the database becomes
    unavailable midway, ``aborted`` says why; lines before the failing batch are committed, and
    running the import again is safe (duplicates are skipped by ``event_uid``).
    """
    report = ImportReport()
    quarantine = _Quarantine(quarantine_path)
    importer = _Importer(engine, quarantine, report)
    batch: list[tuple[int, bytes, dict[str, Any]]] = []
    try:
        for line_no, raw in _lines(source):
            report.lines += 1
            try:
                batch.append((line_no, raw, parse_line(raw)))
            except LineRejected as exc:
                importer.reject(line_no, raw, str(exc))
            if len(batch) >= batch_size:
                importer.flush(batch)
                batch = []
                if progress:
                    progress(report.lines)
        importer.flush(batch)
    except Exception as exc:
        if not is_transient_failure(exc):
            raise
        report.aborted = safe_error_text(exc)
    finally:
        report.quarantine_file = quarantine.close()
    return report


def import_file(engine: Engine, path: Path, quarantine_path: Path | None = None, **kwargs: Any) -> ImportReport:
    """:func:`import_events` for a file; the quarantine defaults to ``<path>.rejected.ndjson``."""
    path = Path(path)
    target = quarantine_path or path.with_name(path.name + ".rejected.ndjson")
    with path.open("rb") as source:
        return import_events(engine, source, target, **kwargs)

