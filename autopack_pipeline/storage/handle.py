"""The telemetry database a command works on, SQLAlchemy's engine made only when something needs it.

A warm ``calibrate`` or ``metrics`` on an up-to-date SQLite file asks the database a dozen small
questions (is the schema current, is the columnar copy up to date) and reads everything else from the
copy's files. :class:`DatabaseHandle` answers those through the standard library
(``storage.catalog``), so such a command never imports SQLAlchemy, a seventh of its time; the first
thing that needs an engine (extracting new events, a PostgreSQL database, a schema to complete) makes
one. Code that holds an engine already passes it: :func:`as_handle` wraps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from autopack_pipeline.storage.catalog import EngineCatalog, SqliteFileCatalog
from autopack_pipeline.storage.database_url import DatabaseIdentity, identify, identity_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

Database = Union["Engine", "DatabaseHandle"]
"""What the reading functions take: an engine, or a handle that makes one when needed."""


class DatabaseHandle:
    """A telemetry database by its resolved URL (``storage.database_url.resolve_database_url``).

    ``url`` carries the password: show :attr:`identity` instead."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self._engine = engine

    @classmethod
    def of(cls, engine: Engine) -> DatabaseHandle:
        return cls(engine.url.render_as_string(hide_password=False), engine)

    @property
    def identity(self) -> DatabaseIdentity:
        """Masked URL, backend, SQLite file and its mtime now (no connection, no SQLAlchemy for a SQLite file)."""
        return identity_of(self._engine.url) if self._engine is not None else identify(self.url)

    @property
    def engine(self) -> Engine:
        """SQLAlchemy's engine for the database, made the first time it is asked for."""
        if self._engine is None:
            from autopack_pipeline.storage.database import make_engine

            self._engine = make_engine(self.url)
        return self._engine

    @property
    def has_engine(self) -> bool:
        return self._engine is not None

    def catalog(self) -> SqliteFileCatalog | EngineCatalog:
        """The database's catalog, for a ``with`` block: a SQLite file's through ``sqlite3`` while no engine
        is made (an engine's, an in-memory database's above all, is asked through the engine)."""
        if self._engine is None and self.identity.sqlite_path:
            return SqliteFileCatalog(self.identity.sqlite_path)
        return EngineCatalog(self.engine)

    def dispose(self) -> None:
        """Close the engine's pooled connections, if an engine was made."""
        if self._engine is not None:
            self._engine.dispose()


def as_handle(database: Database) -> DatabaseHandle:
    """``database`` as a handle (an engine wrapped, keeping its pool)."""
    return database if isinstance(database, DatabaseHandle) else DatabaseHandle.of(database)


def describe_database(database: Database) -> DatabaseIdentity:
    """Identity of ``database`` (an engine or a handle): masked URL, backend, absolute SQLite file and
    its mtime. Does not connect, so it also works (and says where it looked) when the database is
    unreachable."""
    if isinstance(database, DatabaseHandle):
        return database.identity
    return identity_of(database.url)
