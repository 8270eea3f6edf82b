"""Reading the stored events for an analysis: as a frame for a selection of runs, as analysis arrays
through the columnar copy for all of them, refused when there is nothing to analyse.

The front end brings the progress display: ``extraction_progress`` opens a scope (a progress bar)
around the refresh of the columnar copy and yields the callable that moves it, or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.storage.frames import event_arrays_from_frame
from autopack_pipeline.storage.handle import describe_database
from autopack_pipeline.storage.snapshot import EventSnapshot, snapshot_events
from autopack_pipeline.storage.timestamps import describe_unreadable, unreadable_document

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from autopack_pipeline.storage.handle import Database

ProgressScope = Callable[[], AbstractContextManager[Callable[..., None] | None]]

__all__ = ["ProgressScope", "copied_events", "describe_unreadable", "read_event_arrays", "read_events_frame",
           "refreshed_snapshot"]


def read_events_frame(engine: Engine, run_ids: list[str] | None = None, *, allow_empty: bool = False):
    """The events frame (of ``run_ids`` when given) and the document of the rows left out for an
    unreadable timestamp; an empty result is refused with its likely causes unless ``allow_empty``."""
    # The row reader (pandas, the ORM's models) loads only for a selection of runs or an empty copy.
    from autopack_pipeline.storage.events import read_events_checked

    events, unreadable = read_events_checked(engine, run_ids=run_ids or None)
    document = unreadable_document(unreadable)
    if events.empty and not allow_empty:
        set_aside = describe_unreadable(document)
        raise Refused(
            f"no token-estimation events in {describe_database(engine).url}"
            + (f" for runs {', '.join(run_ids)}" if run_ids else "")
            + (f" ({set_aside})" if set_aside else "")
            + ". Likely causes: DATABASE_URL names another database, no collection has run yet "
            "(try `autopack-telemetry collect`), or telemetry was disabled (TELEMETRY_DB_ENABLED) "
            "when Autopack ran. Pass --allow-empty-db to analyse anyway."
        )
    return events, document


def refreshed_snapshot(database: Database, extraction_progress: ProgressScope | None = None) -> EventSnapshot:
    """Every stored event, through the columnar copy refreshed first (only new events are read from
    the database). Its ``run_counts`` stay empty: the commands only read its events, and counting runs
    reads every run id of the store (a tenth of a second and 70 MB at a million events)."""
    with (extraction_progress or nullcontext)() as advance:
        snapshot, _refresh, _fallback = snapshot_events(database, progress=advance)
    return snapshot


def copied_events(database: Database, extraction_progress: ProgressScope | None = None
                  ) -> Callable[[], EventArrays | None]:
    """What reads every event of the columnar copy, refreshed first, for the counts of
    ``storage.summary.database_summary`` (``db-check``, ``doctor``); it gives None when there is no usable
    copy (an in-memory database, a directory that cannot be written, the database failing meanwhile),
    and the summary groups the table in SQL instead."""

    def arrays() -> EventArrays | None:
        from sqlalchemy.exc import SQLAlchemyError

        from autopack_pipeline.storage.columnar import ColumnarStoreError, refresh_store

        try:
            with (extraction_progress or nullcontext)() as advance:
                store, refresh = refresh_store(database, progress=advance)
            return None if store is None or refresh is None else store.event_arrays()
        except (ColumnarStoreError, OSError, SQLAlchemyError):
            return None

    return arrays


def read_event_arrays(database: Database, run_ids: list[str] | None = None, *, allow_empty: bool = False,
                      extraction_progress: ProgressScope | None = None) -> tuple[EventArrays, dict[str, Any]]:
    """The events as analysis arrays, and the document of the rows left out for an unreadable timestamp.
    All runs come through the columnar copy; a selection of runs is read from the database.
    ``database``: an engine, or a handle (``storage.handle``), which makes one only when the copy needs
    new rows or the database is read itself."""
    from autopack_pipeline.storage.handle import as_handle

    if run_ids:
        events, unreadable = read_events_frame(as_handle(database).engine, run_ids, allow_empty=allow_empty)
        return event_arrays_from_frame(events), unreadable
    snapshot = refreshed_snapshot(database, extraction_progress)
    if snapshot.rows == 0:
        # Refuses an empty database with its explanation.
        read_events_frame(as_handle(database).engine, allow_empty=allow_empty)
    return snapshot.arrays(), snapshot.unreadable
