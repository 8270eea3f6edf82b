"""Alembic environment of the telemetry schema.

Configured from Python by :mod:`autopack_pipeline.storage.migrate` (no alembic.ini): the caller puts
an open connection in ``config.attributes["connection"]``, so the migration runs on exactly the
database the command resolved (pitfall P1). Without one, the URL comes from the ``sqlalchemy.url``
option or the settings' ``DATABASE_URL`` rule (this file is an entry point of its own, like a command).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from autopack_pipeline.settings import load_storage_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.migrate import migration_connection
from autopack_pipeline.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run_on(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode rebuilds the table there
    # and issues plain ALTERs on PostgreSQL, so one revision file serves both backends.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _database_url() -> str:
    return load_storage_settings().resolved_database_url(config.get_main_option("sqlalchemy.url") or None)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of executing it (``--sql`` mode)."""
    url = _database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the shared connection, or a fresh engine when none was given."""
    shared = config.attributes.get("connection")
    if shared is not None:
        _run_on(shared)
        return
    engine = make_engine(_database_url())
    try:
        with migration_connection(engine) as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
