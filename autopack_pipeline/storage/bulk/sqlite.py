"""The SQLite bulk loader: Arrow tables ingested through ADBC's SQLite driver in one transaction, so a
failure leaves nothing, with ``synchronous=OFF`` and foreign-key enforcement off for the load (the
generator produces the runs, tiers and phases every event refers to, and the tests check the keys).
Into an empty events table, when the loader has the only connection to the file, the transaction runs
in a rollback journal and drops the secondary indexes, building them again after the rows; otherwise
it inserts with the indexes in place, in WAL mode (the WAL then holds every page the load writes until
the commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pyarrow as pa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import _chain, _Loader
from autopack_pipeline.storage.bulk.rows import (
    _EVENT_SPEC,
    _PHASE_SPEC,
    _RUN_COLUMNS,
    _TIER_COLUMNS,
    _chunk_columns,
    _row_table,
    _run_rows,
    _source_table,
    _sqlite_copy,
    _text_timestamps,
    _tier_keys,
    _tier_rows,
    run_id_for,
)
from autopack_pipeline.storage.columnar import prefetch
from autopack_pipeline.storage.database import describe_database

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


# The temporary tables a chunk's rows pass through (the connection's own; gone with it).
_STAGE_PHASES, _STAGE_EVENTS = "synth_stage_phases", "synth_stage_events"


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
            cursor.adbc_ingest("runs", _row_table(_RUN_COLUMNS, _run_rows(self.seed, self.runs, start_text)),
                               mode="append")
            cursor.adbc_ingest("tiers", _row_table(_TIER_COLUMNS, _tier_rows(self.run_ids.tolist(), start_text)),
                               mode="append")
            # The seed's runs by their common prefix: run numbers of more than five digits do not sort
            # between the first and the last run id as text.
            prefix = run_id_for(self.seed, 0)[:-5]
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id >= ? AND run_id < ?",
                           (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
            tier_pk = _tier_keys(cursor.fetchall(), self.run_ids)
            indexes = []
            if fresh:
                cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                               "AND tbl_name IN ('phases', 'token_estimation_v2_events')")
                indexes = cursor.fetchall()
                for name, _sql in indexes:
                    cursor.execute(f'DROP INDEX "{name}"')

            # Each chunk's rows go first into a temporary table without indexes (ADBC's bulk ingest, in C),
            # then into the real table by one INSERT ... SELECT, as SQLite's own copy does: one statement
            # keeps its cursors on the table and every index open from row to row, where a prepared
            # INSERT executed per row opens them all again for each one (measured here, 100k events
            # appended to 1M: 1.06 against 1.29 CPU s, SQLite's own copy 1.07). Constants are literals,
            # shared columns staged once.
            insert_phases, phase_sources = _sqlite_copy("phases", _PHASE_SPEC, _STAGE_PHASES)
            insert_events, event_sources = _sqlite_copy("token_estimation_v2_events", _EVENT_SPEC, _STAGE_EVENTS)
            staged = False

            def copy(stage: str, rows: pa.Table, insert: str) -> None:
                cursor.adbc_ingest(stage, rows, mode="append" if staged else "create", temporary=True)
                cursor.execute(insert)
                cursor.execute(f"DELETE FROM temp.{stage}")

            def tables(chunk: SynthChunk) -> tuple[pa.Table, pa.Table]:
                def build() -> tuple[pa.Table, pa.Table]:
                    phase_cols, event_cols = _chunk_columns(chunk, self.run_id_text, tier_pk, self.seed)
                    return _source_table(phase_cols, phase_sources), _source_table(event_cols, event_sources)

                return self._timed("generate", build)

            for chunk, (phase_rows, event_rows) in prefetch(_chain(first, chunks), tables):
                self._timed("phases", lambda: copy(_STAGE_PHASES, phase_rows, insert_phases))  # noqa: B023
                self._timed("events", lambda: copy(_STAGE_EVENTS, event_rows, insert_events))  # noqa: B023
                staged = True
                self._written(chunk)
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
