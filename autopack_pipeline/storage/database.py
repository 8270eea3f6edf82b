"""How we connect to the telemetry database: SQLAlchemy's engine with the settings each backend needs.

Which database a URL names, and the identity a person is shown, are ``storage.database_url``'s (no
SQLAlchemy there); they are re-exported here for the code that connects. Also here, because they are
about dialect differences rather than any one table: a log-safe error description and an
insert-unless-present helper shared by the writers.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, create_engine, event, exists, func, insert, select, text, tuple_
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.sql.elements import TextClause

from autopack_pipeline.storage.catalog import SQLITE_BUSY_TIMEOUT_MS
from autopack_pipeline.storage.database_url import (
    DEFAULT_DATABASE_URL,
    DatabaseIdentity,
    DatabaseNotFound,
    UnsupportedDatabaseURL,
    missing_sqlite_file,
    require_existing_database,
    resolve_database_url,
)

__all__ = [
    "DEFAULT_DATABASE_URL", "SQLITE_BUSY_TIMEOUT_MS", "DatabaseIdentity", "DatabaseNotFound", "UnsupportedDatabaseURL",
    "in_chunks", "insert_ignoring_conflicts", "insert_many_ignoring_conflicts", "insert_unless_exists", "make_engine",
    "missing_sqlite_file", "require_existing_database", "resolve_database_url", "safe_error_text",
]

logger = logging.getLogger(__name__)

_IN_LIST_VALUES = 500  # values per IN list (in_chunks)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; SQLite forgets them when a connection closes.

    WAL lets the Dagster webserver read while a collection run writes; the busy timeout makes a
    writer wait for a lock instead of failing with "database is locked"; foreign keys are off by
    default in SQLite, and Autopack's cascades (run -> phases -> events) depend on them.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(url: str | None = None) -> Engine:
    """Create an engine for :func:`resolve_database_url` ``(url)`` with the settings each backend needs."""
    resolved = make_url(resolve_database_url(url))
    backend = resolved.get_backend_name()
    # hide_parameters keeps bound values (event payloads) out of exception messages we log.
    if backend == "sqlite":
        engine = create_engine(resolved, hide_parameters=True)
        event.listen(engine, "connect", _configure_sqlite_connection)
    else:
        # pool_pre_ping: a long-lived Dagster process outlives server restarts and idle timeouts.
        engine = create_engine(resolved, pool_pre_ping=True, hide_parameters=True)
    logger.debug("telemetry database engine created for %s", engine.url.render_as_string(hide_password=True))
    return engine


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)


def safe_error_text(exc: BaseException) -> str:
    """A one-line description of ``exc`` that is safe to log.

    Uses the driver's own exception when SQLAlchemy wrapped one (its message is the useful part and
    carries no SQL parameters), keeps only the first line, and masks any ``user:password@`` that a
    connection error might echo (URL or ``password=`` DSN form).
    """
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    first = lines[0][:300] if lines else ""
    first = _DSN_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", first))
    return f"{type(inner).__name__}: {first}"


def insert_ignoring_conflicts(
    connection: Connection, table: Table, values: Mapping[str, object], conflict_columns: Sequence[str]
) -> int:
    """Insert one row unless a row with the same ``conflict_columns`` exists; return rows inserted (0/1).

    Uses ``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL, so two writers racing on
    the same key cannot both insert or fail; other backends get a check-then-insert.
    """
    if connection.dialect.name not in ("postgresql", "sqlite"):
        return insert_unless_exists(connection, table, values, conflict_columns)
    row = _with_python_defaults(table, values)
    if row is None:  # a default only SQLAlchemy's own insert computes
        return _inserted(connection, _conflict_free_insert(connection, table, conflict_columns).values(**values))
    statement = _one_row_conflict_free_insert(connection.dialect, table, tuple(row), tuple(conflict_columns))
    return max(connection.execute(statement, row).rowcount, 0)


def _with_python_defaults(table: Table, values: Mapping[str, object]) -> dict[str, object] | None:
    """``values`` with the Python-side default of each column they leave out, as SQLAlchemy's insert adds
    them (a constant, or a function of nothing); None when a column left out has another kind of default
    (a function of the execution context, a sequence, a SQL expression)."""
    row = dict(values)
    for column in table.columns:
        default = column.default
        if default is None or column.name in row:
            continue
        if default.is_scalar:
            row[column.name] = default.arg
        elif default.is_callable and hasattr(default.arg, "__wrapped__"):
            # SQLAlchemy's wrapper of a function that takes no argument (one that takes the execution
            # context is not wrapped, and is left to SQLAlchemy's insert).
            row[column.name] = default.arg(None)
        else:
            return None
    return row


@functools.lru_cache(maxsize=32)
def _one_row_conflict_free_insert(dialect: Dialect, table: Table, columns: tuple[str, ...],
                                  conflict_columns: tuple[str, ...]) -> TextClause:
    """``INSERT ... ON CONFLICT (conflict_columns) DO NOTHING`` of one row of ``columns``, as text with typed
    parameters (each column's own type still converts its value). SQLAlchemy 2.0 caches no compiled form of
    its dialects' on-conflict inserts (they have no cache key), so each row's statement was built and
    compiled anew: recording a Builder call's event took 3.5-3.9 ms of CPU here, 0.7-0.85 ms as text compiled
    once. Without RETURNING, the driver's row count is exact on both backends (0 or 1)."""
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
           f"({', '.join(quote(name) for name in columns)}) VALUES ({', '.join(f':{name}' for name in columns)}) "
           f"ON CONFLICT ({', '.join(quote(name) for name in conflict_columns)}) DO NOTHING")
    return text(sql).bindparams(*(bindparam(name, type_=table.c[name].type) for name in columns))


