"""Moving events in and out of the telemetry database: the NDJSON export, the import of an export (ours
or Autopack's), and the replay of events spooled while the database was unavailable."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.services.telemetry_database import open_database
from autopack_pipeline.storage import spool
from autopack_pipeline.storage.database import make_engine, safe_error_text
from autopack_pipeline.storage.events import SPOOL_INSERTERS
from autopack_pipeline.storage.summary import count_events
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, unreadable_document
from autopack_pipeline.storage.transfer import export_to_file, import_file, write_export
from autopack_pipeline.storage.transfer.importer import ImportReport

__all__ = ["ImportReport", "export_events", "import_events", "replay_spool"]


def export_events(engine: Engine, target: Path | IO[str], *, allow_empty: bool = False) -> tuple[int, dict[str, Any]]:
    """Write every event as NDJSON, newest first, to a file (atomically) or a stream: the count, and the
    document of the rows whose timestamp could not be read (exported with the value as stored).
    An empty table is refused unless ``allow_empty``."""
    if count_events(engine) == 0 and not allow_empty:
        raise Refused(
            "no token-estimation events to export. If you expected some, check DATABASE_URL names the right "
            "database. Pass --allow-empty-db to write an empty export."
        )
    unreadable: list[UnreadableTimestamp] = []
    if isinstance(target, Path):
        count = export_to_file(engine, target, unreadable)
    else:
        count = write_export(engine, target, unreadable)
    return count, unreadable_document(unreadable)


def import_events(engine: Engine, source: Path, quarantine: Path, *, batch_size: int, progress=None) -> ImportReport:
    """Import an NDJSON file; rejected lines go, with their reason, to ``quarantine``."""
    return import_file(engine, source, quarantine, batch_size=batch_size, progress=progress)


def replay_spool(url: str) -> tuple[dict[str, Any], int]:
    """Write the events spooled for ``url``'s database to it now: the replay's document (with the spools
    kept for other databases) and how many lines were pending. A database still unavailable keeps them."""
    target = make_engine(url)
    report = spool.ReplayReport(spool_file=str(spool.spool_path(target)))
    pending = spool.pending_count(target)
    if pending:
        try:
            engine = open_database(url)
        except SQLAlchemyError as exc:
            if not spool.is_transient_failure(exc):
                raise
            report.still_failing, report.error = pending, safe_error_text(exc)
        else:
            report = spool.replay(engine, SPOOL_INSERTERS)
    others = spool.other_spools(target)
    document = {**report.to_dict(), "database": target.url.render_as_string(hide_password=True),
                "other_spools": others}
    target.dispose()
    return document, pending
