"""The SQLite bulk loader: Arrow tables written through ADBC's SQLite driver (bound to prepared INSERTs
into an empty table; appended through in-memory stages and ``INSERT ... SELECT``) in one transaction,
so a failure leaves nothing, with ``synchronous=OFF`` and foreign-key enforcement off for the load (the
generator produces the runs, tiers and phases every event refers to, and the tests check the keys).
Into an empty events table, when the loader has the only connection to the file, the transaction runs
in a rollback journal and drops the secondary indexes, building them again after the rows; otherwise
it inserts with the indexes in place, in WAL mode (the WAL then holds every page the load writes until
the commit)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import _chain, _Loader, _sliced
from autopack_pipeline.storage.bulk.rows import (
    _EVENT_SPEC,
    _PHASE_SPEC,
    _chunk_columns,
    _run_table,
    _source_table,
    _sqlite_copy,
    _sqlite_insert,
    _text_timestamps,
    _tier_keys,
    _tier_table,
    run_id_for,
)
from autopack_pipeline.storage.columnar import prefetch
from autopack_pipeline.storage.handle import describe_database

# Page cache while SQLite rebuilds the indexes after a fresh load, which is also the size of the sorter's
# in-memory runs; 4 MiB was fastest here from 1M to 3M events (64 MiB: 25-35% slower).
SQLITE_INDEX_SORT_KIB = 4096

# Settings of the loader's own connection. The rows are copies of generated data, so a crash may lose
# them (synchronous=OFF); the keys are checked by the tests, not per row. A modest page cache: a large
# one only defers writing every new page to the commit, after paying to allocate it. Temporary files
# (not memory) let CREATE INDEX's sorter hand sorted runs to the worker threads; with
# temp_store=MEMORY it sorts everything at the end, on the one thread.
SQLITE_LOAD_PRAGMAS = ("PRAGMA synchronous=OFF", "PRAGMA foreign_keys=OFF", "PRAGMA cache_size=-65536",
                        "PRAGMA temp_store=FILE", "PRAGMA threads=2")


# Phases per piece of a chunk an append stages and copies at a time: the first copy starts sooner, and the
# staging of one piece overlaps the copy of the one before.
SQLITE_PIECE_PHASES = 10_000


class _Stages:
    """Two in-memory databases of this process that take turns holding a piece's rows on their way into
    the file: a helper thread fills one through its own connection (:meth:`fill`) while the load's
    connection, which has both attached, copies the previous piece from the other (:meth:`statement`)
    and then hands it back (:meth:`release`).

    They are shared-cache databases, the one way two connections see the same in-memory data. The load's
    connection reads them with ``read_uncommitted`` (no table locks), so its one long transaction never
    keeps the helper from emptying and filling a stage again; the tables exist before it first reads
    them and are never altered, so no schema lock is in the way either.
    """

    def __init__(self, driver: Any, widths: dict[str, int]) -> None:
        self.uris = [f"file:synth_stage_{uuid.uuid4().hex}?mode=memory&cache=shared" for _ in range(2)]
        self.error = driver.Error
        self.connections = [driver.connect(uri, autocommit=True) for uri in self.uris]
        self.cursors = [connection.cursor() for connection in self.connections]
        # Columns without a declared type keep every value as it was bound, as the direct INSERT did.
        for cursor in self.cursors:
            for table, width in widths.items():
                cursor.execute(f"CREATE TABLE {table} ({', '.join(f'p{i}' for i in range(width))})")
        self.free = [threading.Semaphore(1), threading.Semaphore(1)]
        self.stopped = threading.Event()
        self.next = 0

    @staticmethod
    def schema(slot: int) -> str:
        """The name stage ``slot`` is attached as."""
        return f"synth_stage_{slot}"

    def attach(self, cursor: Any) -> None:
        for slot, uri in enumerate(self.uris):
            cursor.execute(f"ATTACH '{uri}' AS {self.schema(slot)}")
        cursor.execute("PRAGMA read_uncommitted=1")

    def take(self) -> int:
        """The next stage, once the load's connection is done with it (helper thread)."""
        slot, self.next = self.next, 1 - self.next
        while not self.free[slot].acquire(timeout=0.05):
            if self.stopped.is_set():
                raise RuntimeError("the load stopped")
        return slot

    def fill(self, slot: int, tables: dict[str, pa.Table]) -> None:
        """Put ``tables`` (by name) in stage ``slot`` in place of what it held."""
        cursor = self.cursors[slot]
        for table, rows in tables.items():
            cursor.execute(f"DELETE FROM {table}")
            cursor.adbc_ingest(table, rows, mode="append")

    def release(self, slot: int) -> None:
        self.free[slot].release()

    def stop(self) -> None:
        self.stopped.set()

    def close(self, cursor: Any) -> None:
        for slot in range(len(self.uris)):
            with contextlib.suppress(self.error):  # not attached: the load failed before that
                cursor.execute(f"DETACH {self.schema(slot)}")
        for stage_cursor, connection in zip(self.cursors, self.connections):
            stage_cursor.close()
            connection.close()


