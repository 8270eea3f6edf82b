"""Looking after the telemetry database: opening it ready for use, what is in it, bringing its schema up
to date, a safe copy. Called by the ``db`` commands and by every command that opens the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.storage.backup import BackupNotPossible, BackupReport, backup_sqlite
from autopack_pipeline.storage.database_url import require_existing_database, resolve_database_url
from autopack_pipeline.storage.handle import DatabaseHandle
from autopack_pipeline.storage.schema_check import read_schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from autopack_pipeline.services.event_reading import ProgressScope

__all__ = ["BackupNotPossible", "back_up", "open_database", "open_database_handle", "summarise", "upgrade"]


def open_database_handle(url: str, *, must_exist: bool = False) -> DatabaseHandle:
    """The database ``url`` names, ready for use. A brand-new one gets the schema, unless ``must_exist``:
    then a missing SQLite file raises ``storage.database.DatabaseNotFound`` naming the path. One at an
    older revision (an Autopack database never migrated included) is refused, saying to run ``db upgrade``.

    An existing SQLite file whose schema is current (the usual case) is found so through the standard
    library: the handle makes no engine and SQLAlchemy is not imported until something needs it.
    Anything else, or a file ``sqlite3`` cannot read, goes through ``storage.migrate.prepare_database``
    (which creates, refuses or reports it as before)."""
    resolved = resolve_database_url(url)
    if must_exist:
        require_existing_database(resolved)
    database = DatabaseHandle(resolved)
    path = database.identity.sqlite_path
    if path is not None and Path(path).exists():
        try:
            with database.catalog() as catalog:
                if read_schema(catalog).ready:
                    return database
        except sqlite3.Error:
            pass  # SQLAlchemy's route below says what is wrong with the file, as it always has
    from autopack_pipeline.storage.migrate import SchemaOutOfDate, prepare_database

    try:
        prepare_database(database.engine)
    except SchemaOutOfDate as exc:
        database.dispose()
        raise Refused(str(exc)) from exc
    return database


def open_database(url: str, *, must_exist: bool = False) -> Engine:
    """:func:`open_database_handle`'s database as SQLAlchemy's engine."""
    return open_database_handle(url, must_exist=must_exist).engine


def summarise(engine: Engine, extraction_progress: ProgressScope | None = None) -> dict[str, Any]:
    """Identity, schema revision, rows per table, phase states and event counts of the database (the
    event counts through the columnar copy, refreshed first, when it holds every event)."""
    # Here, not at import: the summary reads the ORM's models, which opening a database does without.
    from autopack_pipeline.services.event_reading import copied_events
    from autopack_pipeline.storage.summary import database_summary

    return database_summary(engine, copied_events(engine, extraction_progress))


def upgrade(url: str) -> tuple[Engine, str]:
    """Bring the schema of ``url``'s database to the newest revision, in place: the engine and the revision.
    A revision this version does not know (written by a newer one) is refused with what it means."""
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.handle import describe_database
    from autopack_pipeline.storage.migrate import (
        SchemaTooNew,
        current_revision,
        head_revision,
        known_revisions,
        upgrade_database,
    )

    engine = make_engine(url)
    current = current_revision(engine)
    if current is not None and current not in known_revisions():
        # Alembic would fail with "Can't locate revision": say what it means and what to do.
        raise Refused(str(SchemaTooNew(current, head_revision(), describe_database(engine).url)))
    return engine, upgrade_database(engine)


def back_up(url: str, file: Path) -> BackupReport:
    """A consistent copy of the SQLite database ``url`` names into ``file`` (``BackupNotPossible`` otherwise)."""
    from autopack_pipeline.storage.database import make_engine

    engine = make_engine(url)
    try:
        return backup_sqlite(engine, file)
    finally:
        engine.dispose()
