"""What a database shows of itself: its tables, their columns, rows of a few small queries.

Opening a database checks its schema (``storage.schema_check``) and a read of the events first asks
whether the columnar copy is up to date (``storage.columnar.store``): a dozen small questions. A
SQLite file answers them through the standard library's ``sqlite3`` (:class:`SqliteFileCatalog`),
so a command that finds everything up to date never imports SQLAlchemy (a seventh of a warm
``calibrate`` at a million events); any other database answers through SQLAlchemy's inspector
(:class:`EngineCatalog`). Both give the same answers (``test_catalog``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a SQLite reader or writer waits for another's lock
EVENTS_TABLE = "token_estimation_v2_events"
_ANCHOR_COLUMNS = "run_id, phase_id, actual_output_tokens"


class Catalog(Protocol):
    def table_names(self) -> set[str]: ...
    def column_names(self, table: str) -> set[str]: ...
    def first_values(self, sql: str) -> list[Any]: ...
    def anchor(self, event_id: int) -> dict[str, Any] | None: ...


def max_event_id(catalog: Catalog) -> int:
    """The highest event id stored (0 for none)."""
    return int(catalog.first_values(f"SELECT max(event_id) FROM {EVENTS_TABLE}")[0] or 0)


def _anchor_of(event_id: int, row: Any) -> dict[str, Any] | None:
    """The identifying fields of one event row (run, phase, actual tokens), or None when there is no row."""
    if row is None:
        return None
    return {"event_id": event_id, "run_id": str(row[0]), "phase_id": str(row[1]),
            "actual_output_tokens": None if row[2] is None else int(row[2])}


class SqliteFileCatalog:
    """A SQLite file's catalog through ``sqlite3``, on one connection for the ``with`` block.

    The file is opened for reading and writing but never created (``mode=rw``: a file deleted
    meanwhile is an error, not a new empty database), with the busy timeout SQLAlchemy's connections
    get, so a writer's lock is waited for."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection = None

    def __enter__(self) -> SqliteFileCatalog:
        import sqlite3

        self._connection = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True,
                                           timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._connection.close()
        self._connection = None

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._connection.execute(sql, params).fetchall()

    def table_names(self) -> set[str]:
        # As SQLAlchemy's SQLite inspector lists them: SQLite's own tables left out.
        return {name for (name,) in self._rows("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not name.startswith("sqlite_")}

    def column_names(self, table: str) -> set[str]:
        quoted = table.replace('"', '""')
        # As SQLAlchemy's inspector lists them: a virtual table's hidden columns (hidden = 1) left out.
        return {row[1] for row in self._rows(f'PRAGMA main.table_xinfo("{quoted}")') if row[6] != 1}

    def first_values(self, sql: str) -> list[Any]:
        return [row[0] for row in self._rows(sql)]

    def anchor(self, event_id: int) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT {_ANCHOR_COLUMNS} FROM {EVENTS_TABLE} WHERE event_id = ?", (event_id,))
        return _anchor_of(event_id, rows[0] if rows else None)


class EngineCatalog:
    """Any database's catalog through SQLAlchemy's inspector, on one connection for the ``with`` block."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._inspector = None

    def __enter__(self) -> EngineCatalog:
        from sqlalchemy import inspect

        self._connection = self.engine.connect()
        self._inspector = inspect(self._connection)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._connection.close()
        self._connection = self._inspector = None

    def table_names(self) -> set[str]:
        return set(self._inspector.get_table_names())

    def column_names(self, table: str) -> set[str]:
        return {column["name"] for column in self._inspector.get_columns(table)}

    def first_values(self, sql: str) -> list[Any]:
        from sqlalchemy import text

        return list(self._connection.execute(text(sql)).scalars())

    def anchor(self, event_id: int) -> dict[str, Any] | None:
        from sqlalchemy import text

        row = self._connection.execute(
            text(f"SELECT {_ANCHOR_COLUMNS} FROM {EVENTS_TABLE} WHERE event_id = :id"), {"id": event_id}).first()
        return _anchor_of(event_id, row)