class _SqliteLoader(_Loader):
    """Writes generated chunks into a SQLite file and counts what it wrote."""

    def load(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        path = _sqlite_path(engine)
        engine.dispose()  # our own pooled connections let go of the file while the loader has it
        probe = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            empty = probe.execute("SELECT 1 FROM token_estimation_v2_events LIMIT 1").fetchone() is None
            fresh = empty and _leave_wal(probe)
        finally:
            probe.close()
        # ADBC's SQLite driver binds whole Arrow columns in C: no Python object per value, where the
        # standard library's executemany converts and binds every value in Python. Transactions are
        # ours (autocommit on, explicit BEGIN/COMMIT), so the one-transaction load stays one.
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        connection = adbc_sqlite.connect(path, autocommit=True)
        cursor = connection.cursor()
        in_transaction = False
        stages: _Stages | None = None
        try:
            cursor.execute("PRAGMA busy_timeout=30000")
            for pragma in SQLITE_LOAD_PRAGMAS:
                cursor.execute(pragma)
            self.method = ("sqlite (ADBC): one transaction, secondary indexes rebuilt after the rows" if fresh
                           else "sqlite (ADBC): one transaction, indexes in place")
            cursor.execute("BEGIN")
            in_transaction = True
            chunks = iter(chunks)
            first = next(chunks)
            start_text = _text_timestamps(first.phases["started_us"][:1])[0]
            cursor.adbc_ingest("runs", _run_table(self.seed, self.run_id_text, start_text), mode="append")
            cursor.adbc_ingest("tiers", _tier_table(self.run_id_text, start_text), mode="append")
            # The seed's runs by their common prefix: run numbers of more than five digits do not sort
            # between the first and the last run id as text.
            prefix = run_id_for(self.seed, 0)[:-5]
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id >= ? AND run_id < ?",
                           (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
            tier_pk = _tier_keys(cursor.fetch_arrow_table(), self.run_id_text)
            indexes = []
            if fresh:
                cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                               "AND tbl_name IN ('phases', 'token_estimation_v2_events')")
                indexes = cursor.fetchall()
                for name, _sql in indexes:
                    cursor.execute(f'DROP INDEX "{name}"')

            # Appending, each piece's rows are first staged by a helper thread, with its own connections,
            # in one of two in-memory tables without indexes (ADBC's bulk ingest, in C), then copied into
            # the real tables by one INSERT ... SELECT each, as SQLite's own copy does: one statement
            # keeps its cursors on the table and every index open from row to row, where a prepared
            # INSERT executed per row opens them all again for each one (measured here, 100k events
            # appended to 1M: 1.06 CPU s staged and copied, 1.29 prepared, SQLite's own copy 1.07). The
            # staging of the next piece overlaps the copy of this one (two cores). Into an empty table,
            # whose secondary indexes are gone for the load, the prepared INSERTs bound to the Arrow
            # tables are cheaper than staging (10.9 against 11.8-12.2 CPU s per 1M here). Either way
            # constants are SQL literals and shared columns are bound or staged once.
            targets = {"phases": ("phases", _PHASE_SPEC), "events": ("token_estimation_v2_events", _EVENT_SPEC)}
            inserts = {name: _sqlite_insert(table, spec) for name, (table, spec) in targets.items()}
            copies = {name: [_sqlite_copy(table, spec, f"{_Stages.schema(slot)}.{name}")[0] for slot in (0, 1)]
                      for name, (table, spec) in targets.items()}
            sources = {name: insert[1] for name, insert in inserts.items()}
            if not fresh:
                stages = _Stages(adbc_sqlite, {name: len(columns) for name, columns in sources.items()})
                stages.attach(cursor)

            def build(piece: SynthChunk) -> dict[str, pa.Table]:
                phase_cols, event_cols = _chunk_columns(piece, self.run_id_text, tier_pk, self.seed)
                return {"phases": _source_table(phase_cols, sources["phases"]),
                        "events": _source_table(event_cols, sources["events"])}

            def prepare(piece: SynthChunk) -> dict[str, pa.Table] | int:
                """The piece's rows (fresh), or the stage now holding them (append)."""
                rows = self._timed("generate", lambda: build(piece))
                if stages is None:
                    return rows
                slot = stages.take()
                self._timed("stage", lambda: stages.fill(slot, rows))
                return slot

            # Appending, in pieces: the first copy starts sooner and the stages stay small. A fresh load
            # binds whole chunks, so the helper thread stays further ahead.
            rows = _chain(first, chunks)
            stream = prefetch(rows if stages is None else _sliced(rows, SQLITE_PIECE_PHASES), prepare)
            try:
                for piece, prepared in stream:
                    for name in ("phases", "events"):
                        if stages is None:
                            self._timed(name, lambda: cursor.executemany(inserts[name][0], prepared[name]))  # noqa: B023
                        else:
                            self._timed(name, lambda: cursor.execute(copies[name][prepared]))  # noqa: B023
                    if stages is not None:
                        stages.release(prepared)
                    self._written(piece)
            finally:
                if stages is not None:
                    stages.stop()
                stream.close()  # the helper thread has finished with the stages when this returns
            if indexes:
                # CREATE INDEX's sorter keeps runs of cache_size bytes in memory: small runs are sorted
                # and merged by the worker threads (PRAGMA threads) while this one scans the table.
                cursor.execute(f"PRAGMA cache_size=-{SQLITE_INDEX_SORT_KIB}")
            for _name, sql in indexes:
                self._timed("indexes", lambda: cursor.execute(sql))  # noqa: B023
            self._update_runs(cursor, text_timestamps=True)
            cursor.execute("COMMIT")
            in_transaction = False
        except BaseException:
            if in_transaction:
                cursor.execute("ROLLBACK")
            raise
        finally:
            if stages is not None:
                stages.close(cursor)
            try:
                cursor.execute("PRAGMA journal_mode=WAL")  # what make_engine's connections use
            except adbc_sqlite.Error:
                pass  # someone connected meanwhile; make_engine's connections switch it back to WAL
            finally:
                cursor.close()
                connection.close()


def _leave_wal(connection: sqlite3.Connection) -> bool:
    """Switch to a rollback journal for a one-transaction load; False if another connection is open.

    A rollback journal keeps the load crash-safe without the WAL holding a copy of every new page.
    SQLite refuses the switch ("database is locked", at once) while any other connection has the
    file open; the load then stays incremental, in WAL mode.
    """
    try:
        return connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    except sqlite3.OperationalError:
        return False


def _sqlite_path(engine: Engine) -> str:
    path = describe_database(engine).sqlite_path
    if path is None:
        raise ValueError("bulk loading needs a SQLite file, not an in-memory database")
    return path
