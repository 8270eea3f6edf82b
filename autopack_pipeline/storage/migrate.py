"""Schema migrations of the telemetry database, driven from Python.

The Alembic environment ships inside the package (``storage/migrations``) and is configured here
without an ``alembic.ini``, so ``upgrade_database`` works from an installed wheel and from any
working directory. Commands and assets call :func:`require_current_schema` before touching data, and
a person runs ``autopack-telemetry db upgrade`` when it says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from autopack_pipeline.storage.database import describe_database, make_engine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_COMMAND = "autopack-telemetry db upgrade"
# Arbitrary constant naming our advisory lock; two processes (say the Dagster daemon and the
# webserver) starting together must not both run the same DDL.
_PG_MIGRATION_LOCK_KEY = 0x4150_4B54


class SchemaOutOfDate(RuntimeError):
    """The telemetry database is not at the schema revision this code needs."""

    def __init__(self, current: str | None, required: str, database: str) -> None:
        self.current = current
        self.required = required
        self.database = database
        self.command = UPGRADE_COMMAND
        at = current if current is not None else "no revision (never migrated, e.g. written by Autopack)"
        super().__init__(
            f"Telemetry database {database} is at schema revision {at}; this version of "
            f"autopack_pipeline needs revision {required}. Run: {UPGRADE_COMMAND}"
        )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the packaged environment, optionally bound to ``connection``.

    Also the entry point for developers: ``alembic.command.revision(alembic_config(), "msg",
    autogenerate=True)`` writes a new revision file next to the others.
    """
    config = Config()
    # ConfigParser interpolates "%", which may occur in a checkout path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # only possible with a broken installation (no revision files)
        raise RuntimeError(f"no migration revisions found under {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or ``None`` when it has no ``alembic_version`` table."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction, prepared for running migrations.

    SQLite: batch operations may rebuild a table (copy, DROP, rename). With foreign keys enforced,
    dropping a parent table would cascade-delete its children's rows, so enforcement is switched off
    for the migration and restored afterwards. The PRAGMA only works outside a transaction, hence
    before ``begin``. PostgreSQL: an advisory lock serialises concurrent upgraders.
    """
    with engine.connect() as connection:
        is_sqlite = connection.dialect.name == "sqlite"
        previous_fk = None
        if is_sqlite:
            previous_fk = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
                yield connection
        finally:
            if is_sqlite:
                connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if previous_fk else 'OFF'}")
                connection.commit()


def upgrade_database(engine_or_url: Engine | str | None = None) -> str:
    """Bring the database to the head revision and return it; a no-op when it is already there.

    Accepts an engine, a URL, or ``None`` (the ``DATABASE_URL`` rule). Works on an empty database
    and on one Autopack created (tables and rows, no ``alembic_version``): its rows stay untouched.
    """
    owned = not isinstance(engine_or_url, Engine)
    engine = make_engine(engine_or_url) if owned else engine_or_url
    try:
        with migration_connection(engine) as connection:
            command.upgrade(alembic_config(connection), "head")
        head = head_revision()
        logger.info("telemetry database %s is at schema revision %s", describe_database(engine).url, head)
        return head
    finally:
        if owned:
            engine.dispose()


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at :func:`head_revision`."""
    required = head_revision()
    current = current_revision(engine)
    if current != required:
        raise SchemaOutOfDate(current, required, describe_database(engine).url)
