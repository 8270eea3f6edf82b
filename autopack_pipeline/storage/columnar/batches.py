"""Reading event rows out of the database by id range, as Arrow tables of the store's schema."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import adbc
from autopack_pipeline.storage.adbc import AdbcUnavailable
from autopack_pipeline.storage.catalog import EngineCatalog, max_event_id
from autopack_pipeline.storage.columnar.encoding import (
    _KINDS,
    GROUPED_LABELS,
    TABLE,
    ColumnarStoreError,
    Progress,
    _empty_parsed,
    _parse_types,
    _store_table,
    arrow_of,
    numpy_of,
)
from autopack_pipeline.storage.frames import conform_events_frame
from autopack_pipeline.storage.timestamps import (
    UnreadableTimestamp,
    readable_column,
    set_aside_in_frame,
    set_aside_unreadable,
)

# The package's logger, as before the split, so a log filter on it keeps working.
logger = logging.getLogger("autopack_pipeline.storage.columnar")


class _BatchReader:
    """Event rows by id range as Arrow tables, by the fastest route the backend offers.

    SQLite: one ``printf`` line per row and ``group_concat`` per batch, so Python handles one string
    per 250k rows and pyarrow's CSV reader does the parsing (a cold extraction's child processes read
    through ADBC's SQLite driver instead, ``sqlite_children.py``). PostgreSQL: ADBC's driver, straight
    into Arrow, on connections kept between batches until :meth:`close`; a batch it cannot read goes
    through ``COPY (SELECT ...) TO STDOUT`` in CSV. Anything else, or a batch the CSV route cannot
    parse (a database holding odd types), goes through SQLAlchemy rows.
    """

    def __init__(self, engine: Engine, kinds: dict[str, str] = _KINDS) -> None:
        self.engine = engine
        self.kinds = kinds  # the column group read: the events' (_KINDS) or the prediction inputs
        self.dialect = engine.dialect.name
        with EngineCatalog(engine) as catalog:
            if TABLE not in catalog.table_names():
                raise ColumnarStoreError(f"the telemetry database has no {TABLE} table")
            self.present = catalog.column_names(TABLE)
        # Rows whose timestamp is not a date (SQLite holds any text): kept out of the store, named.
        self.unreadable: list[UnreadableTimestamp] = []
        missing = {"event_id", "run_id", "phase_id"} - self.present
        if missing:
            raise ColumnarStoreError(f"{TABLE} lacks the columns {', '.join(sorted(missing))}")
        # ADBC connections between batches, one per thread reading at once: the driver's connect (it reads
        # the server's type catalogue) took 40-50 ms, once per batch of 250k ids before.
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the ADBC connections kept between batches (one still reading is closed when it is done)."""
        with self._idle_lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()

    def _connection(self) -> Any:
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return adbc.connect(self.engine)

    def _put_back(self, connection: Any) -> None:
        with self._idle_lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()

    # id bounds ---------------------------------------------------------------------------------

    def max_event_id(self) -> int:
        with EngineCatalog(self.engine) as catalog:
            return max_event_id(catalog)

    def anchor(self, event_id: int) -> dict[str, Any] | None:
        """The identifying fields of one row, or None when it does not exist."""
        with EngineCatalog(self.engine) as catalog:
            return catalog.anchor(event_id)

    # batches -----------------------------------------------------------------------------------

    def read(self, where: str, params: tuple) -> pa.Table:
        """Rows matching ``where`` (SQL over event_id with positional params), as a table of the group.

        Rows with an unreadable timestamp are left out and added to ``self.unreadable``.
        """
        table, found = self.read_apart(where, params)
        self.unreadable += found
        return table

    def read_apart(self, where: str, params: tuple) -> tuple[pa.Table, list[UnreadableTimestamp]]:
        """As :meth:`read`, the rows set aside returned instead of added: batches read on several
        threads add theirs in the batches' order (the caller's)."""
        found: list[UnreadableTimestamp] = []
        table = self._read(where, params, found)
        timed = "timestamp" in self.kinds
        if timed and pa.types.is_string(table.schema.field("timestamp").type):  # SQLite's CSV route: the text
            table, aside = set_aside_unreadable(table, ["timestamp"])
            found += aside
        return _store_table(table, self.kinds), found

    def _read(self, where: str, params: tuple, found: list[UnreadableTimestamp]) -> pa.Table:
        if self.dialect in ("sqlite", "postgresql"):
            try:
                return self._adbc(where, params)
            except (AdbcUnavailable, adbc.Error, pa.ArrowException) as exc:
                # SQLite's driver types a column by its first rows; a column holding mixed types (any
                # value is allowed there) stops it. The CSV route takes anything.
                logger.info("the ADBC route could not read a batch (%s); trying the CSV route", exc)
        if self.dialect == "sqlite" and "timestamp" not in self.kinds and set(GROUPED_LABELS) & set(self.kinds):
            try:
                return self._sqlite_grouped(where, params)
            except (pa.ArrowInvalid, ValueError) as exc:
                logger.info("the grouped route could not read a batch (%s); trying the CSV route", exc)
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
        return self._rows(where, params, found)

    def _adbc(self, where: str, params: tuple) -> pa.Table:
        """The rows straight into Arrow through the ADBC driver of the backend (no text in between)."""
        exprs = [f'"{name}"' if name in self.present else f'NULL AS "{name}"' for name in self.kinds]
        if self.dialect == "sqlite":
            clause = where.replace("%s", "?")
        else:
            parts = where.split("%s")
            clause = "".join(part + (f"${i + 1}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))
        sql = f"SELECT {', '.join(exprs)} FROM {TABLE} WHERE {clause} ORDER BY event_id"
        connection = self._connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                table = cursor.fetch_arrow_table()
            connection.rollback()  # the read's transaction ends: nothing is held between batches
        except BaseException:
            connection.close()
            raise
        self._put_back(connection)
        if self.dialect == "postgresql" or "timestamp" not in self.kinds:
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

    def _sqlite_rows(self, sql: str, params: tuple) -> list[tuple]:
        """Every row of one statement, through the ``sqlite3`` driver itself (no SQLAlchemy rows)."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
        finally:
            connection.close()
        return rows

    def _sqlite_csv(self, where: str, params: tuple, kinds: dict[str, str] | None = None) -> pa.Table:
        kinds = kinds or self.kinds  # a subset: the columns the grouped route leaves to this one
        formats, values = [], []
        for name, kind in kinds.items():
            text_like = kind in ("label", "text", "timestamp")  # a timestamp may be any text in SQLite
            formats.append("%Q" if text_like else "%s")
            values.append(f'"{name}"' if name in self.present else "NULL")
        line = f"printf('{','.join(formats)}', {', '.join(values)})"
        sql = (f"SELECT group_concat(line, char(10)) FROM (SELECT {line} AS line FROM {TABLE} "
               f"WHERE {where.replace('%s', '?')} ORDER BY event_id)")
        blob = self._sqlite_rows(sql, params)[0][0]
        if not blob:
            return _empty_parsed(True, kinds)
        return pa_csv.read_csv(
            io.BytesIO(blob.encode("utf-8")),
            read_options=pa_csv.ReadOptions(column_names=list(kinds)),
            parse_options=pa_csv.ParseOptions(quote_char="'", double_quote=True, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_parse_types(True, kinds), null_values=["", "NULL"],
                strings_can_be_null=True, quoted_strings_can_be_null=False,
            ),
        )

    def _sqlite_grouped(self, where: str, params: tuple) -> pa.Table:
        """The rows with a long repeated text (:data:`GROUPED_LABELS`; the prediction inputs'
        deliverables) as the CSV route reads them, that text coming once per distinct value.

        One statement groups the batch by the text, giving each text once with its rows' ids, and
        counts the other columns' values; only columns holding a value are read again by the CSV route
        (an Autopack database has none). The codes are put in the order of the texts' first rows, as
        ``dictionary_encode`` of the CSV route's column. A value that is not text (SQLite keeps any
        type in any column) leaves the batch to the CSV route, which shows it as ``printf`` does.
        """
        name = next(label for label in GROUPED_LABELS if label in self.kinds)
        others = [column for column in self.kinds if column not in ("event_id", name)]
        counted = [column for column in others if column in self.present]
        value = f'"{name}"' if name in self.present else "NULL"
        counts = "".join(f', count("{column}")' for column in counted)
        sql = (f"SELECT {value} AS value, group_concat(event_id){counts} FROM {TABLE} "
               f"WHERE {where.replace('%s', '?')} GROUP BY value")
        groups = self._sqlite_rows(sql, params)
        types = _parse_types(True, self.kinds)
        if not groups:
            return _empty_parsed(True, self.kinds)
        if any(not isinstance(text, str | None) for text, *_rest in groups):
            raise ValueError(f"{name} holds values that are not text")
        pieces = [np.fromstring(ids, dtype=np.int64, sep=",") for _text, ids, *_counts in groups]
        ids = np.concatenate(pieces)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        group_of = np.repeat(np.arange(len(groups)), [len(piece) for piece in pieces])[order]
        # Distinct texts numbered by their first row in event_id order; the NULL group is no text.
        firsts = np.unique(group_of, return_index=True)[1]
        texts = [(first, i) for i, first in enumerate(firsts) if groups[i][0] is not None]
        texts.sort()
        code_of = np.full(len(groups), -1, dtype=np.int32)
        code_of[[i for _first, i in texts]] = np.arange(len(texts), dtype=np.int32)
        codes = code_of[group_of]
        column = pa.DictionaryArray.from_arrays(_codes_array(codes), _string_array([groups[i][0] for _first, i in texts]))
        filled = [other for i, other in enumerate(counted) if any(group[2 + i] for group in groups)]
        rest = None
        if filled:
            rest = self._sqlite_csv(where, params, {"event_id": "key", **{other: self.kinds[other] for other in filled}})
            if not np.array_equal(numpy_of(rest.column("event_id")), ids):
                raise ValueError("the rows changed between the two reads of the batch")
        columns = {"event_id": arrow_of(ids)}
        for other in others:
            columns[other] = rest.column(other) if other in filled else pa.nulls(len(ids), types[other])
        columns[name] = column
        return pa.table({key: columns[key] for key in self.kinds})

    def _postgresql_csv(self, where: str, params: tuple) -> pa.Table:
        exprs = []
        for name, kind in self.kinds.items():
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
            return _empty_parsed(False, self.kinds)
        table = pa_csv.read_csv(
            io.BytesIO(sink.getvalue()),
            read_options=pa_csv.ReadOptions(column_names=list(self.kinds)),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_parse_types(False, self.kinds), null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=False,
            ),
        )
        if "timestamp" not in self.kinds:
            return table
        # µs since the epoch, as the store holds them
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                table.column("timestamp").cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")))

    def _rows(self, where: str, params: tuple, found: list[UnreadableTimestamp]) -> pa.Table:
        import pandas as pd  # this path alone (no ADBC, no CSV route) builds a frame

        from autopack_pipeline.storage.models import TokenEstimationV2Event

        table = TokenEstimationV2Event.__table__
        by_name = {column.name: column for column in table.columns}
        wanted = [name for name in self.kinds if name in self.present and name in by_name]
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
        if "timestamp" not in self.kinds:  # the prediction inputs: the values as they are (NaN: missing)
            types = _parse_types(False, self.kinds)
            return pa.table({name: pa.array([None if v != v else v for v in frame[name].tolist()]
                                            if name in frame.columns else [None] * len(frame), type=types[name])
                             for name in self.kinds})
        if self.dialect == "sqlite":
            frame, aside = set_aside_in_frame(frame, ["timestamp"])
            found += aside
        table = pa.Table.from_pandas(conform_events_frame(frame), preserve_index=False)
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                table.column("timestamp").cast(pa.timestamp("us", tz="UTC"), safe=False))


def _codes_array(codes: np.ndarray) -> pa.Array:
    """int32 codes as an Arrow array, negative ones null (built from buffers: no pandas import)."""
    valid = codes >= 0
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.int32(), len(codes), [bitmap, pa.py_buffer(np.where(valid, codes, 0).astype(np.int32))])


def _string_array(texts: list[str]) -> pa.Array:
    """Python strings as an Arrow string array, built from buffers (no pandas import)."""
    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def gathered_parts(stream: Iterator[tuple[tuple[str, tuple], tuple[pa.Table, list]]], reader: _BatchReader,
                   high_water: int, total: int, progress: Progress | None, part_rows: int) -> Iterator[pa.Table]:
    """The batches of ``stream`` (``((where, params), (table, rows set aside))`` in id order) gathered into
    tables of about ``part_rows`` rows; the set-aside rows go to ``reader.unreadable`` in the batches' order,
    whichever thread or process read them; ``progress`` hears of each batch above the mark."""
    pending: list[pa.Table] = []
    pending_rows = 0
    for (where, params), (table, aside) in stream:
        reader.unreadable += aside
        if table.num_rows:
            pending.append(table)
            pending_rows += table.num_rows
        if pending_rows >= part_rows:
            yield pa.concat_tables(pending).combine_chunks()
            pending, pending_rows = [], 0
        if progress is not None and where.startswith("event_id >"):
            progress(params[1] - high_water, total)
    if pending:
        yield pa.concat_tables(pending).combine_chunks()
