"""Whether the store still copies its database, and whether a refresh would find anything to do.

A refresh that finds the copy up to date (every warm ``calibrate`` and ``metrics``) asks the database
three questions: the events table's columns, the row at the high-water mark, the highest id. They go
through the database's catalog (``storage.catalog``), so for a SQLite file no reader of its rows is
made and SQLAlchemy is not imported; anything else is the full refresh's to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack_pipeline.storage.catalog import EVENTS_TABLE, max_event_id
from autopack_pipeline.storage.columnar.encoding import (
    MAX_SMALL_PARTS,
    SMALL_PART_ROWS,
    STORE_FORMAT,
    _unreadable_entry,
)
from autopack_pipeline.storage.columnar.gaps import live_gaps

if TYPE_CHECKING:
    from autopack_pipeline.storage.handle import DatabaseHandle

# The columns the store's reader needs, and the anchor's: a table without them is the reader's to name.
_NEEDED_COLUMNS = {"event_id", "run_id", "phase_id", "actual_output_tokens"}


def rebuild_reason(directory: Path, manifest: dict | None, source: str, anchor: Callable[[int], dict | None],
                   full: bool) -> str | None:
    """Why the copy in ``directory`` must be built again from the database ``source`` names (``anchor``:
    the identifying fields of an event row as the database holds it now), or None."""
    if manifest is None:
        return None
    if full:
        return "a full rebuild was asked for"
    if manifest.get("format") != STORE_FORMAT:
        return "the store was written by another version"
    if manifest.get("source") != source:
        return f"it held events of {manifest.get('source')}, not of {source}"
    missing = [p["file"] for p in manifest["parts"] if not (directory / p["file"]).exists()]
    if missing:
        return f"part files are missing ({', '.join(missing[:3])})"
    if manifest["high_water_event_id"] and manifest.get("anchor") != anchor(manifest["high_water_event_id"]):
        return (f"event {manifest['high_water_event_id']} is gone or changed in the database "
                "(the database was replaced, or rows were deleted)")
    return None


def parts_to_compact(parts: list[dict[str, Any]]) -> int:
    """How many of the last parts a refresh merges into one: the trailing small ones (fewer than
    SMALL_PART_ROWS rows each) when there are more than MAX_SMALL_PARTS of them, else none."""
    tail = 0
    while tail < len(parts) and parts[len(parts) - 1 - tail]["rows"] < SMALL_PART_ROWS:
        tail += 1
    return tail if tail > MAX_SMALL_PARTS else 0


def up_to_date(directory: Path, manifest: dict[str, Any], source: str, database: DatabaseHandle) -> bool:
    """Whether a refresh of the copy in ``directory`` would find nothing to do: no rebuild, no new row, no
    id gap or set-aside row to ask for again, no parts to compact, and the manifest's records already as
    such a refresh leaves them."""
    if manifest.get("unreadable") != _unreadable_entry([]) or manifest.get("gaps") or live_gaps(manifest):
        return False
    if parts_to_compact(manifest["parts"]):
        return False
    with database.catalog() as catalog:
        if EVENTS_TABLE not in catalog.table_names() or not _NEEDED_COLUMNS <= catalog.column_names(EVENTS_TABLE):
            return False
        if rebuild_reason(directory, manifest, source, catalog.anchor, False) is not None:
            return False
        return max_event_id(catalog) == manifest["high_water_event_id"]
