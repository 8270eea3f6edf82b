"""Arrow-native connections to the telemetry database (ADBC), for moving whole columns at once.

SQLAlchemy hands rows to Python one value at a time, which is right for the writers and the rest of
the storage layer and far too slow for copying millions of events: the columnar store reads event
batches, and the bulk loader writes them, through ADBC instead. The SQLite and PostgreSQL drivers
(``adbc-driver-sqlite``, ``adbc-driver-postgresql``) exchange Arrow tables with the database in C,
so no Python object is made per value. Everything else keeps using SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

try:  # the drivers' own error class, so callers can tell a refused read from a bug
    from adbc_driver_manager import Error
except ImportError:  # pragma: no cover - the drivers are declared dependencies
    class Error(Exception):  # type: ignore[no-redef]
        """Stands in for adbc_driver_manager.Error when the drivers are missing."""


class AdbcUnavailable(RuntimeError):
    """No ADBC driver for this database (another backend, an in-memory SQLite, drivers not installed)."""


# The PostgreSQL driver's option that maps type ids from a table built into it instead of reading
# pg_type and pg_attribute when a database opens (three catalogue queries on a backend of its own,
# ~50 ms here); from driver 1.13 on. It knows PostgreSQL's own types, not composite or user-defined ones.
_PG_TYPE_RESOLVER_MODE = "adbc.postgresql.type_resolver_mode"
_PG_BUILTIN_TYPES_SINCE = (1, 13)


def connect(engine: Engine, *, builtin_types: bool = False) -> Any:
    """A DB-API connection of the ADBC driver for ``engine``'s database (close it, or use ``with``).

    ``builtin_types``: on PostgreSQL, the driver knows only the server's built-in types and opens
    without reading the type catalogue, where its version can (a writer of plain columns needs no
    more); other drivers and older versions ignore it."""
    backend = engine.dialect.name
    if backend == "sqlite":
        # Not for SQLite: adbc-driver-sqlite links its own copy of the SQLite library. Two copies in one
        # process share the file's POSIX locks, and closing a file in one drops the locks the other
        # holds (SQLite's "multiple copies of SQLite in one application" hazard): measured here, a
        # Dagster run that extracted through it and then stored tasks through sqlite3 lost those rows
        # and later reads failed with "disk I/O error". The CSV route reads through sqlite3 itself; a cold
        # extraction's child processes use the driver, each the only SQLite library of its process
        # (storage/columnar/sqlite_children.py).
        raise AdbcUnavailable("SQLite is read through the sqlite3 module: a second SQLite library in one "
                              "process would break the database's locks")
    if backend == "postgresql":
        try:
            import adbc_driver_postgresql.dbapi as driver
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise AdbcUnavailable(f"adbc-driver-postgresql is not installed ({exc})") from exc
        # libpq's URI: the same server, user, password and database, without SQLAlchemy's driver suffix.
        uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        if builtin_types and _version(driver) >= _PG_BUILTIN_TYPES_SINCE:
            return driver.connect(uri, db_kwargs={_PG_TYPE_RESOLVER_MODE: "builtin"})
        return driver.connect(uri)
    raise AdbcUnavailable(f"no ADBC driver for {backend}")


def _version(driver: Any) -> tuple[int, ...]:
    """The (major, minor) of the driver package a DB-API module belongs to; (0,) when unknown."""
    import importlib.metadata

    try:
        release = importlib.metadata.version(driver.__name__.split(".")[0].replace("_", "-"))
        return tuple(int(part) for part in release.split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0,)
