"""Schema migrations of the telemetry database, driven from Python.

The Alembic environment ships inside the package (``storage/migrations``) and is configured here
without an ``alembic.ini``, so ``upgrade_database`` works from an installed wheel and from any
working directory. Commands and assets call :func:`prepare_database` before touching data: a brand-new
database is created at head, anything older is refused with a message saying to run
``autopack-telemetry db upgrade`` (so adopting someone's Autopack database is always a deliberate act).

"Current" means the head revision *and* every table and column of the models: the revision stamp
alone is not trusted, because an older ``db upgrade`` stamped Autopack's databases without adding
some of Autopack's columns. ``db upgrade`` adds whatever is missing, also at head.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, false, inspect, text, true
from sqlalchemy.engine import Connection, Engine

from autopack_pipeline.storage.catalog import EngineCatalog
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.handle import describe_database
from autopack_pipeline.storage.model_columns import TELEMETRY_TABLES
from autopack_pipeline.storage.schema_check import (
    HEAD_REVISION,
    VERSION_TABLE,
    missing_columns_of,
    read_schema,
    schema_gaps_of,
)

if TYPE_CHECKING:  # Alembic loads where a migration runs or its scripts are read, not for every command
    from alembic.config import Config
    from alembic.operations import Operations

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


class SchemaIncomplete(SchemaOutOfDate):
    """The database is stamped at the head revision but lacks tables or columns the models have."""

    def __init__(self, current: str, database: str, gaps: list[str]) -> None:
        super().__init__(current, current, database)
        self.gaps = gaps
        self.args = (
            f"Telemetry database {database} is at schema revision {current} but lacks {', '.join(gaps)}. "
            f"Run: {UPGRADE_COMMAND} (it adds them and keeps every row)",
        )


def missing_columns(engine: Engine) -> dict[str, list[str]]:
    """Columns of the models that the database's telemetry tables lack, by table (read from the live
    tables, never from the revision stamp; absent tables are :func:`schema_gaps`' finding)."""
    with EngineCatalog(engine) as catalog:
        return missing_columns_of(catalog)


def schema_gaps(engine: Engine) -> list[str]:
    """What the database lacks of the models, as ``table NAME`` and ``TABLE.COLUMN`` items."""
    with EngineCatalog(engine) as catalog:
        return schema_gaps_of(catalog)


def add_missing_columns(operations: Operations, wanted: Mapping[str, Sequence[Column]]) -> dict[str, list[str]]:
    """Add to each existing table of ``wanted`` the columns it lacks; return what was added.

    Idempotent: it compares with the live columns, so a column already there (added by Autopack, a
    person, or an earlier run) is left alone. A NOT NULL column keeps NOT NULL only with a server
    default, which is also the value every existing row gets; without one it is added nullable,
    because a table with rows cannot take a NOT NULL column that has no value, and Autopack's
    readers only need the column to exist (its writer always fills it).
    """
    inspector = inspect(operations.get_bind())
    present_tables = set(inspector.get_table_names())
    added: dict[str, list[str]] = {}
    for table, columns in wanted.items():
        if table not in present_tables:
            continue
        live = {column["name"] for column in inspector.get_columns(table)}
        missing = [column for column in columns if column.name not in live]
        if not missing:
            continue
        # Batch mode: a plain ALTER TABLE ADD COLUMN on both backends (SQLite rebuilds nothing for it).
        with operations.batch_alter_table(table) as batch:
            for column in missing:
                default = column.server_default.arg if column.server_default is not None else None
                batch.add_column(Column(column.name, column.type, nullable=column.nullable or default is None,
                                        server_default=default))
        added[table] = [column.name for column in missing]
    return added


def _server_default_of(column: Column) -> Any:
    """The server default for adding ``column`` to a table with rows: its scalar Python default, if any."""
    if column.nullable or column.default is None or not column.default.is_scalar:
        return None
    value = column.default.arg
    if isinstance(value, bool):
        return true() if value else false()
    return str(value)


