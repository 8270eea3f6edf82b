"""Which telemetry database a URL names: the one resolution rule, and the identity a person is shown.

Autopack's worst telemetry bug (pitfall P1) was database identity drift: an engine bound at import
time, relative SQLite paths resolved against different directories by different scripts, health
checks printing a hard-coded path. Here there is exactly one rule, applied when a command or asset
starts (never at import): the URL given (``Settings.resolved_database_url`` gives ``--database-url``,
else ``DATABASE_URL``), else ``sqlite:///autopack.db``, with a relative SQLite path turned into an
absolute one against the current working directory.

Nothing here connects, and a plain SQLite file URL (``sqlite:///PATH``, the embedded default) is
resolved without importing SQLAlchemy: its import is a seventh of a warm ``calibrate`` at a million
events, which on an up-to-date SQLite database needs no SQLAlchemy at all (``storage.handle``). Any
other URL is parsed by SQLAlchemy's ``make_url``; ``test_database_url`` checks both routes give the
same result for every plain SQLite URL it tries.

Secrets: :func:`resolve_database_url` returns the connectable URL (it has to carry the password to
be usable); the identity masks the password.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_DATABASE_URL = "sqlite:///autopack.db"

# In-memory SQLite names that must not be turned into file paths.
_SQLITE_MEMORY_NAMES = {"", ":memory:"}

# The drivers this product installs; any other URL is refused up front instead of failing on an import.
_SUPPORTED_DRIVERS = {"sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"}
_URL_EXAMPLES = "use sqlite:///FILE or postgresql://USER:PASSWORD@HOST:5432/DATABASE"

# A SQLite file named with no query: SQLAlchemy's make_url keeps such a database part verbatim (no
# unquoting), so the path is everything after the third slash.
_PLAIN_SQLITE_FILE = re.compile(r"(sqlite|sqlite\+pysqlite):///([^?]*)")


class UnsupportedDatabaseURL(ValueError):
    """``--database-url``/``DATABASE_URL`` names no database this product can use (never shows a password)."""


def _plain_sqlite_file(url: str) -> tuple[str, str] | None:
    """(driver name, database part) of a SQLite file URL without a query, else None (in-memory
    databases, ``file:`` URIs and anything else are SQLAlchemy's to parse)."""
    match = _PLAIN_SQLITE_FILE.fullmatch(url)
    if match is None or match[2] in _SQLITE_MEMORY_NAMES or match[2].startswith("file:"):
        return None
    return match[1], match[2]


def _absolute_sqlite_path(database: str) -> Path:
    """The file a SQLite URL's database part names: relative to the working directory, ``~`` expanded;
    ``resolve()`` also folds "..", so two spellings of one file give one identity."""
    path = Path(database).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return path.resolve()


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
    raw = (url or DEFAULT_DATABASE_URL).strip()
    plain = _plain_sqlite_file(raw)
    if plain is not None:
        driver, database = plain
        return f"{driver}:///{_absolute_sqlite_path(database)}"
    return _resolved_by_sqlalchemy(raw)


def _resolved_by_sqlalchemy(raw: str) -> str:
    """:func:`resolve_database_url` of any URL, parsed by SQLAlchemy."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(raw)
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
        parsed = parsed.set(database=str(_absolute_sqlite_path(parsed.database or "")))
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
    path = identify(resolve_database_url(url)).sqlite_path
    return None if path is None or Path(path).exists() else Path(path)


def require_existing_database(url: str) -> None:
    """Raise :class:`DatabaseNotFound` when ``url`` names a SQLite file that does not exist."""
    path = missing_sqlite_file(url)
    if path is not None:
        raise DatabaseNotFound(path)


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


def _sqlite_file_identity(url: str, database: str) -> DatabaseIdentity:
    path = Path(database).expanduser().resolve()
    return DatabaseIdentity(url=url, backend="sqlite", sqlite_path=str(path), sqlite_mtime=_latest_mtime(path))


def identity_of(url: URL) -> DatabaseIdentity:
    """The identity of a parsed URL (SQLAlchemy's): masked URL, backend, absolute SQLite file and its mtime."""
    backend = url.get_backend_name()
    masked = url.render_as_string(hide_password=True)
    if backend == "sqlite" and not _is_memory_sqlite(url):
        return _sqlite_file_identity(masked, url.database or "")
    return DatabaseIdentity(url=masked, backend=backend, sqlite_path=None, sqlite_mtime=None)


def identify(url: str) -> DatabaseIdentity:
    """:func:`identity_of` the URL ``url`` (resolved: :func:`resolve_database_url`), a plain SQLite
    file's without importing SQLAlchemy (its URL holds no password to mask)."""
    plain = _plain_sqlite_file(url)
    if plain is not None:
        return _sqlite_file_identity(url, plain[1])
    from sqlalchemy.engine import make_url

    return identity_of(make_url(url))
