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

from autopack_pipeline.storage.database import describe_database

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
        path = describe_database(engine).sqlite_path
        if not path:
            raise AdbcUnavailable("an in-memory SQLite database is not shared with another driver")
        try:
            import adbc_driver_sqlite.dbapi as driver
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise AdbcUnavailable(f"adbc-driver-sqlite is not installed ({exc})") from exc
        return driver.connect(path)
    if backend == "postgresql":
        try:
            import adbc_driver_postgresql.dbapi as driver
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise AdbcUnavailable(f"adbc-driver-postgresql is not installed ({exc})") from exc
        # libpq's URI: the same server, user, password and database, without SQLAlchemy's driver suffix.
        return driver.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    raise AdbcUnavailable(f"no ADBC driver for {backend}")
