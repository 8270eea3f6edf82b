"""A columnar copy of the events table, extracted incrementally by event id.

Reading ten million rows out of SQLite costs a minute; grouping them there costs more (peers.md §5).
So the analysis reads a copy: Parquet files in a directory, one ``manifest.json`` naming the files and
the high-water ``event_id`` already copied. A refresh asks the database only for rows above that
mark and appends them as one new file, so its cost follows the new rows, not the history.

Why Parquet files and not a DuckDB file: the store is append-only and immutable per file, so a
refresh writes one new file and swaps the manifest atomically while readers (the Dagster webserver,
a CLI) keep reading the old one; a DuckDB file takes a single writer lock across processes, and its
on-disk format is tied to the DuckDB version. Parquet is read here with pyarrow, and any engine
(DuckDB, polars, pandas) can read it too.

Layout (default: ``.autopack/columnar/<file name>/`` next to a SQLite file; for PostgreSQL
``./.autopack/columnar/<backend>-<host>-<port>-<database>/``; ``AUTOPACK_COLUMNAR_DIR`` overrides
both)::

    manifest.json           format, source database, high-water event id, parts, pending id gaps
    part-000001.parquet     ~1M rows each from a cold extraction; one file per refresh after that

Compact types: labels (run, category, complexity, stop reason, model) are dictionary-encoded, token
counts and flags int32/bool, timestamps µs UTC; phase ids are plain strings, which Parquet
dictionary-encodes on disk and the analysis reads back as codes (a phase is (run code, phase code)).

Safety: the manifest names the database it copies, and the row at the high-water mark is checked
on every refresh; a different database, a replaced file or a deleted row there rebuilds the store.
Rows are immutable in Autopack's table, so nothing below the mark is re-read, except on PostgreSQL,
where a transaction can commit an id below one already seen: ids missing below the mark are asked
for again for ten minutes. ``refresh(full=True)`` rebuilds from scratch.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.fast_metrics import EventArrays, IntColumn, LabelColumn
from autopack_pipeline.storage import adbc
from autopack_pipeline.storage.adbc import AdbcUnavailable
from autopack_pipeline.storage.database import describe_database
from autopack_pipeline.storage.frames import EVENT_COLUMNS, conform_events_frame
from autopack_pipeline.storage.timestamps import (
    SHOWN_ROWS,
    UnreadableTimestamp,
    merge_ids,
    readable_column,
    set_aside_in_frame,
    set_aside_unreadable,
)

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
MANIFEST = "manifest.json"
COLUMNAR_DIR_VARIABLE = "AUTOPACK_COLUMNAR_DIR"  # read by settings.StorageSettings.columnar_dir
TABLE = "token_estimation_v2_events"
PART_ROWS = 1_000_000  # rows per file of a cold extraction
BATCH_IDS = 250_000  # event ids per database query
SMALL_PART_ROWS = PART_ROWS // 2
MAX_SMALL_PARTS = 8  # more small files than this are merged into one
GAP_RETENTION_SECONDS = 600
MAX_GAP_RANGES = 1_000

Progress = Callable[[int, int], None]

# Column -> kind. Order is the events frame's (domain/events.py).
_KINDS: dict[str, str] = {
    "event_id": "key",
    "run_id": "label",
    "phase_id": "text",
    "timestamp": "timestamp",
    "category": "label",
    "complexity": "label",
    "deliverable_count": "int",
    "predicted_output_tokens": "int",
    "actual_output_tokens": "int",
    "selected_budget": "int",
    "actual_max_tokens": "int",
    "success": "flag",
    "truncated": "flag",
    "is_truncated_output": "flag",
    "stop_reason": "label",
    "model": "label",
    "attempt": "int",
}
assert list(_KINDS) == list(EVENT_COLUMNS), "the store holds exactly the events frame's columns"

_ARROW_TYPES = {
    "key": pa.int64(),
    "label": pa.dictionary(pa.int32(), pa.string()),
    "text": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "int": pa.int32(),
    "flag": pa.bool_(),
}
STORE_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in _KINDS.items()])


class ColumnarStoreError(RuntimeError):
    """The store or the database could not be read as expected."""


@dataclass
class RefreshResult:
    """What one refresh did."""

    directory: str
    rows_before: int
    new_rows: int
    rows_after: int
    high_water_before: int
    high_water: int
    parts_written: int
    parts_compacted: int
    seconds: float
    rebuilt: str | None = None  # why the store was rebuilt from scratch, if it was
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = f"columnar store {self.directory}: "
        if self.rebuilt:
            head += f"rebuilt ({self.rebuilt}); "
        return (head + f"{self.new_rows} new events up to event_id {self.high_water} "
                f"({self.rows_after} in total) in {self.seconds:.2f} s")


def store_directory_for(engine: Engine, override: Path | str | None = None) -> Path | None:
    """Where the store of ``engine``'s database lives: ``override``, else the settings' ``columnar_dir``
    (``$AUTOPACK_COLUMNAR_DIR``), else next to the SQLite file; None for an in-memory SQLite database."""
    identity = describe_database(engine)
    if identity.backend == "sqlite" and not identity.sqlite_path:
        return None  # even with an override: a copy would outlive the database it copies
    if override is None:
        from autopack_pipeline.settings import load_storage_settings

        override = load_storage_settings().columnar_dir
    if override:
        return Path(override).expanduser().resolve()
    if identity.backend == "sqlite":
        path = Path(identity.sqlite_path)
        return path.parent / ".autopack" / "columnar" / path.name
    url = engine.url
    name = f"{url.get_backend_name()}-{url.host or 'local'}-{url.port or 'default'}-{url.database or 'db'}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return (Path.cwd() / ".autopack" / "columnar" / safe).resolve()


def _source_identity(engine: Engine) -> str:
    identity = describe_database(engine)
    return identity.sqlite_path or identity.url


def prefetch(items: Iterable, convert: Callable[[Any], Any], depth: int = 2) -> Iterator[tuple[Any, Any]]:
    """``(item, convert(item))`` for every item, with ``convert`` running in a helper thread ahead.

    Database drivers and pyarrow release the GIL while they work, so reading the next batch
    overlaps with handling the current one. An exception in the helper is raised here.
    """
    finished = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, convert(item)))
            buffer.put((finished, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((finished, exc))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, converted = buffer.get()
            if item is finished:
                if converted is not None:
                    raise converted
                return
            yield item, converted
    finally:
        stop.set()
        while worker.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


# -- reading batches out of the database ------------------------------------------------------------


class _BatchReader:
    """Event rows by id range as Arrow tables, by the fastest route the backend offers.

    SQLite: one ``printf`` line per row and ``group_concat`` per batch, so Python handles one string
    per 250k rows and pyarrow's CSV reader does the parsing. PostgreSQL: ``COPY (SELECT ...) TO
    STDOUT`` in CSV. Anything else, or a batch the CSV route cannot parse (a database holding odd
    types), goes through SQLAlchemy rows.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        inspector = inspect(engine)
        if not inspector.has_table(TABLE):
            raise ColumnarStoreError(f"the telemetry database has no {TABLE} table")
        self.present = {column["name"] for column in inspector.get_columns(TABLE)}
        # Rows whose timestamp is not a date (SQLite holds any text): kept out of the store, named.
        self.unreadable: list[UnreadableTimestamp] = []
        missing = {"event_id", "run_id", "phase_id"} - self.present
        if missing:
            raise ColumnarStoreError(f"{TABLE} lacks the columns {', '.join(sorted(missing))}")

    # id bounds ---------------------------------------------------------------------------------

    def max_event_id(self) -> int:
        with self.engine.connect() as connection:
            value = connection.execute(text(f"SELECT max(event_id) FROM {TABLE}")).scalar()
        return int(value or 0)

    def anchor(self, event_id: int) -> dict[str, Any] | None:
        """The identifying fields of one row, or None when it does not exist."""
        with self.engine.connect() as connection:
            row = connection.execute(
                text(f"SELECT run_id, phase_id, actual_output_tokens FROM {TABLE} WHERE event_id = :id"),
                {"id": event_id},
            ).first()
        if row is None:
            return None
        return {"event_id": event_id, "run_id": str(row[0]), "phase_id": str(row[1]),
                "actual_output_tokens": None if row[2] is None else int(row[2])}

    # batches -----------------------------------------------------------------------------------

    def read(self, where: str, params: tuple) -> pa.Table:
        """Rows matching ``where`` (SQL over event_id with positional params), as a store table.

        Rows with an unreadable timestamp are left out and added to ``self.unreadable``.
        """
        table = self._read(where, params)
        if pa.types.is_string(table.schema.field("timestamp").type):  # SQLite's CSV route: the stored text
            table, found = set_aside_unreadable(table, ["timestamp"])
            self.unreadable += found
        return _store_table(table)

    def _read(self, where: str, params: tuple) -> pa.Table:
        if self.dialect in ("sqlite", "postgresql"):
            try:
                return self._adbc(where, params)
            except (AdbcUnavailable, adbc.Error, pa.ArrowException) as exc:
                # SQLite's driver types a column by its first rows; a column holding mixed types (any
                # value is allowed there) stops it. The CSV route takes anything.
                logger.info("the ADBC route could not read a batch (%s); trying the CSV route", exc)
        if self.dialect == "sqlite":
            try:
                return self._sqlite_csv(where, params)
            except (pa.ArrowInvalid, ValueError) as exc:
                logger.info("CSV route could not parse a batch (%s); reading it row by row", exc)
        elif self.dialect == "postgresql":
            try:
                return self._postgresql_csv(where, params)
            except (pa.ArrowInvalid, ValueError) as exc:
                logger.info("COPY route could not parse a batch (%s); reading it row by row", exc)
        return self._rows(where, params)

    def _adbc(self, where: str, params: tuple) -> pa.Table:
        """The rows straight into Arrow through the ADBC driver of the backend (no text in between)."""
        exprs = [f'"{name}"' if name in self.present else f'NULL AS "{name}"' for name in _KINDS]
        if self.dialect == "sqlite":
            clause = where.replace("%s", "?")
        else:
            parts = where.split("%s")
            clause = "".join(part + (f"${i + 1}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))
        sql = f"SELECT {', '.join(exprs)} FROM {TABLE} WHERE {clause} ORDER BY event_id"
        with adbc.connect(self.engine) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            table = cursor.fetch_arrow_table()
        if self.dialect == "postgresql":
            return table
        # SQLite: a column that is NULL in every row read comes back as int64 or null; the store's
        # casts in _store_table make it the right type. Timestamps stay text, parsed by read().
        stamps = table.column("timestamp")
        if not pa.types.is_string(stamps.type):
            if stamps.null_count != len(stamps):
                raise pa.ArrowInvalid(f"timestamps stored as {stamps.type}, not text")
            table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                     pa.nulls(len(stamps), pa.string()))
        return table

    def _sqlite_csv(self, where: str, params: tuple) -> pa.Table:
        formats, values = [], []
        for name, kind in _KINDS.items():
            text_like = kind in ("label", "text", "timestamp")  # a timestamp may be any text in SQLite
            formats.append("%Q" if text_like else "%s")
            values.append(f'"{name}"' if name in self.present else "NULL")
        line = f"printf('{','.join(formats)}', {', '.join(values)})"
        sql = (f"SELECT group_concat(line, char(10)) FROM (SELECT {line} AS line FROM {TABLE} "
               f"WHERE {where.replace('%s', '?')} ORDER BY event_id)")
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(sql, params)
            blob = cursor.fetchone()[0]
            cursor.close()
        finally:
            connection.close()
        if not blob:
            return _empty_parsed(timestamps_as_text=True)
        return pa_csv.read_csv(
            io.BytesIO(blob.encode("utf-8")),
            read_options=pa_csv.ReadOptions(column_names=list(_KINDS)),
            parse_options=pa_csv.ParseOptions(quote_char="'", double_quote=True, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_parse_types(timestamps_as_text=True), null_values=["", "NULL"],
                strings_can_be_null=True, quoted_strings_can_be_null=False,
            ),
        )

    def _postgresql_csv(self, where: str, params: tuple) -> pa.Table:
        exprs = []
        for name, kind in _KINDS.items():
            if name not in self.present:
                exprs.append("NULL")
            elif kind == "timestamp":
                exprs.append(f'(extract(epoch from "{name}") * 1000000)::bigint')
            elif kind == "flag":
                exprs.append(f'"{name}"::int')
            else:
                exprs.append(f'"{name}"')
        sql = f"COPY (SELECT {', '.join(exprs)} FROM {TABLE} WHERE {where} ORDER BY event_id) TO STDOUT WITH (FORMAT csv)"
        raw = self.engine.raw_connection()
        try:
            sink = io.BytesIO()
            with raw.driver_connection.cursor() as cursor, cursor.copy(sql, params) as copy:
                for data in copy:
                    sink.write(data)
            raw.driver_connection.commit()
        finally:
            raw.close()
        if not sink.tell():
            return _empty_parsed(timestamps_as_text=False)
        table = pa_csv.read_csv(
            io.BytesIO(sink.getvalue()),
            read_options=pa_csv.ReadOptions(column_names=list(_KINDS)),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_parse_types(timestamps_as_text=False), null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=False,
            ),
        )
        # µs since the epoch, as the store holds them
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                table.column("timestamp").cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")))

    def _rows(self, where: str, params: tuple) -> pa.Table:
        from autopack_pipeline.storage.models import TokenEstimationV2Event

        table = TokenEstimationV2Event.__table__
        by_name = {column.name: column for column in table.columns}
        wanted = [name for name in _KINDS if name in self.present and name in by_name]
        clause = where
        bind: dict[str, Any] = {}
        for i, value in enumerate(params):
            clause = clause.replace("%s", f":p{i}", 1)
            bind[f"p{i}"] = value
        statement = select(*(readable_column(by_name[name], self.dialect) for name in wanted))
        statement = statement.where(text(clause).bindparams(**bind))
        with self.engine.connect() as connection:
            result = connection.execute(statement.order_by(by_name["event_id"]))
            frame = pd.DataFrame(result.all(), columns=list(result.keys()))
        if self.dialect == "sqlite":
            frame, found = set_aside_in_frame(frame, ["timestamp"])
            self.unreadable += found
        frame = conform_events_frame(frame)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                table.column("timestamp").cast(pa.timestamp("us", tz="UTC"), safe=False))


