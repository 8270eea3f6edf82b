"""Looking after the telemetry database: opening it ready for use, what is in it, bringing its schema up
to date, a safe copy. Called by the ``db`` commands and by every command that opens the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.storage.backup import BackupNotPossible, BackupReport, backup_sqlite
from autopack_pipeline.storage.database import describe_database, make_engine, require_existing_database
from autopack_pipeline.storage.migrate import (
    SchemaOutOfDate,
    SchemaTooNew,
    current_revision,
    head_revision,
    known_revisions,
    prepare_database,
    upgrade_database,
)

__all__ = ["BackupNotPossible", "back_up", "open_database", "summarise", "upgrade"]


def open_database(url: str, *, must_exist: bool = False) -> Engine:
    """The database ``url`` names, ready for use. A brand-new one gets the schema, unless ``must_exist``:
    then a missing SQLite file raises ``storage.database.DatabaseNotFound`` naming the path. One at an
    older revision (an Autopack database never migrated included) is refused, saying to run ``db upgrade``."""
    if must_exist:
        require_existing_database(url)
    engine = make_engine(url)
    try:
        prepare_database(engine)
    except SchemaOutOfDate as exc:
        engine.dispose()
        raise Refused(str(exc)) from exc
    return engine


def summarise(engine: Engine) -> dict[str, Any]:
    """Identity, schema revision, rows per table, phase states and event counts of the database."""
    # Here, not at import: the summary reads the ORM's models, which opening a database does without.
    from autopack_pipeline.storage.summary import database_summary

    return database_summary(engine)


def upgrade(url: str) -> tuple[Engine, str]:
    """Bring the schema of ``url``'s database to the newest revision, in place: the engine and the revision.
    A revision this version does not know (written by a newer one) is refused with what it means."""
    engine = make_engine(url)
    current = current_revision(engine)
    if current is not None and current not in known_revisions():
        # Alembic would fail with "Can't locate revision": say what it means and what to do.
        raise Refused(str(SchemaTooNew(current, head_revision(), describe_database(engine).url)))
    return engine, upgrade_database(engine)


def back_up(url: str, file: Path) -> BackupReport:
    """A consistent copy of the SQLite database ``url`` names into ``file`` (``BackupNotPossible`` otherwise)."""
    engine = make_engine(url)
    try:
        return backup_sqlite(engine, file)
    finally:
        engine.dispose()
