"""A safe copy of the telemetry database.

A SQLite database in WAL mode (every database this product writes to is switched to it, so the Dagster
webserver can read while a run writes) keeps its newest commits in ``<file>-wal`` until a checkpoint
moves them into the main file. Copying ``autopack.db`` alone can therefore miss recent rows, or catch
a file mid-write. SQLite's online backup API reads one consistent snapshot, WAL included, while
writers carry on; the copy is then switched back to a rollback journal, so it is one self-contained
file that can be copied, mailed or opened by Autopack's scripts like any other.

PostgreSQL has its own tool for this, ``pg_dump``; :func:`pg_dump_command` says how to call it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autopack_pipeline.output_files import AtomicFile, OutputPathError
from autopack_pipeline.storage.handle import describe_database

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class BackupNotPossible(ValueError):
    """The database cannot be backed up by this command; the message says what to do instead."""


@dataclass(frozen=True)
class BackupReport:
    database: str
    backup_file: str
    events: int
    bytes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def pg_dump_command(engine: Engine) -> str:
    """The ``pg_dump`` call that backs up ``engine``'s PostgreSQL database (password shown as ***:
    give it through PGPASSWORD or ~/.pgpass)."""
    url = engine.url.set(drivername="postgresql")
    return f"pg_dump --format=custom --file BACKUP.dump '{url.render_as_string(hide_password=True)}'"


def backup_sqlite(engine: Engine, target: Path) -> BackupReport:
    """Copy ``engine``'s SQLite database to ``target`` through SQLite's backup API, atomically."""
    identity = describe_database(engine)
    if identity.backend != "sqlite":
        raise BackupNotPossible(
            f"db backup copies SQLite files; {identity.url} is {identity.backend}. Use PostgreSQL's own tool: "
            f"{pg_dump_command(engine)}"
        )
    if identity.sqlite_path is None:
        raise BackupNotPossible(f"{identity.url} is an in-memory database: there is nothing on disk to back up")
    source_path = Path(identity.sqlite_path)
    if not source_path.is_file():  # connecting would create an empty database
        raise BackupNotPossible(f"no database file at {source_path} (check DATABASE_URL)")
    target = Path(target).absolute()
    own_files = {source_path.resolve(), *(Path(f"{source_path}-{side}").resolve() for side in ("wal", "shm", "journal"))}
    if target.resolve() in own_files:
        raise OutputPathError(f"refusing to write the backup over the database or one of its side files: {target}")
    with AtomicFile(target) as output:
        source = sqlite3.connect(source_path)
        try:
            copy = sqlite3.connect(output.temporary_path)
            try:
                source.backup(copy)
                # One self-contained file: the copy does not depend on a -wal file next to it.
                copy.execute("PRAGMA journal_mode=DELETE")
                events = _event_count(copy)
            finally:
                copy.close()
        finally:
            source.close()
    return BackupReport(identity.url, str(target), events, target.stat().st_size)


def _event_count(connection: sqlite3.Connection) -> int:
    try:
        return int(connection.execute("SELECT count(*) FROM token_estimation_v2_events").fetchone()[0])
    except sqlite3.OperationalError:  # no events table (yet): the copy is still a faithful copy
        return 0
