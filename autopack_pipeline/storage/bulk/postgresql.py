"""The PostgreSQL bulk loader: Arrow tables written by ``COPY ... FROM STDIN (FORMAT binary)`` through
ADBC's PostgreSQL driver (``adbc_ingest``), cast first to the table's own column types, since binary
COPY takes values as the column stores them. The server parses no text, and no CSV is written.

Into an empty events table the load is one transaction that drops the secondary indexes, copies the
rows and rebuilds them before committing; the foreign keys stay, with their triggers off for the load
(``session_replication_role``) when the role may do that, or are dropped and added again (checking
every row) when it may not. An append keeps every index and commits every 500k events; when the role
may turn the foreign-key triggers off, it copies the events on a second connection while the first
copies the phases (two backends, two cores), otherwise on one connection with the keys checked by the
server. A failure after some batches were committed deletes the load's runs again, which cascades to
the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import adbc
from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import _chain, _Loader, _sliced
from autopack_pipeline.storage.bulk.rows import (
    _EVENT_SPEC,
    _PHASE_SPEC,
    _RUN_COLUMNS,
    _TIER_COLUMNS,
    _arrow_columns,
    _cast_to,
    _chunk_columns,
    _row_table,
    _run_rows,
    _text_timestamps,
    _tier_keys,
    _tier_rows,
    run_id_for,
)
from autopack_pipeline.storage.columnar import prefetch

logger = logging.getLogger(__name__)

# Events per transaction of an append, as on SQLite: commits cost nothing, memory stays bounded.
PG_TRANSACTION_EVENTS = 500_000
# Phases per COPY (with their events): pieces of a chunk, so the first COPY starts sooner and the two
# connections of an append wait less for each other.
PG_PIECE_PHASES = 10_000

# The Arrow type binary COPY needs for each PostgreSQL column type the loaded tables use.
_ARROW_TYPES = {
    "integer": pa.int32(), "bigint": pa.int64(), "smallint": pa.int16(), "boolean": pa.bool_(),
    "double precision": pa.float64(), "real": pa.float32(), "timestamp without time zone": pa.timestamp("us"),
    "character varying": pa.string(), "text": pa.string(),
}


class _PostgresqlLoader(_Loader):
    """Writes generated chunks into a PostgreSQL database and counts what it wrote."""

    def load(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        streams = _PgStreams(adbc.connect(engine))
        try:
            cursor = streams.cursor
            fresh = _scalar(cursor, "SELECT NOT EXISTS (SELECT 1 FROM token_estimation_v2_events)")
            skip_key_checks = _may_skip_key_checks(cursor)
            streams.begin(skip_key_checks)
            # An append keeps every index, so the server's per-row work is what limits it. Events then go
            # through a second connection, in parallel with the phases (one backend per core); that
            # needs the foreign-key triggers off, as the events' phases are not committed yet.
            if not fresh and skip_key_checks:
                streams.add_events_connection(engine)
            if fresh:
                self.method = ("postgresql: binary COPY in one transaction, indexes rebuilt after the rows, "
                               + ("foreign keys kept, their triggers off" if skip_key_checks
                                  else "foreign keys added again"))
            else:
                self.method = "postgresql: binary COPY with indexes in place, 500k events per transaction" + (
                    ", events on a second connection" if streams.parallel else "")
            types = {table: _column_types(cursor, table)
                     for table in ("runs", "tiers", "phases", "token_estimation_v2_events")}
            chunks = iter(chunks)
            first = next(chunks)
            start_text = _text_timestamps(first.phases["started_us"][:1])[0]
            _ingest(cursor, "runs", _cast_to(_row_table(_RUN_COLUMNS, _run_rows(self.seed, self.runs, start_text)),
                                             types["runs"]))
            _ingest(cursor, "tiers", _cast_to(_row_table(_TIER_COLUMNS, _tier_rows(self.run_ids.tolist(), start_text)),
                                              types["tiers"]))
            # The seed's runs by their prefix (LIKE: text ranges follow the database's collation).
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id LIKE "
                           f"'{run_id_for(self.seed, 0)[:-5]}%'")
            tier_pk = _tier_keys(cursor.fetchall(), self.run_ids)
            rebuild = _drop_for_load(cursor, drop_foreign_keys=not skip_key_checks) if fresh else []

            def tables(chunk: SynthChunk) -> tuple[pa.Table, pa.Table]:
                def build() -> tuple[pa.Table, pa.Table]:
                    phase_cols, event_cols = _chunk_columns(chunk, self.run_id_text, tier_pk, self.seed)
                    return (_cast_to(_arrow_columns(phase_cols, _PHASE_SPEC, len(chunk.phases["run"])),
                                     types["phases"]),
                            _cast_to(_arrow_columns(event_cols, _EVENT_SPEC, len(chunk.events["run"])),
                                     types["token_estimation_v2_events"]))

                return self._timed("generate", build)

            in_transaction = 0
            # Pieces smaller than a chunk: the first COPY starts sooner, the streams wait less for each other.
            pieces = _sliced(_chain(first, chunks), PG_PIECE_PHASES)
            for chunk, (phase_rows, event_rows) in prefetch(pieces, tables):
                streams.copy(phase_rows, event_rows, self._timed)
                self._written(chunk)
                in_transaction += len(chunk.events["run"])
                if not fresh and in_transaction >= PG_TRANSACTION_EVENTS:
                    streams.commit()
                    in_transaction = 0
            if rebuild:
                # Index builds sort in memory instead of spilling to disk (this transaction only).
                cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for statement in rebuild:
                self._timed("indexes", lambda: cursor.execute(statement))  # noqa: B023
            self._update_runs(cursor, text_timestamps=False)
            streams.commit(last=True)
        except BaseException:
            try:
                streams.rollback()
            finally:
                if streams.committed:
                    _undo_load(streams.connection, self.run_ids.tolist())
            raise
        finally:
            streams.close()


class _PgStreams:
    """The load's PostgreSQL connections (ADBC, each in its own transaction): phases (and everything
    else) on the first; events on a second one when :meth:`add_events_connection` was called, copied by
    a worker thread meanwhile.

    Each batch commits the first connection, then the second, so whoever reads between the two
    commits sees phases without their events yet, never events without their phases, and event ids
    (one sequence, one connection) become visible in ascending order as the columnar refresh expects.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.events_connection: Any = None
        self.events_cursor = self.cursor
        self.worker: ThreadPoolExecutor | None = None
        self.skip_key_checks = False
        self.committed = False  # a batch of this load is committed: a failure must undo it

    @property
    def parallel(self) -> bool:
        return self.events_connection is not None

    def begin(self, skip_key_checks: bool) -> None:
        """Settings of the transaction just begun on each connection (``SET LOCAL`` ends with it)."""
        self.skip_key_checks = skip_key_checks
        for cursor in {id(c): c for c in (self.cursor, self.events_cursor)}.values():
            _pg_settings(cursor, skip_key_checks=skip_key_checks)

    def add_events_connection(self, engine: Engine) -> None:
        self.events_connection = adbc.connect(engine)
        self.events_cursor = self.events_connection.cursor()
        _pg_settings(self.events_cursor, skip_key_checks=True)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-events")

    def copy(self, phase_rows: pa.Table, event_rows: pa.Table, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        if self.worker is None:
            timed("phases", lambda: _ingest(self.cursor, "phases", phase_rows))
            timed("events", lambda: _ingest(self.cursor, "token_estimation_v2_events", event_rows))
            return
        events = self.worker.submit(timed, "events",
                                    lambda: _ingest(self.events_cursor, "token_estimation_v2_events", event_rows))
        try:
            timed("phases", lambda: _ingest(self.cursor, "phases", phase_rows))
        except BaseException:
            wait([events])  # its connection must be idle before the rollback
            raise
        events.result()

    def commit(self, *, last: bool = False) -> None:
        self.connection.commit()
        self.committed = True
        if self.parallel:
            self.events_connection.commit()
        if not last:  # the driver has begun the next transaction on each connection
            self.begin(self.skip_key_checks)

    def rollback(self) -> None:
        try:
            self.connection.rollback()
        finally:
            if self.parallel:
                self.events_connection.rollback()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
        try:
            if self.parallel:
                self.events_cursor.close()
                self.events_connection.close()
        finally:
            self.cursor.close()
            self.connection.close()


def _scalar(cursor: Any, query: str) -> Any:
    cursor.execute(query)
    return cursor.fetchone()[0]


def _pg_settings(cursor: Any, *, skip_key_checks: bool) -> None:
    # A crash may lose the last batches, which are copies of generated data anyway.
    cursor.execute("SET LOCAL synchronous_commit = off")
    if skip_key_checks:
        # The generator writes the runs, tiers and phases every event refers to (the tests check the
        # keys), as the SQLite load does with foreign_keys=OFF; this also saves a lookup per key and row.
        cursor.execute("SET LOCAL session_replication_role = replica")


def _may_skip_key_checks(cursor: Any) -> bool:
    """Whether this role may turn the foreign-key triggers off (superuser, or granted the setting)."""
    if _scalar(cursor, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return True
    # Granting a setting (and asking about it) came with PostgreSQL 15.
    return int(_scalar(cursor, "SHOW server_version_num")) >= 150000 and bool(
        _scalar(cursor, "SELECT has_parameter_privilege('session_replication_role', 'SET')"))


def _column_types(cursor: Any, table: str) -> pa.Schema:
    """The Arrow types binary COPY needs for ``table``'s columns."""
    cursor.execute("SELECT column_name, data_type FROM information_schema.columns "
                   f"WHERE table_schema = current_schema() AND table_name = '{table}'")
    return pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in cursor.fetchall() if kind in _ARROW_TYPES])