def insert_many_ignoring_conflicts(
    connection: Connection, table: Table, rows: Sequence[Mapping[str, object]], conflict_columns: Sequence[str]
) -> int:
    """:func:`insert_ignoring_conflicts` of every row of ``rows`` (all with the same keys), as one executemany
    on SQLite and PostgreSQL; return rows inserted."""
    if not rows:
        return 0
    statement = _conflict_free_insert(connection, table, conflict_columns)
    if statement is None:
        return sum(insert_unless_exists(connection, table, row, conflict_columns) for row in rows)
    if connection.dialect.name == "postgresql" and not connection.in_nested_transaction():
        # psycopg parses the text of a multi-row INSERT (what RETURNING makes of an executemany) anew each
        # time: 16,500 placeholders for 500 events, 0.2 ms a row. Its own executemany of the one-row
        # statement is pipelined and parsed once, 8x faster; the rows this transaction inserted are then
        # counted by their xmin (a savepoint's rows would carry its own transaction id: not here).
        connection.execute(statement, list(rows))
        return _inserted_by_this_transaction(connection, table, rows, conflict_columns)
    return _inserted(connection, statement, list(rows))


def _inserted_by_this_transaction(connection: Connection, table: Table, rows: Sequence[Mapping[str, object]],
                                  conflict_columns: Sequence[str]) -> int:
    """How many of ``rows`` (by their ``conflict_columns``) PostgreSQL holds as written by this transaction."""
    key = tuple_(*(table.c[name] for name in conflict_columns))
    keys = [tuple(row[name] for name in conflict_columns) for row in rows]
    return sum(connection.execute(select(func.count()).select_from(table).where(
        key.in_(chunk), text("xmin = pg_current_xact_id()::xid"))).scalar_one() for chunk in in_chunks(keys))


def in_chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    """``values`` in lists short enough for one ``IN (...)`` each: well under SQLite's limit of bound
    parameters (32,766 since 3.32, 999 before)."""
    for start in range(0, len(values), _IN_LIST_VALUES):
        yield list(values[start:start + _IN_LIST_VALUES])


def _conflict_free_insert(connection: Connection, table: Table, conflict_columns: Sequence[str]):
    """``INSERT ... ON CONFLICT (conflict_columns) DO NOTHING`` into ``table`` on SQLite and PostgreSQL; else None."""
    name = connection.dialect.name
    if name not in ("postgresql", "sqlite"):
        return None
    # Each dialect's insert where it is used: importing PostgreSQL's dialect cost a SQLite
    # command (every `calibrate`) three hundredths of a second at start.
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as builder
    else:
        from sqlalchemy.dialects.sqlite import insert as builder
    return builder(table).on_conflict_do_nothing(index_elements=list(conflict_columns))


def _inserted(connection: Connection, statement, rows: list | None = None) -> int:
    """Run a conflict-free insert (with ``rows`` as its executemany parameters) and count the rows it inserted."""
    if connection.dialect.insert_returning:
        # rowcount is unreliable here: SQLAlchemy adds an implicit RETURNING on PostgreSQL and
        # psycopg then reports -1. Counting the returned keys is exact on both backends.
        return len(connection.execute(statement.returning(*statement.table.primary_key.columns), rows).all())
    return max(connection.execute(statement, rows).rowcount, 0)


def insert_unless_exists(
    connection: Connection, table: Table, values: Mapping[str, object], key_columns: Sequence[str]
) -> int:
    """Check-then-insert on ``key_columns`` (no unique index needed); return rows inserted (0/1).

    Not safe against a concurrent writer of the same key: callers serialise, or accept a duplicate.
    """
    match = [table.c[column] == values[column] for column in key_columns]
    if connection.execute(select(exists().where(*match))).scalar():
        return 0
    connection.execute(insert(table).values(**values))
    return 1
