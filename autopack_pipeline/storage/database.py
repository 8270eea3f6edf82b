"""Which telemetry database we talk to, and how we connect to it.

Autopack's worst telemetry bug (pitfall P1) was database identity drift: an engine bound at import
time, relative SQLite paths resolved against different directories by different scripts, health
checks printing a hard-coded path. Here there is exactly one rule, applied when a command or asset
starts (never at import): the URL given (``Settings.resolved_database_url`` gives ``--database-url``,
else ``DATABASE_URL``), else ``sqlite:///autopack.db``, with a relative SQLite path turned into an
absolute one against the current working directory.

Secrets: :func:`resolve_database_url` returns the connectable URL (it has to carry the password to
be usable); everything else in this module that returns or logs a URL masks the password.

Also here, because they are about dialect differences rather than any one table: a log-safe error
description and an insert-unless-present helper shared by the writers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, exists, insert, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

logger = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///autopack.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# In-memory SQLite names that must not be turned into file paths.
_SQLITE_MEMORY_NAMES = {"", ":memory:"}


# The drivers this product installs; any other URL is refused up front instead of failing on an import.
_SUPPORTED_DRIVERS = {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}
_URL_EXAMPLES = "use sqlite:///FILE or postgresql://USER:PASSWORD@HOST:5432/DATABASE"


class UnsupportedDatabaseURL(ValueError):
    """``--database-url``/``DATABASE_URL`` names no database this product can use (never shows a password)."""


def _is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return database in _SQLITE_MEMORY_NAMES or database.startswith("file::memory:")


def resolve_database_url(url: str | None = None) -> str:
    """Return the one database URL every command and asset must use.

    ``url``, else ``sqlite:///autopack.db`` (the environment's ``DATABASE_URL`` is the settings'
    to add: :meth:`autopack_pipeline.settings.StorageSettings.resolved_database_url`). A relative SQLite path is resolved against the current working
    directory, so the result names an absolute file and means the same thing from any process.
    ``postgresql://`` (and the older ``postgres://``) select the psycopg 3 driver, which is the
    one installed.
    """
    raw = url or DEFAULT_DATABASE_URL
    try:
        parsed = make_url(raw.strip())
    except ArgumentError:  # the text is not shown: it may hold a password
        raise UnsupportedDatabaseURL(f"the telemetry database URL is not a URL; {_URL_EXAMPLES}") from None
    if parsed.drivername not in _SUPPORTED_DRIVERS:
        raise UnsupportedDatabaseURL(
            f"unsupported database URL scheme {parsed.drivername!r} in "
            f"{parsed.render_as_string(hide_password=True)}; {_URL_EXAMPLES}"
        )
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres") and parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite" and not _is_memory_sqlite(parsed):
        path = Path(parsed.database or "").expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        # resolve() also folds "..", so two spellings of one file give one identity.
        parsed = parsed.set(database=str(path.resolve()))
    return parsed.render_as_string(hide_password=False)


class DatabaseNotFound(RuntimeError):
    """A command that only reads was pointed at a SQLite file that does not exist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"no telemetry database at {path}: the file does not exist, and this command only reads, so it "
            "created nothing. Choose the database with --database-url URL or the DATABASE_URL environment "
            "variable (default sqlite:///autopack.db in the working directory); `collect`, `import` and "
            "`db upgrade` create a new one."
        )


def missing_sqlite_file(url: str) -> Path | None:
    """The absolute file ``url`` names when it is a SQLite file that does not exist, else None.

    Opening such a URL would make SQLite create an empty database there, which then reports "empty"
    instead of "wrong path" (the identity confusion of Autopack's pitfall P1). PostgreSQL and
    in-memory SQLite have no file and give None. Does not connect.
    """
    parsed = make_url(resolve_database_url(url))
    if parsed.get_backend_name() != "sqlite" or _is_memory_sqlite(parsed):
        return None
    path = Path(parsed.database or "")
    return None if path.exists() else path


def require_existing_database(url: str) -> None:
    """Raise :class:`DatabaseNotFound` when ``url`` names a SQLite file that does not exist."""
    path = missing_sqlite_file(url)
    if path is not None:
        raise DatabaseNotFound(path)


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


@dataclass(frozen=True)
class DatabaseIdentity:
    """What a person needs to know which database a command touched. Never holds a password."""

    url: str
    backend: str
    sqlite_path: str | None
    sqlite_mtime: str | None

    def to_dict(self) -> dict[str, str | None]:
        """Plain, JSON-serialisable form."""
        return asdict(self)

    def banner(self) -> str:
        """One line for logs and reports."""
        if self.sqlite_path:
            mtime = self.sqlite_mtime or "not created yet"
            return f"telemetry DB: {self.url} (file {self.sqlite_path}, modified {mtime})"
        return f"telemetry DB: {self.url} ({self.backend})"


def _latest_mtime(path: Path) -> str | None:
    """Last modification of the database, counting its WAL file.

    In WAL mode recent commits live in ``<db>-wal`` until a checkpoint, so the main file's mtime
    alone can say "hours ago" for a database written a second ago.
    """
    stamps = [p.stat().st_mtime for p in (path, Path(f"{path}-wal")) if p.exists()]
    if not stamps:
        return None
    return datetime.fromtimestamp(max(stamps), tz=timezone.utc).isoformat()


def describe_database(engine: Engine) -> DatabaseIdentity:
    """Identity of ``engine``'s database: masked URL, backend, absolute SQLite file and its mtime.

    Does not connect, so it also works (and says where it looked) when the database is unreachable.
    """
    url = engine.url
    backend = url.get_backend_name()
    sqlite_path: str | None = None
    sqlite_mtime: str | None = None
    if backend == "sqlite" and not _is_memory_sqlite(url):
        path = Path(url.database or "").expanduser().resolve()
        sqlite_path = str(path)
        sqlite_mtime = _latest_mtime(path)
    return DatabaseIdentity(
        url=url.render_as_string(hide_password=True),
        backend=backend,
        sqlite_path=sqlite_path,
        sqlite_mtime=sqlite_mtime,
    )


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
    name = connection.dialect.name
    if name in ("postgresql", "sqlite"):
        # Each dialect's insert where it is used: importing PostgreSQL's dialect cost a SQLite
        # command (every `calibrate`) three hundredths of a second at start.
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as builder
        else:
            from sqlalchemy.dialects.sqlite import insert as builder
        statement = builder(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict_columns))
        if connection.dialect.insert_returning:
            # rowcount is unreliable here: SQLAlchemy adds an implicit RETURNING on PostgreSQL and
            # psycopg then reports -1. Counting the returned keys is exact on both backends.
            returned = connection.execute(statement.returning(*table.primary_key.columns)).all()
            return len(returned)
        return max(connection.execute(statement).rowcount, 0)
    return insert_unless_exists(connection, table, values, conflict_columns)


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