def _ingest(cursor: Any, table: str, rows: pa.Table) -> None:
    cursor.adbc_ingest(table, rows, mode="append")


def _undo_load(connection: Any, run_ids: list[str]) -> None:
    """Delete the load's runs after a failure that left batches committed; the keys cascade to tiers,
    phases and events. Best effort: when the server is unreachable too, the committed rows stay, and
    loading the same seed again is refused (:class:`RunsAlreadyPresent`)."""
    try:
        with connection.cursor() as cursor:
            cursor.adbc_ingest("synth_undo", pa.table({"id": pa.array(run_ids, pa.string())}), mode="create",
                               temporary=True)
            cursor.execute("DELETE FROM runs WHERE id IN (SELECT id FROM synth_undo)")
            cursor.execute("DROP TABLE synth_undo")
        connection.commit()
    except Exception:  # the original failure is the one to report
        logger.warning("could not remove the partly loaded synthetic runs %s .. %s", run_ids[0], run_ids[-1],
                       exc_info=True)


def _drop_for_load(cursor: Any, *, drop_foreign_keys: bool) -> list[str]:
    """Drop the secondary indexes (and with ``drop_foreign_keys`` the foreign keys) of phases and events;
    return what rebuilds them.

    Runs inside the load's transaction (PostgreSQL DDL is transactional), so a failed load leaves
    every index and constraint as it was. Indexes backing a primary key or unique constraint stay.
    """
    tables = "'phases'::regclass, 'token_estimation_v2_events'::regclass"
    foreign_keys = []
    if drop_foreign_keys:
        cursor.execute("SELECT c.conname, c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                       f"WHERE c.contype = 'f' AND c.conrelid IN ({tables}) ORDER BY c.conname")
        foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        f"WHERE i.indrelid IN ({tables}) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1")
    indexes = cursor.fetchall()
    for name, table, _definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, table, definition in foreign_keys
    ]