def _repair_to_models(connection: Connection) -> None:
    """Create the telemetry tables and add the columns a database at head still lacks.

    Revisions add what their author knew was missing; a database stamped by an older ``db upgrade``
    (or altered by hand) can still lack something, so after the revisions run the live schema is
    compared with the models and completed. New columns never carry foreign keys or indexes: they
    are only needed to exist for Autopack's ORM and our writers.
    """
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    from autopack_pipeline.storage.models import Base

    present = set(inspect(connection).get_table_names())
    absent = [Base.metadata.tables[name] for name in TELEMETRY_TABLES if name not in present]
    if absent:
        Base.metadata.create_all(connection, tables=absent)
        logger.warning("created missing telemetry tables: %s", ", ".join(table.name for table in absent))
    wanted = {
        name: [Column(column.name, column.type, nullable=column.nullable, server_default=_server_default_of(column))
               for column in Base.metadata.tables[name].columns]
        for name in TELEMETRY_TABLES
    }
    added = add_missing_columns(Operations(MigrationContext.configure(connection)), wanted)
    for table, columns in added.items():
        logger.warning("added missing columns to %s: %s", table, ", ".join(columns))


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the packaged environment, optionally bound to ``connection``.

    Also the entry point for developers: ``alembic.command.revision(alembic_config(), "msg",
    autogenerate=True)`` writes a new revision file next to the others.
    """
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates "%", which may occur in a checkout path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this code, as Alembic reads it from the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # only possible with a broken installation (no revision files)
        raise RuntimeError(f"no migration revisions found under {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or ``None`` when it has no ``alembic_version`` table
    (or an empty one). Read with SQLAlchemy's core, as Alembic reads it, without loading Alembic."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(rows) > 1:  # several heads: Alembic's own error says what that means
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(connection).get_current_revision()
    return rows[0] if rows else None


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


def upgrade_database(engine_or_url: Engine | str) -> str:
    """Bring the database to the head revision and return it; a no-op when it is already there.

    Accepts an engine or a URL (``Settings.resolved_database_url`` gives the configured one). Works on an empty database
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
    from alembic import command

    with migration_connection(engine) as connection:
        command.upgrade(alembic_config(connection), "head")
        _repair_to_models(connection)
    head = head_revision()
    logger.info("telemetry database %s is at schema revision %s", describe_database(engine).url, head)
    return head


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at :func:`head_revision` with every
    table and column of the models (:class:`SchemaIncomplete` when only the columns are missing)."""
    required = head_revision()
    current = current_revision(engine)
    if current != required:
        raise SchemaOutOfDate(current, required, describe_database(engine).url)
    _require_complete(engine, current)


def _require_complete(engine: Engine, current: str) -> None:
    gaps = schema_gaps(engine)
    if gaps:
        raise SchemaIncomplete(current, describe_database(engine).url, gaps)


def known_revisions() -> set[str]:
    """Every revision shipped with this code."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def prepare_database(engine: Engine) -> str:
    """Make ``engine``'s database usable by a command or asset and return its revision (the head).

    - None of our tables (a new file, an empty PostgreSQL database): the schema is created at head,
      so the embedded default works with no set-up.
    - At head with every table and column: nothing to do. At head but lacking some (stamped by an
      older upgrade that did not add them): raises :class:`SchemaIncomplete` naming them.
    - Anything else (an Autopack database that was never migrated, an older revision): raises
      :class:`SchemaOutOfDate` naming the database, its revision, the one needed and the upgrade
      command. Migrating someone else's database in place is left to an explicit ``db upgrade``.
    - A revision newer than this code knows: raises :class:`SchemaTooNew`.
    """
    # Under the lock, another process's half-made schema is never mistaken for an old one.
    with _sqlite_migration_lock(engine):
        with EngineCatalog(engine) as catalog:
            reading = read_schema(catalog)
        if not reading.holds_schema:
            return _upgrade(engine)
    if reading.ready:  # the usual case, at the head this code was written for: asks Alembic nothing
        return HEAD_REVISION
    current = current_revision(engine)
    head = HEAD_REVISION if current == HEAD_REVISION else head_revision()
    if current == head:
        _require_complete(engine, head)
        return head
    database = describe_database(engine).url
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(current, head, database)
    raise SchemaOutOfDate(current, head, database)
