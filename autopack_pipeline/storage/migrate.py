"""Schema migrations of the telemetry database, driven from Python.

The Alembic environment ships inside the package (``storage/migrations``) and is configured here
without an ``alembic.ini``, so ``upgrade_database`` works from an installed wheel and from any
working directory. Commands and assets call :func:`prepare_database` before touching data: a brand-new
database is created at head, anything older is refused with a message saying to run
``autopack-telemetry db upgrade`` (so adopting someone's Autopack database is always a deliberate act).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from autopack_pipeline.storage.database import describe_database, make_engine
from autopack_pipeline.storage.models import TELEMETRY_TABLES

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


class SchemaTooNew(SchemaOutOfDate):
    """The database carries a revision this code does not know: a newer version migrated it."""

    def __init__(self, current: str | None, required: str, database: str) -> None:
        super().__init__(current, required, database)
        # Replace the message: running `db upgrade` cannot help here, upgrading the package can.
        self.args = (
            f"Telemetry database {database} is at schema revision {current}, which this version of "
            f"autopack_pipeline does not know (it needs {required}); a newer version migrated it. "
            "Upgrade autopack_pipeline, or point DATABASE_URL at another database.",
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


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise upgraders of one SQLite file across processes.

    The Dagster webserver, the daemon and run workers may all open a new database at once; SQLite
    has no advisory locks, and two ``CREATE TABLE alembic_version`` would collide. A lock file in the
    temp directory, named by a hash of the database path, keeps the database's folder clean.
    """
    path = describe_database(engine).sqlite_path  # None for PostgreSQL and in-memory SQLite
    if path is None:
        yield
        return
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"autopack-migrate-{digest}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_database(engine_or_url: Engine | str | None = None) -> str:
    """Bring the database to the head revision and return it; a no-op when it is already there.

    Accepts an engine, a URL, or ``None`` (the ``DATABASE_URL`` rule). Works on an empty database
    and on one Autopack created (tables and rows, no ``alembic_version``): its rows stay untouched.
    """
    owned = not isinstance(engine_or_url, Engine)
    engine = make_engine(engine_or_url) if owned else engine_or_url
    try:
        with _sqlite_migration_lock(engine):
            return _upgrade(engine)
    finally:
        if owned:
            engine.dispose()


def _upgrade(engine: Engine) -> str:
    with migration_connection(engine) as connection:
        command.upgrade(alembic_config(connection), "head")
    head = head_revision()
    logger.info("telemetry database %s is at schema revision %s", describe_database(engine).url, head)
    return head


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at :func:`head_revision`."""
    required = head_revision()
    current = current_revision(engine)
    if current != required:
        raise SchemaOutOfDate(current, required, describe_database(engine).url)


def known_revisions() -> set[str]:
    """Every revision shipped with this code."""
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def prepare_database(engine: Engine) -> str:
    """Make ``engine``'s database usable by a command or asset and return its revision (the head).

    - None of our tables (a new file, an empty PostgreSQL database): the schema is created at head,
      so the embedded default works with no set-up.
    - At head: nothing to do.
    - Anything else (an Autopack database that was never migrated, an older revision): raises
      :class:`SchemaOutOfDate` naming the database, its revision, the one needed and the upgrade
      command. Migrating someone else's database in place is left to an explicit ``db upgrade``.
    - A revision newer than this code knows: raises :class:`SchemaTooNew`.
    """
    head = head_revision()
    # Under the lock, another process's half-made schema is never mistaken for an old one.
    with _sqlite_migration_lock(engine):
        present = set(inspect(engine).get_table_names())
        if not present & (set(TELEMETRY_TABLES) | {"alembic_version"}):
            return _upgrade(engine)
        current = current_revision(engine)
    if current == head:
        return head
    database = describe_database(engine).url
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(current, head, database)
    raise SchemaOutOfDate(current, head, database)