def _parse_types(timestamps_as_text: bool) -> dict[str, pa.DataType]:
    types = {}
    for name, kind in _KINDS.items():
        if kind == "timestamp":
            types[name] = pa.string() if timestamps_as_text else pa.int64()
        elif kind in ("label", "text"):
            types[name] = pa.string()
        elif kind == "flag":
            types[name] = pa.bool_()
        elif kind == "key":
            types[name] = pa.int64()
        else:
            types[name] = pa.int32()
    return types


def _unreadable_entry(rows: list[UnreadableTimestamp]) -> dict[str, Any]:
    """The manifest's record of the rows set aside: their count, id ranges (asked for again on every
    refresh) and the first few, as a command shows them."""
    return {"count": len(rows), "ranges": merge_ids(row.event_id for row in rows),
            "rows": [row.to_dict() for row in rows[:SHOWN_ROWS]]}


def _empty_parsed(timestamps_as_text: bool) -> pa.Table:
    return pa.schema(list(_parse_types(timestamps_as_text).items())).empty_table()


def _store_table(parsed: pa.Table) -> pa.Table:
    """A parsed batch (its timestamps already µs UTC) in the store's schema, sorted by event_id."""
    columns = {}
    for name, kind in _KINDS.items():
        column = parsed.column(name)
        if kind == "timestamp":
            column = column.cast(pa.timestamp("us", tz="UTC"))
        elif kind == "label":
            column = pc.dictionary_encode(column.cast(pa.string()))
        elif kind == "text":
            column = column.cast(pa.string())
        else:
            column = column.cast(_ARROW_TYPES[kind])  # safe cast: an int32 overflow raises
        columns[name] = column
    table = pa.table(columns).combine_chunks()
    if table.num_rows > 1:
        ids = table.column("event_id").to_numpy()
        if not np.all(ids[1:] > ids[:-1]):
            table = table.take(np.argsort(ids, kind="stable"))
    return table


