"""Where a database's store lives, and which database a store copies (its manifest's ``source``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autopack_pipeline.storage.handle import Database

COLUMNAR_DIR_VARIABLE = "AUTOPACK_COLUMNAR_DIR"  # read by settings.StorageSettings.columnar_dir


def store_directory_for(database: Database, override: Path | str | None = None) -> Path | None:
    """Where the store of ``database`` (an engine or a handle) lives: ``override``, else the settings' ``columnar_dir``
    (``$AUTOPACK_COLUMNAR_DIR``), else next to the SQLite file; None for an in-memory SQLite database."""
    from autopack_pipeline.storage.handle import describe_database

    identity = describe_database(database)
    if identity.backend == "sqlite" and not identity.sqlite_path:
        return None  # even with an override: a copy would outlive the database it copies
    if override is None:
        from autopack_pipeline.settings import load_storage_settings

        override = load_storage_settings().columnar_dir
    if override:
        return Path(override).expanduser().resolve()
    if identity.backend == "sqlite":
        path = Path(identity.sqlite_path)
        return path.parent / ".autopack" / "columnar" / path.name
    from sqlalchemy.engine import make_url  # not a SQLite file: SQLAlchemy parses the URL

    from autopack_pipeline.storage.handle import as_handle

    url = make_url(as_handle(database).url)
    name = f"{url.get_backend_name()}-{url.host or 'local'}-{url.port or 'default'}-{url.database or 'db'}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return (Path.cwd() / ".autopack" / "columnar" / safe).resolve()


def _source_identity(database: Database) -> str:
    from autopack_pipeline.storage.handle import describe_database

    identity = describe_database(database)
    return identity.sqlite_path or identity.url
