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


def connect(engine: Engine) -> Any:
    """A DB-API connection of the ADBC driver for ``engine``'s database (close it, or use ``with``)."""
    backend = engine.dialect.name
    if backend == "sqlite":
        # Not for SQLite: adbc-driver-sqlite links its own copy of the SQLite library. Two copies in one
        # process share the file's POSIX locks, and closing a file in one drops the locks the other
        # holds (SQLite's "multiple copies of SQLite in one application" hazard): measured here, a
        # Dagster run that extracted through it and then stored tasks through sqlite3 lost those rows
        # and later reads failed with "disk I/O error". The CSV route reads through sqlite3 itself.
        raise AdbcUnavailable("SQLite is read through the sqlite3 module: a second SQLite library in one "
                              "process would break the database's locks")
    if backend == "postgresql":
        try:
            import adbc_driver_postgresql.dbapi as driver
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise AdbcUnavailable(f"adbc-driver-postgresql is not installed ({exc})") from exc
        # libpq's URI: the same server, user, password and database, without SQLAlchemy's driver suffix.
        return driver.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    raise AdbcUnavailable(f"no ADBC driver for {backend}")