# -- the store --------------------------------------------------------------------------------------


def _now() -> float:
    return time.time()


class ColumnarStore:
    """The Parquet copy of one database's events table (see the module docstring)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_engine(cls, engine: Engine) -> ColumnarStore | None:
        directory = store_directory_for(engine)
        return None if directory is None else cls(directory)

    # manifest ------------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat()
        tmp = self.directory / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    @staticmethod
    def _new_manifest(source: str) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "source": source, "high_water_event_id": 0,
                "rows": 0, "sorted": True, "parts": [], "next_part": 1, "gaps": [], "anchor": None}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as handle:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: one refresh at a time is the caller's job
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # refresh -------------------------------------------------------------------------------------

    def refresh(self, engine: Engine, *, full: bool = False, progress: Progress | None = None) -> RefreshResult:
        """Copy the events above the high-water mark (all of them when ``full``); return what happened."""
        began = time.perf_counter()
        timings: dict[str, float] = {}
        with self._locked():
            source = _source_identity(engine)
            manifest = self.manifest()
            reader = _BatchReader(engine)
            rebuilt = self._rebuild_reason(manifest, source, reader, full)
            obsolete: list[str] = []
            if rebuilt or manifest is None:
                fresh = self._new_manifest(source)
                if manifest is not None:
                    obsolete = [part["file"] for part in manifest["parts"]]
                    fresh["next_part"] = manifest["next_part"]  # new names never overwrite old files
                    logger.warning("rebuilding the columnar store %s: %s", self.directory, rebuilt)
                manifest = fresh
            before_rows, before_hw = manifest["rows"], manifest["high_water_event_id"]
            timings["checks"] = time.perf_counter() - began

            started = time.perf_counter()
            top = reader.max_event_id()
            gaps = self._live_gaps(manifest) if reader.dialect != "sqlite" else []
            # Rows set aside for an unreadable timestamp are asked for again: one fixed since joins the store.
            retry = [[lo, hi, 0] for lo, hi in (manifest.get("unreadable") or {}).get("ranges", [])]
            new_rows = written = 0
            id_pieces: list[np.ndarray] = []
            writing = 0.0
            # Each ~1M-row table becomes a part file as soon as it is read, so memory stays bounded.
            for table in self._extract(reader, manifest["high_water_event_id"], top, gaps + retry, progress):
                tick = time.perf_counter()
                id_pieces.append(table.column("event_id").to_numpy())
                self._append_part(manifest, table)
                written += 1
                new_rows += table.num_rows
                writing += time.perf_counter() - tick
            timings["extract"] = time.perf_counter() - started - writing

            started = time.perf_counter()
            aside = np.array([row.event_id for row in reader.unreadable], dtype=np.int64)
            manifest["unreadable"] = _unreadable_entry(reader.unreadable)
            if reader.unreadable:
                logger.info("%d events set aside for an unreadable timestamp (first: event_id %d)",
                            len(reader.unreadable), reader.unreadable[0].event_id)
            if new_rows or len(aside):
                ids = np.concatenate([*id_pieces, aside])  # set-aside rows exist: they count for the mark
                if new_rows and np.concatenate(id_pieces).min() <= manifest["high_water_event_id"]:
                    manifest["sorted"] = False  # late rows filled a gap below the mark
                manifest["rows"] += new_rows
                self._update_gaps(manifest, ids, gaps, top, reader.dialect)
                manifest["high_water_event_id"] = max(manifest["high_water_event_id"], int(ids.max()))
                manifest["anchor"] = reader.anchor(manifest["high_water_event_id"])
            else:
                manifest["gaps"] = gaps
            compacted, removed = self._compact(manifest)
            obsolete += removed
            timings["write"] = time.perf_counter() - started + writing
            self._write_manifest(manifest)
            for name in obsolete:
                (self.directory / name).unlink(missing_ok=True)
        return RefreshResult(
            directory=str(self.directory),
            rows_before=0 if rebuilt else before_rows,
            new_rows=new_rows,
            rows_after=manifest["rows"],
            high_water_before=0 if rebuilt else before_hw,
            high_water=manifest["high_water_event_id"],
            parts_written=written,
            parts_compacted=compacted,
            seconds=round(time.perf_counter() - began, 4),
            rebuilt=rebuilt,
            timings={k: round(v, 4) for k, v in timings.items()},
        )

    def _rebuild_reason(self, manifest: dict | None, source: str, reader: _BatchReader, full: bool) -> str | None:
        if manifest is None:
            return None
        if full:
            return "a full rebuild was asked for"
        if manifest.get("format") != STORE_FORMAT:
            return "the store was written by another version"
        if manifest.get("source") != source:
            return f"it held events of {manifest.get('source')}, not of {source}"
        missing = [p["file"] for p in manifest["parts"] if not (self.directory / p["file"]).exists()]
        if missing:
            return f"part files are missing ({', '.join(missing[:3])})"
        anchor = manifest.get("anchor")
        if manifest["high_water_event_id"] and anchor != reader.anchor(manifest["high_water_event_id"]):
            return (f"event {manifest['high_water_event_id']} is gone or changed in the database "
                    "(the database was replaced, or rows were deleted)")
        return None

    def _extract(self, reader: _BatchReader, high_water: int, top: int, gaps: list[list], progress: Progress | None
                 ) -> Iterator[pa.Table]:
        """New rows as tables of about PART_ROWS rows each (ids in gaps first, then above the mark)."""
        batches: list[tuple[str, tuple]] = [("event_id BETWEEN %s AND %s", (int(lo), int(hi))) for lo, hi, _t in gaps]
        start = high_water
        while start < top:
            end = min(start + BATCH_IDS, top)
            batches.append(("event_id > %s AND event_id <= %s", (start, end)))
            start = end
        total = max(0, top - high_water)
        pending: list[pa.Table] = []
        pending_rows = 0
        for (where, params), table in prefetch(batches, lambda b: reader.read(*b)):
            if table.num_rows:
                pending.append(table)
                pending_rows += table.num_rows
            if pending_rows >= PART_ROWS:
                yield pa.concat_tables(pending).combine_chunks()
                pending, pending_rows = [], 0
            if progress is not None and where.startswith("event_id >"):
                progress(params[1] - high_water, total)
        if pending:
            yield pa.concat_tables(pending).combine_chunks()

    def _append_part(self, manifest: dict[str, Any], table: pa.Table) -> str:
        name = f"part-{manifest['next_part']:06d}.parquet"
        manifest["next_part"] += 1
        tmp = self.directory / f".{name}.tmp"
        # Dictionary pages only for labels: plain integers decode several times faster than dictionary ones.
        labels = [name for name, kind in _KINDS.items() if kind in ("label", "text")]
        pq.write_table(table, tmp, compression="zstd", use_dictionary=labels)
        os.replace(tmp, self.directory / name)
        ids = table.column("event_id")
        manifest["parts"].append({"file": name, "rows": table.num_rows, "min_event_id": int(pc.min(ids).as_py()),
                                  "max_event_id": int(pc.max(ids).as_py())})
        return name

    # PostgreSQL id gaps ----------------------------------------------------------------------------

    @staticmethod
    def _live_gaps(manifest: dict[str, Any]) -> list[list]:
        now = _now()
        return [g for g in manifest.get("gaps", []) if now - g[2] < GAP_RETENTION_SECONDS]

    @staticmethod
    def _update_gaps(manifest: dict[str, Any], ids: np.ndarray, asked: list[list], top: int, dialect: str) -> None:
        if dialect == "sqlite":
            manifest["gaps"] = []
            return
        found = np.unique(ids)
        ranges: list[list] = []
        for lo, hi, seen in asked:  # re-asked gaps: keep the ids still missing
            inside = found[(found >= lo) & (found <= hi)]
            edges = np.r_[lo - 1, inside, hi + 1]
            for a, b in itertools.pairwise(edges):
                if b - a > 1:
                    ranges.append([int(a + 1), int(b - 1), seen])
        fresh = found[found > manifest["high_water_event_id"]]
        edges = np.r_[manifest["high_water_event_id"], fresh]
        now = _now()
        for a, b in itertools.pairwise(edges):
            if b - a > 1:
                ranges.append([int(a + 1), int(b - 1), now])
        manifest["gaps"] = ranges[-MAX_GAP_RANGES:]

    # compaction ------------------------------------------------------------------------------------

    def _compact(self, manifest: dict[str, Any]) -> tuple[int, list[str]]:
        """Merge the trailing small parts into one when there are more than MAX_SMALL_PARTS of them."""
        parts = manifest["parts"]
        tail = 0
        while tail < len(parts) and parts[len(parts) - 1 - tail]["rows"] < SMALL_PART_ROWS:
            tail += 1
        if tail <= MAX_SMALL_PARTS:
            return 0, []
        merging = parts[len(parts) - tail:]
        table = pa.concat_tables([pq.read_table(self.directory / p["file"]) for p in merging],
                                 promote_options="permissive")
        table = table.take(pc.sort_indices(table.column("event_id"))).combine_chunks()
        manifest["parts"] = parts[: len(parts) - tail]
        self._append_part(manifest, table)
        if all(a["max_event_id"] < b["min_event_id"] for a, b in zip(manifest["parts"], manifest["parts"][1:])):
            manifest["sorted"] = True
        return len(merging), [p["file"] for p in merging]

    # reading -------------------------------------------------------------------------------------

    def unreadable(self) -> dict[str, Any]:
        """The rows the last refresh left out for an unreadable timestamp: ``{"count", "rows"}``."""
        entry = (self.manifest() or {}).get("unreadable") or {}
        return {"count": int(entry.get("count", 0)), "rows": list(entry.get("rows", []))}

    @property
    def rows(self) -> int:
        manifest = self.manifest()
        return 0 if manifest is None else int(manifest["rows"])

    def table(self, columns: list[str] | None = None, *, as_codes: tuple[str, ...] = ()) -> pa.Table:
        """The stored events (``columns`` of the store schema, default all) in event_id order.

        Columns named in ``as_codes`` come back dictionary-encoded (Parquet's own dictionary pages),
        without building a string per row.
        """
        for attempt in (1, 2):
            manifest = self.manifest()
            if manifest is None:
                raise ColumnarStoreError(f"no columnar store at {self.directory}; refresh it first")
            wanted = list(columns) if columns else STORE_SCHEMA.names
            need_ids = not manifest["sorted"] and "event_id" not in wanted
            read_columns = wanted + (["event_id"] if need_ids else [])
            try:
                pieces = [pq.read_table(self.directory / p["file"], columns=read_columns,
                                        read_dictionary=list(as_codes) or None) for p in manifest["parts"]]
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue  # a refresh compacted the parts under us; read the new manifest
            if pieces:
                table = pa.concat_tables(pieces, promote_options="permissive")
            else:
                table = pa.schema([STORE_SCHEMA.field(name) for name in read_columns]).empty_table()
            if not manifest["sorted"]:
                table = table.take(pc.sort_indices(table.column("event_id")))
                if need_ids:
                    table = table.drop_columns(["event_id"])
            return table
        raise AssertionError("unreachable")  # pragma: no cover

    def events_frame(self) -> pd.DataFrame:
        """The events frame, exactly as :func:`~autopack_pipeline.storage.events.read_events` returns it."""
        table = self.table(list(EVENT_COLUMNS))
        mapping = {pa.int32(): pd.Int64Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(),
                   pa.string(): pd.StringDtype()}
        frame = table.to_pandas(types_mapper=mapping.get, coerce_temporal_nanoseconds=True)
        return conform_events_frame(frame)

    def event_arrays(self) -> EventArrays:
        """The columns the analysis needs as :class:`~autopack_pipeline.domain.fast_metrics.EventArrays`.

        Parts are read one at a time straight into preallocated numpy arrays, so the peak memory is
        the arrays plus one part; labels become integer codes, unified over all parts in Arrow.
        """
        for attempt in (1, 2):
            manifest = self.manifest()
            if manifest is None:
                raise ColumnarStoreError(f"no columnar store at {self.directory}; refresh it first")
            try:
                return _load_arrays(self.directory, manifest)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


_ARRAY_INTS = {
    "event_id": np.int64, "deliverable_count": np.int32, "predicted_output_tokens": np.int32,
    "actual_output_tokens": np.int32, "selected_budget": np.int32, "actual_max_tokens": np.int32,
    "attempt": np.int32,
}
_ARRAY_FLAGS = ("success", "truncated", "is_truncated_output")
_ARRAY_CODES = ("run_id", "phase_id", "category", "complexity", "model")


class _Filler:
    """Preallocated analysis arrays, filled part by part."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.values: dict[str, np.ndarray] = {name: np.zeros(rows, dtype=t) for name, t in _ARRAY_INTS.items()}
        self.values["timestamp"] = np.zeros(rows, dtype=np.int64)
        self.values.update({name: np.zeros(rows, dtype=np.int8) for name in _ARRAY_FLAGS})
        self.values.update({name: np.zeros(rows, dtype=np.int32) for name in _ARRAY_CODES})
        self.valid: dict[str, np.ndarray] = {}
        # Per label column, the dictionary of every chunk written so far and the rows it covers; the codes
        # written are the chunk's own until :meth:`unify_labels` maps them onto one dictionary.
        self.chunk_dictionaries: dict[str, list[tuple[slice, pa.Array]]] = {name: [] for name in _ARRAY_CODES}
        self.labels: dict[str, pa.Array] = {}
        self.texts: dict[str, list[tuple[int, pa.ChunkedArray]]] = {name: [] for name in _ARRAY_CODES}

    def _mark_nulls(self, name: str, where: slice, array: pa.Array) -> None:
        if array.null_count:
            mask = self.valid.setdefault(name, np.ones(self.rows, dtype=bool))
            mask[where] = array.is_valid().to_numpy(zero_copy_only=False)

    def add(self, table: pa.Table, start: int) -> None:
        where = slice(start, start + table.num_rows)
        for name in (*_ARRAY_INTS, "timestamp"):
            array = table.column(name).combine_chunks()
            if name == "timestamp":
                array = array.view(pa.int64())
            self._mark_nulls(name, where, array)
            self.values[name][where] = (array.fill_null(0) if array.null_count else array).to_numpy()
        for name in _ARRAY_FLAGS:
            array = table.column(name).combine_chunks()
            flags = self.values[name]
            flags[where] = array.fill_null(False).to_numpy(zero_copy_only=False)
            if array.null_count:
                flags[where][~array.is_valid().to_numpy(zero_copy_only=False)] = -1
        for name in _ARRAY_CODES:
            out = self.values[name]
            column = table.column(name)
            if not pa.types.is_dictionary(column.type):
                # Text (phase ids): kept as it is and encoded once over every part in unify_labels, one
                # hash pass in all, where encoding per part and then unifying hashes every id twice.
                self.texts[name].append((start, column))
                continue
            pieces = self.chunk_dictionaries[name]
            offset = start
            for chunk in column.chunks:
                out[offset:offset + len(chunk)] = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                if pieces and pieces[-1][0].stop == offset and _same_array(pieces[-1][1], chunk.dictionary):
                    pieces[-1] = (slice(pieces[-1][0].start, offset + len(chunk)), pieces[-1][1])
                else:  # chunks sharing a dictionary (Parquet gives every row group its column's) count once
                    pieces.append((slice(offset, offset + len(chunk)), chunk.dictionary))
                offset += len(chunk)

    def unify_labels(self) -> None:
        """One dictionary per label column over every chunk of every part, and the codes into it.

        Text columns (phase ids) are dictionary-encoded over all their parts at once. For dictionary
        columns, the chunks' dictionaries are concatenated and dictionary-encoded once (one hash pass in
        Arrow): the result's dictionary is the unified one, and its indices, cut at the chunk boundaries,
        map each chunk's local codes onto it. Python never touches a label value, so a million distinct
        phase ids cost what a thousand do, bar the hashing.
        """
        for name, parts in self.texts.items():
            if not parts:
                continue
            encoded = pc.dictionary_encode(pa.chunked_array([chunk for _start, column in parts
                                                             for chunk in column.chunks], type=pa.string()))
            out = self.values[name]
            offset = parts[0][0]
            for chunk in encoded.chunks:  # parts were added in row order, so chunks follow one another
                out[offset:offset + len(chunk)] = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                offset += len(chunk)
            if encoded.num_chunks:
                self.chunk_dictionaries[name].append((slice(parts[0][0], offset), encoded.chunk(0).dictionary))
        self.texts = {name: [] for name in _ARRAY_CODES}
        for name, pieces in self.chunk_dictionaries.items():
            if not pieces:
                self.labels[name] = pa.array([], type=pa.string())
                continue
            if len(pieces) == 1:  # one dictionary already (one part, or text encoded above): the codes stand
                self.labels[name] = pieces[0][1].cast(pa.string())
                continue
            encoded = pc.dictionary_encode(pa.concat_arrays([d.cast(pa.string()) for _rows, d in pieces]))
            self.labels[name] = encoded.dictionary
            maps = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            out = self.values[name]
            first = 0
            for rows, dictionary in pieces:
                lookup = np.append(maps[first:first + len(dictionary)], np.int32(-1))  # local -1: missing
                out[rows] = lookup[out[rows]]
                first += len(dictionary)
        self.chunk_dictionaries = {name: [] for name in _ARRAY_CODES}

    def permute(self, order: np.ndarray) -> None:
        for name in self.values:
            self.values[name] = self.values[name][order]
        for name in self.valid:
            self.valid[name] = self.valid[name][order]

    def narrow(self) -> None:
        """Smaller integer types where every value fits (event ids, deliverable counts, label codes)."""
        for name, small in (("event_id", np.int32), ("deliverable_count", np.int16), ("category", np.int16),
                            ("complexity", np.int16), ("model", np.int16)):
            values = self.values[name]
            info = np.iinfo(small)
            if len(values) == 0 or (info.min <= int(values.min()) and int(values.max()) <= info.max):
                self.values[name] = values.astype(small)

    def int_column(self, name: str) -> IntColumn:
        return IntColumn(self.values[name], self.valid.get(name))

    def code_column(self, name: str) -> IntColumn:
        codes = self.values[name]
        valid = codes >= 0
        return IntColumn(np.maximum(codes, 0), None if valid.all() else valid)

    def label_column(self, name: str) -> LabelColumn:
        return LabelColumn(self.values[name], tuple(self.labels[name].to_pylist()))


def _same_array(a: pa.Array, b: pa.Array) -> bool:
    """The same Arrow data (one buffer shared), without comparing values."""
    return len(a) == len(b) and a.offset == b.offset and [x.address if x else 0 for x in a.buffers()] == \
        [x.address if x else 0 for x in b.buffers()]


def _load_arrays(directory: Path, manifest: dict[str, Any]) -> EventArrays:
    filler = _Filler(int(manifest["rows"]))
    names = [*_ARRAY_INTS, "timestamp", *_ARRAY_FLAGS, *_ARRAY_CODES]
    position = 0
    for part in manifest["parts"]:
        # Phase ids are read as text and encoded here in one pass: with about one distinct id per phase,
        # Parquet's dictionary pages overflow to plain ones, and asking pyarrow for a dictionary costs
        # twice as much as encoding the text (0.87 s against 0.41 s per million, measured).
        table = pq.read_table(directory / part["file"], columns=names)
        filler.add(table, position)
        position += table.num_rows
        del table
    if position != filler.rows:
        raise ColumnarStoreError(f"the manifest of {directory} counts {filler.rows} rows, its parts {position}")
    filler.unify_labels()
    if not manifest["sorted"]:
        filler.permute(np.argsort(filler.values["event_id"], kind="stable"))
    filler.narrow()
    pa.default_memory_pool().release_unused()
    return EventArrays(
        event_id=filler.int_column("event_id"),
        timestamp_us=filler.int_column("timestamp"),
        category=filler.label_column("category"),
        complexity=filler.label_column("complexity"),
        deliverable_count=filler.int_column("deliverable_count"),
        predicted=filler.int_column("predicted_output_tokens"),
        actual=filler.int_column("actual_output_tokens"),
        selected_budget=filler.int_column("selected_budget"),
        actual_max_tokens=filler.int_column("actual_max_tokens"),
        success=filler.values["success"],
        truncated=filler.values["truncated"],
        is_truncated_output=filler.values["is_truncated_output"],
        attempt=filler.int_column("attempt"),
        run_code=filler.code_column("run_id"),
        phase_code=filler.code_column("phase_id"),
        model=filler.label_column("model"),
    )


def refresh_store(engine: Engine, *, full: bool = False, progress: Progress | None = None
                  ) -> tuple[ColumnarStore | None, RefreshResult | None]:
    """Refresh the store of ``engine``'s database; ``(None, None)`` for an in-memory database."""
    store = ColumnarStore.for_engine(engine)
    if store is None:
        return None, None
    return store, store.refresh(engine, full=full, progress=progress)
