"""The PostgreSQL bulk loader: ``COPY ... FROM STDIN`` of CSV written by pyarrow, on the psycopg
connection. Into an empty events table the load is one transaction that drops the secondary indexes and
foreign keys, copies the rows and rebuilds them before committing. An append keeps every index and
commits every 500k events; when the role may turn the foreign-key triggers off
(``session_replication_role``), it copies the events on a second connection while the first copies the
phases (two backends, two cores), otherwise on one connection with the keys checked by the server. A
failure after some batches were committed deletes the load's runs again, which cascades to the rest."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import _chain, _Loader
from autopack_pipeline.storage.bulk.rows import (
    _EVENT_SPEC,
    _PHASE_SPEC,
    _RUN_COLUMNS,
    _TIER_COLUMNS,
    _arrow_columns,
    _chunk_columns,
    _csv_bytes,
    _run_rows,
    _text_timestamps,
    _tier_keys,
    _tier_rows,
)
from autopack_pipeline.storage.columnar import prefetch

logger = logging.getLogger(__name__)

# Events per transaction of an append, as on SQLite: commits cost nothing, memory stays bounded.
PG_TRANSACTION_EVENTS = 500_000
# Phases per COPY (with their events): pieces of a chunk, so the first COPY starts sooner and the two
# connections of an append wait less for each other.
PG_PIECE_PHASES = 10_000


class _PostgresqlLoader(_Loader):
    """Writes generated chunks into a PostgreSQL database and counts what it wrote."""

    def load(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        raw = engine.raw_connection()
        streams = _PgStreams(raw.driver_connection)
        try:
            cursor = streams.cursor
            _pg_begin(cursor, skip_key_checks=False)
            cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM token_estimation_v2_events)")
            fresh = bool(cursor.fetchone()[0])
            # An append keeps every index, so the server's per-row work is what limits it. Events then go
            # through a second connection, in parallel with the phases (one backend per core); that
            # needs the foreign-key triggers off, as the events' phases are not committed yet.
            if not fresh and _may_skip_key_checks(cursor):
                streams.add_events_connection(engine)
            if fresh:
                self.method = "postgresql: COPY in one transaction, indexes and foreign keys rebuilt after the rows"
            else:
                self.method = "postgresql: COPY with indexes in place, 500k events per transaction" + (
                    ", events on a second connection" if streams.parallel else "")
            chunks = iter(chunks)
            first = next(chunks)
            start_text = _text_timestamps(first.phases["started_us"][:1])[0]
            with cursor.copy(f"COPY runs ({', '.join(_RUN_COLUMNS)}) FROM STDIN") as copy:
                for row in _run_rows(self.seed, self.runs, start_text):
                    copy.write_row(row)
            with cursor.copy(f"COPY tiers ({', '.join(_TIER_COLUMNS)}) FROM STDIN") as copy:
                for row in _tier_rows(self.run_ids.tolist(), start_text):
                    copy.write_row(row)
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id = ANY(%s)",
                           (self.run_ids.tolist(),))
            tier_pk = _tier_keys(cursor.fetchall(), self.run_ids)
            rebuild = _drop_for_load(cursor) if fresh else []

            def encode(chunk: SynthChunk) -> tuple[bytes, bytes]:
                def build() -> tuple[bytes, bytes]:
                    phase_cols, event_cols = _chunk_columns(chunk, self.run_ids, tier_pk, self.seed)
                    return (_csv_bytes(_arrow_columns(phase_cols, _PHASE_SPEC, len(chunk.phases["run"]))),
                            _csv_bytes(_arrow_columns(event_cols, _EVENT_SPEC, len(chunk.events["run"]))))

                return self._timed("generate", build)

            in_transaction = 0
            # Pieces smaller than a chunk: the first COPY starts sooner, the streams wait less for each other.
            pieces = _sliced(_chain(first, chunks), PG_PIECE_PHASES)
            for chunk, (phase_csv, event_csv) in prefetch(pieces, encode):
                streams.copy(phase_csv, event_csv, self._timed)
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
            cursor.executemany(
                "UPDATE runs SET max_phases = %s, tokens_used = %s, completed_at = %s, updated_at = %s "
                "WHERE id = %s",
                self.stats.rows(self.run_ids),
            )
            streams.commit(last=True)
        except BaseException:
            try:
                streams.rollback()
            finally:
                if streams.committed:
                    _undo_load(raw.driver_connection, self.run_ids.tolist())
            raise
        finally:
            streams.close()
            raw.close()


_PHASE_COPY = f"COPY phases ({', '.join(c for c, _s in _PHASE_SPEC)}) FROM STDIN WITH (FORMAT csv)"
_EVENT_COPY = (f"COPY token_estimation_v2_events ({', '.join(c for c, _s in _EVENT_SPEC)}) "
               "FROM STDIN WITH (FORMAT csv)")


class _PgStreams:
    """The load's PostgreSQL connections: phases (and everything else) on the first; events on a
    second one when :meth:`add_events_connection` was called, copied by a worker thread meanwhile.

    Each batch commits the first connection, then the second, so whoever reads between the two
    commits sees phases without their events yet, never events without their phases, and event ids
    (one sequence, one connection) become visible in ascending order as the columnar refresh expects.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.events_raw: Any = None
        self.events_cursor = self.cursor
        self.worker: ThreadPoolExecutor | None = None
        self.committed = False  # a batch of this load is committed: a failure must undo it

    @property
    def parallel(self) -> bool:
        return self.events_raw is not None

    def add_events_connection(self, engine: Engine) -> None:
        self.events_raw = engine.raw_connection()
        self.events_cursor = self.events_raw.driver_connection.cursor()
        _pg_begin(self.events_cursor, skip_key_checks=True)
        _pg_begin(self.cursor, skip_key_checks=True)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-events")

    def copy(self, phase_csv: bytes, event_csv: bytes, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        if self.worker is None:
            timed("phases", lambda: _copy(self.cursor, _PHASE_COPY, phase_csv))
            timed("events", lambda: _copy(self.cursor, _EVENT_COPY, event_csv))
            return
        events = self.worker.submit(timed, "events", lambda: _copy(self.events_cursor, _EVENT_COPY, event_csv))
        try:
            timed("phases", lambda: _copy(self.cursor, _PHASE_COPY, phase_csv))
        except BaseException:
            wait([events])  # its connection must be idle before the rollback
            raise
        events.result()

    def commit(self, *, last: bool = False) -> None:
        self.connection.commit()
        self.committed = True
        if self.parallel:
            self.events_raw.driver_connection.commit()
        if not last:
            _pg_begin(self.cursor, skip_key_checks=self.parallel)
            if self.parallel:
                _pg_begin(self.events_cursor, skip_key_checks=True)

    def rollback(self) -> None:
        try:
            self.connection.rollback()
        finally:
            if self.parallel:
                self.events_raw.driver_connection.rollback()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
        self.cursor.close()
        if self.events_raw is not None:
            self.events_cursor.close()
            self.events_raw.close()


def _pg_begin(cursor: Any, *, skip_key_checks: bool) -> None:
    """Settings for the transaction just begun (``SET LOCAL`` ends with it)."""
    # A crash may lose the last batches, which are copies of generated data anyway.
    cursor.execute("SET LOCAL synchronous_commit = off")
    if skip_key_checks:
        # The generator writes the runs, tiers and phases every event refers to (the tests check the
        # keys), as the SQLite load does with foreign_keys=OFF; this also saves a lookup per key and row.
        cursor.execute("SET LOCAL session_replication_role = replica")


def _may_skip_key_checks(cursor: Any) -> bool:
    """Whether this role may turn the foreign-key triggers off (superuser, or granted the setting)."""
    from psycopg.errors import InsufficientPrivilege

    cursor.execute("SAVEPOINT synth_probe")
    try:
        cursor.execute("SET LOCAL session_replication_role = replica")
    except InsufficientPrivilege:
        cursor.execute("ROLLBACK TO SAVEPOINT synth_probe")
        cursor.execute("RELEASE SAVEPOINT synth_probe")
        return False
    cursor.execute("ROLLBACK TO SAVEPOINT synth_probe")  # the setting is made per stream, per batch
    cursor.execute("RELEASE SAVEPOINT synth_probe")
    return True


def _undo_load(connection: Any, run_ids: list[str]) -> None:
    """Delete the load's runs after a failure that left batches committed; the keys cascade to tiers,
    phases and events. Best effort: when the server is unreachable too, the committed rows stay, and
    loading the same seed again is refused (:class:`RunsAlreadyPresent`)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM runs WHERE id = ANY(%s)", (run_ids,))
        connection.commit()
    except Exception:  # the original failure is the one to report
        logger.warning("could not remove the partly loaded synthetic runs %s .. %s", run_ids[0], run_ids[-1],
                       exc_info=True)


def _copy(cursor: Any, statement: str, data: bytes) -> None:
    with cursor.copy(statement) as copy:
        copy.write(data)


def _drop_for_load(cursor: Any) -> list[str]:
    """Drop the secondary indexes and foreign keys of phases and events; return what rebuilds them.

    Runs inside the load's transaction (PostgreSQL DDL is transactional), so a failed load leaves
    every index and constraint as it was. Indexes backing a primary key or unique constraint stay.
    """
    tables = ("phases", "token_estimation_v2_events")
    cursor.execute(
        "SELECT c.conname, c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[]) ORDER BY c.conname",
        (list(tables),),
    )
    foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
        (list(tables),),
    )
    indexes = cursor.fetchall()
    for name, table, _definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, table, definition in foreign_keys
    ]


def _sliced(chunks: Iterator[SynthChunk], phases: int) -> Iterator[SynthChunk]:
    """The chunks cut into pieces of ``phases`` phases, each with the events of those phases."""
    for chunk in chunks:
        ph, ev = chunk.phases, chunk.events
        # (run, phase number) grows along both tables, so one search finds where a piece's events start.
        phase_keys = (ph["run"] << 32) + ph["phase_index"]
        event_keys = (ev["run"] << 32) + ev["phase_index"]
        starts = list(range(0, len(phase_keys), phases))
        event_starts = np.searchsorted(event_keys, phase_keys[starts]).tolist() + [len(event_keys)]
        for i, start in enumerate(starts):
            a, b = event_starts[i], event_starts[i + 1]
            yield dataclasses.replace(chunk, phases={k: v[start:start + phases] for k, v in ph.items()},
                                      events={k: v[a:b] for k, v in ev.items()})
