"""How the PostgreSQL loader opens its connections and learns what it must know before copying: whether
this role may turn the foreign-key triggers off, the Arrow types binary COPY needs for the loaded
tables' columns and the event ids' sequence. A synthetic load starts this in a helper thread while it
asks the database its own first questions (:class:`Opening`), so the connections are open, their
questions answered, by the time the loader needs them."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import adbc
from autopack_pipeline.storage.bulk.postgresql_steps import _may_skip_key_checks

# The Arrow type binary COPY needs for each PostgreSQL column type the loaded tables use.
_ARROW_TYPES = {
    "integer": pa.int32(), "bigint": pa.int64(), "smallint": pa.int16(), "boolean": pa.bool_(),
    "double precision": pa.float64(), "real": pa.float32(), "timestamp without time zone": pa.timestamp("us"),
    "character varying": pa.string(), "text": pa.string(),
}
_LOADED_TABLES = ("runs", "tiers", "phases", "token_estimation_v2_events")


@dataclass
class Opened:
    """A load's open connections (each in its transaction, with the load's settings) and what it asked."""

    connections: list
    skip_key_checks: bool  # this role may turn the foreign-key triggers off
    owns_tables: bool  # this role may drop and create the phases' and events' indexes (it owns them)
    types: dict[str, pa.Schema]  # per loaded table, its columns' Arrow types for binary COPY
    event_sequence: str  # the sequence the event ids come from


class Opening:
    """:func:`open_connections` running in a helper thread from :meth:`start` on. :meth:`opened` waits
    for what it found (from any thread); :meth:`take` hands its connections over (the caller closes
    them then), and :meth:`close` closes them when nobody took them."""

    def __init__(self) -> None:
        self._future: Future | None = None
        self._taken = False

    def start(self, engine: Engine) -> None:
        if self._future is None:
            opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-connect")
            self._future = opener.submit(open_connections, engine)
            opener.shutdown(wait=False)  # the thread ends with its one task

    def opened(self) -> Opened:
        assert self._future is not None, "start() first"
        return self._future.result()

    def take(self) -> Opened:
        opened = self.opened()
        self._taken = True
        return opened

    def close(self) -> None:
        if self._future is not None and not self._taken:
            self._taken = True
            if self._future.exception() is None:  # waits for it
                for connection in reversed(self._future.result().connections):
                    connection.close()


def open_connections(engine: Engine) -> Opened:
    """One connection, and a second when the role may turn the foreign-key triggers off (an append
    copies its events on it; a fresh load closes it again), both of one ADBC database: the driver opens
    a backend of its own when a database opens (to read the type catalogue, unless it knows the
    built-in types), not per connection, so a second connection costs one backend instead of two."""
    # The loader's columns are all of built-in types: the driver need not read the type catalogue.
    connections = [adbc.connect(engine, builtin_types=True)]
    try:
        with connections[0].cursor() as cursor:
            def scalar(query: str) -> Any:
                cursor.execute(query)
                return cursor.fetchone()[0]

            skip_key_checks = _may_skip_key_checks(scalar)
            event_sequence = scalar("SELECT pg_get_serial_sequence('token_estimation_v2_events', 'event_id')")
            # Only an owner (or a member of the owning role) may drop an index: a role granted no more than
            # inserting rows loads an empty database with the indexes in place, as an append does.
            owns_tables = bool(scalar(
                "SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class "
                "WHERE oid IN ('phases'::regclass, 'token_estimation_v2_events'::regclass)"))
            # pg_attribute rather than information_schema.columns: the same names and types, without
            # the view's privilege checks and joins (the first query of a backend fills its caches).
            cursor.execute(
                "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = current_schema()::regnamespace "
                f"AND c.relname IN {_LOADED_TABLES} AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY c.relname, a.attnum")
            columns = cursor.fetchall()
        if skip_key_checks:
            connections.append(connections[0].adbc_clone())
        for connection in connections:
            with connection.cursor() as cursor:
                pg_settings(cursor, skip_key_checks=skip_key_checks)
    except BaseException:
        for connection in reversed(connections):
            connection.close()
        raise
    types = {table: pa.schema([(name, _ARROW_TYPES[kind]) for owner, name, kind in columns
                               if owner == table and kind in _ARROW_TYPES]) for table in _LOADED_TABLES}
    return Opened(connections, skip_key_checks, owns_tables, types, event_sequence)


def pg_settings(cursor: Any, *, skip_key_checks: bool) -> None:
    """The load's settings, for the connection's current transaction."""
    # A crash may lose the last batches, which are copies of generated data anyway.
    cursor.execute("SET LOCAL synchronous_commit = off")
    if skip_key_checks:
        # The generator writes the runs, tiers and phases every event refers to (the tests check the
        # keys), as the SQLite load does with foreign_keys=OFF; this also saves a lookup per key and row.
        cursor.execute("SET LOCAL session_replication_role = replica")
