"""What the ``raw_events`` asset hands on: where the events of one refresh are, not the events.

A ten-million-row events frame costs gigabytes and a minute to pickle between assets, and every
downstream asset would unpickle it again. So ``raw_events`` refreshes the columnar store (only the
new rows are read from the database) and hands on an :class:`EventSnapshot`: the store's directory,
its row count and its high-water event id at that moment. Its IO manager (``defs/events/io_manager``)
loads the analysis arrays from the store for the steps downstream and keeps only the rows the
snapshot saw, so a refresh by another run in between does not change what this run analyses.

Not every step needs every event. The analysis reads its rolling window, so a snapshot loads the
events since a moment (:meth:`EventSnapshot.arrays`' ``since``) from only the parts that can hold them:
each part's newest timestamp is in its Parquet statistics, so the choice holds whatever order the
events were written in. The whole-history figures (data-quality checks, raw_events' metadata) are
sums over events: each part is tallied as the store writes it, the tally kept in a small file beside
the part (``columnar/tallies.py``; parts are never rewritten: a compaction writes a new part), and a
snapshot adds the tallies up (:class:`EventHistory`) instead of reading every event. A part of a
store written before that is tallied from its rows once, when first asked.

A database without a store (in-memory SQLite), or a store that cannot be written, is read whole
and its arrays travel inside the snapshot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.event_tally import EventTally, add_tallies, tally_events
from autopack_pipeline.domain.windows import latest_day
from autopack_pipeline.storage.arrow_modules import pa, pc, pq
from autopack_pipeline.storage.columnar import ColumnarStore, ColumnarStoreError, Progress, RefreshResult, refresh_store
from autopack_pipeline.storage.columnar.tallies import (
    TALLY_PREFIX,
    keep_tally,
    kept_tally,
    run_counts,
    runs_table,
    tally_file_of,
)
from autopack_pipeline.storage.frames import event_arrays_from_frame
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, unreadable_document

if TYPE_CHECKING:
    import pandas as pd

    from autopack_pipeline.storage.handle import Database

logger = logging.getLogger(__name__)

LARGEST_RUNS = 20  # how many runs raw_events lists by event count
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SnapshotUnavailable(RuntimeError):
    """The store no longer holds the rows a snapshot saw (it was rebuilt or deleted)."""


@dataclass(frozen=True)
class EventHistory:
    """Figures over every event of a snapshot: the tally (data quality), how many runs, and the
    ``LARGEST_RUNS`` runs with the most events (most first, then by run id)."""

    tally: EventTally
    runs: int
    largest_runs: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tally": self.tally.as_dict(), "runs": self.runs, "largest_runs": [list(r) for r in self.largest_runs]}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> EventHistory:
        return cls(EventTally.from_dict(document["tally"]), int(document["runs"]),
                   [(str(run), int(n)) for run, n in document["largest_runs"]])


@dataclass(frozen=True)
class EventSnapshot:
    """The events as one refresh saw them: ``rows`` events with ids up to ``high_water_event_id``."""

    rows: int
    high_water_event_id: int
    store_directory: str | None = None
    inline: EventArrays | None = field(default=None, repr=False)
    # Rows left out for an unreadable timestamp: {"count": n, "rows": [the first few, named]}.
    unreadable: dict[str, Any] = field(default_factory=lambda: unreadable_document([]))
    # Figures over every event (None unless asked for: ``snapshot_events(with_history=True)``).
    history: EventHistory | None = None
    # Every event, when whoever made the snapshot loaded them (raw_events, tallying the parts of a
    # store written before parts were tallied as they were written): handed to the IO manager of the same process, so the steps that
    # read every event do not read them again. Never stored; not part of what the snapshot is.
    loaded: EventArrays | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"loaded": None}  # a snapshot pickles as the reference it is

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @classmethod
    def from_frame(cls, events: pd.DataFrame, unreadable: list[UnreadableTimestamp] | None = None) -> EventSnapshot:
        """A snapshot carrying an events frame's arrays (a database read whole, or a test's events)."""
        arrays = event_arrays_from_frame(events)
        known = arrays.event_id.values[arrays.event_id.notna()]
        counts = events["run_id"].value_counts(dropna=True)
        runs = pa.table({"run_id": pa.array([str(k) for k in counts.index], pa.string()),
                         "events": pa.array(counts.to_numpy(), pa.int64())})
        return cls(rows=len(arrays), high_water_event_id=int(known.max()) if len(known) else 0, inline=arrays,
                   unreadable=unreadable_document(unreadable or []),
                   history=_history(tally_events(arrays), runs))

    def arrays(self, since: datetime | None = None) -> EventArrays:
        """The events as analysis arrays, in event-id order; with ``since``, only those with a timestamp
        at or after it, read from only the parts whose newest timestamp reaches it."""
        events = self._all_or_parts(since)
        if since is None:
            return events
        stamps = events.timestamp_us
        return events.take(stamps.notna() & (stamps.values >= _microseconds(since)))

    def _all_or_parts(self, since: datetime | None) -> EventArrays:
        if self.inline is not None:
            return self.inline
        if self.loaded is not None:
            return self.loaded
        for attempt in (1, 2):
            try:
                return self._read(since)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, since: datetime | None) -> EventArrays:
        store = self._store()
        manifest = store.manifest()
        if since is None:
            arrays = store.event_arrays()
            if len(arrays) == self.rows:
                return arrays
            parts = None
        else:
            # The parts that can hold an event of the snapshot at or after ``since``; a part without
            # timestamp statistics is read.
            self._check_rows(store, manifest)
            floor = _microseconds(since)
            parts = [p for p in self._parts(manifest) if (newest := _newest_stamp(store, p)) is None or newest >= floor]
            arrays = store.event_arrays(parts=parts, manifest=manifest)
        # The store grew since the snapshot: keep the rows it saw.
        kept = arrays.take(arrays.event_id.values <= self.high_water_event_id)
        if parts is None and len(kept) != self.rows:
            raise self._rebuilt(len(kept))
        return kept

    def latest_day(self) -> date | None:
        """The UTC day of the snapshot's newest event (``domain.windows.latest_day`` of all its events),
        from the parts' timestamp statistics: only a part holding rows past the snapshot is read."""
        if self.inline is not None:
            return latest_day(self.inline)
        store = self._store()
        newest = None
        for part in self._parts(store.manifest()):
            if part["max_event_id"] > self.high_water_event_id:  # rows past the snapshot: read its own
                table = pq.read_table(store.directory / part["file"], columns=["event_id", "timestamp"])
                seen = table.filter(pc.less_equal(table.column("event_id"), self.high_water_event_id))
                top = pc.max(seen.column("timestamp").cast(pa.int64())).as_py() if seen.num_rows else None
            else:
                top = _newest_stamp(store, part)
                if top is None:  # no statistics: read the column
                    stamps = pq.read_table(store.directory / part["file"], columns=["timestamp"]).column("timestamp")
                    top = pc.max(stamps.cast(pa.int64())).as_py()
            if top is not None:
                newest = top if newest is None else max(newest, top)
        return None if newest is None else (_EPOCH + timedelta(microseconds=newest)).date()

    def _store(self) -> ColumnarStore:
        if self.store_directory is None:
            raise SnapshotUnavailable("the snapshot names no columnar store and carries no events")
        store = ColumnarStore(self.store_directory)
        if store.manifest() is None:
            raise SnapshotUnavailable(f"no columnar store at {self.store_directory} any more; "
                                      "materialise raw_events again")
        return store

    def _parts(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in manifest["parts"] if p["min_event_id"] <= self.high_water_event_id]

    def _check_rows(self, store: ColumnarStore, manifest: dict[str, Any]) -> None:
        """The store still holds the snapshot's rows (counted from the manifest; only a part holding
        rows past the snapshot is read)."""
        rows = 0
        for part in self._parts(manifest):
            if part["max_event_id"] <= self.high_water_event_id:
                rows += part["rows"]
            else:
                ids = pq.read_table(store.directory / part["file"], columns=["event_id"]).column("event_id")
                rows += int(pc.sum(pc.less_equal(ids, self.high_water_event_id)).as_py() or 0)
        if rows != self.rows:
            raise self._rebuilt(rows)

    def _rebuilt(self, rows: int) -> SnapshotUnavailable:
        return SnapshotUnavailable(
            f"the columnar store {self.store_directory} holds {rows} events up to id "
            f"{self.high_water_event_id}, the snapshot saw {self.rows}: it was rebuilt since; "
            "materialise raw_events again"
        )


def _microseconds(moment: datetime) -> int:
    return (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1)


def _newest_stamp(store: ColumnarStore, part: dict[str, Any]) -> int | None:
    """The part's newest timestamp (µs) from its Parquet row-group statistics; None when a row group
    has none (then the part must be read). A row group of null timestamps only holds no window's event."""
    metadata = pq.ParquetFile(store.directory / part["file"]).metadata
    column = metadata.schema.to_arrow_schema().get_field_index("timestamp")
    newest = None
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(column)
        statistics = chunk.statistics
        if statistics is None:
            return None
        if not statistics.has_min_max:
            if statistics.has_null_count and statistics.null_count == chunk.num_values:
                continue
            return None
        top = statistics.max_raw if isinstance(statistics.max_raw, int) else _microseconds(statistics.max)
        newest = top if newest is None else max(newest, top)
    return newest


def snapshot_events(database: Database, *, progress: Progress | None = None, with_history: bool = False
                    ) -> tuple[EventSnapshot, RefreshResult | None, str | None]:
    """Refresh the columnar store of ``database`` (an engine or a handle) and snapshot it; ``progress(rows, total)``
    follows the extraction of new rows. ``with_history``: with the figures over every event
    (:class:`EventHistory`; a part never tallied before is read once for it).

    Returns (snapshot, the refresh, None), or, without a usable store, (a snapshot of the whole
    table read from the database, None, why there was no store).
    """
    try:
        store, refresh = refresh_store(database, progress=progress)
    except (ColumnarStoreError, OSError) as exc:
        store, refresh, reason = None, None, f"columnar store unavailable ({exc}); read the whole events table"
    else:
        reason = None if store is not None else "an in-memory database has no columnar store; read it whole"
    if store is None or refresh is None:
        # Only here is the table read row by row: the reader (pandas, the ORM's models) loads for it alone.
        from autopack_pipeline.storage.events import read_events_checked
        from autopack_pipeline.storage.handle import as_handle

        return EventSnapshot.from_frame(*read_events_checked(as_handle(database).engine)), None, reason
    snapshot = EventSnapshot(rows=refresh.rows_after, high_water_event_id=refresh.high_water,
                             store_directory=str(store.directory), unreadable=store.unreadable())
    if with_history:
        history, loaded = _history_and_events(store, refresh.high_water)
        if loaded is not None and len(loaded) != snapshot.rows:
            loaded = None  # rows set aside since: let the snapshot read them as it reads any store
        snapshot = replace(snapshot, history=history, loaded=loaded)
    return snapshot, refresh, None


def history_of(store: ColumnarStore, high_water: int) -> EventHistory:
    """The figures over every stored event up to ``high_water``: the parts' tallies added up."""
    return _history_and_events(store, high_water)[0]


def _history_and_events(store: ColumnarStore, high_water: int) -> tuple[EventHistory, EventArrays | None]:
    """:func:`history_of`, and every event when they were loaded for it. Parts are tallied as they are
    written (``columnar/tallies.py``); a store written by an earlier version has parts without a tally,
    and when those hold most rows (its first run), reading every event once and tallying each part's
    rows costs what reading each part does, and the events are there for the steps that read them all
    (drift, generated_tasks)."""
    for attempt in (1, 2):
        manifest = store.manifest()
        if manifest is None:
            raise SnapshotUnavailable(f"no columnar store at {store.directory} any more")
        parts = [p for p in manifest["parts"] if p["min_event_id"] <= high_water]
        try:
            kept = {p["file"]: kept_tally(store.directory, p["file"]) for p in parts if p["max_event_id"] <= high_water}
            every = _every_event_to_tally(store, manifest, parts, high_water, kept)
            tallies = [kept.get(part["file"]) or _part_tally(store, manifest, part, high_water, every) for part in parts]
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue  # a refresh compacted the parts under us; read the new manifest
        _drop_stale_tallies(store, manifest)
        runs = pa.concat_tables([runs for _tally, runs in tallies]) if tallies else runs_table([], [])
        return _history(add_tallies([tally for tally, _runs in tallies]), runs), (
            None if every is None else every[0])
    raise AssertionError("unreachable")  # pragma: no cover


def _every_event_to_tally(store: ColumnarStore, manifest: dict[str, Any], parts: list[dict[str, Any]],
                          high_water: int, kept: dict[str, Any]) -> tuple[EventArrays, dict[str, slice]] | None:
    """Every event and each part's rows among them, when most rows are in parts without a tally
    (``kept``: the tallies found, by part file) and the parts lie one after the other in event-id
    order, all up to ``high_water`` (so a part's rows are one slice); else None (each untallied part
    is read on its own)."""
    if not manifest["sorted"] or len(parts) != len(manifest["parts"]) or any(
            p["max_event_id"] > high_water for p in parts):
        return None
    untallied = sum(p["rows"] for p in parts if kept.get(p["file"]) is None)
    if untallied * 2 <= manifest["rows"]:
        return None
    arrays = store.event_arrays(parts=parts, manifest=manifest)
    slices, start = {}, 0
    for part in parts:
        slices[part["file"]] = slice(start, start + part["rows"])
        start += part["rows"]
    return arrays, slices


def _history(tally: EventTally, runs: pa.Table) -> EventHistory:
    """``runs`` (run id, events; a run may have a row per part) summed per run."""
    per_run = runs.group_by("run_id").aggregate([("events", "sum")]) if runs.num_rows else runs.rename_columns(
        ["run_id", "events_sum"])
    order = pc.sort_indices(per_run, sort_keys=[("events_sum", "descending"), ("run_id", "ascending")])
    top = per_run.take(order[:LARGEST_RUNS])
    return EventHistory(tally, per_run.num_rows,
                        list(zip(top.column("run_id").to_pylist(), top.column("events_sum").to_pylist())))


def _part_tally(store: ColumnarStore, manifest: dict[str, Any], part: dict[str, Any], high_water: int,
                every: tuple[EventArrays, dict[str, slice]] | None = None) -> tuple[EventTally, pa.Table]:
    """The tally and run counts of a part with no tally kept (written by an earlier version), or of its
    rows up to ``high_water`` when it holds later ones: counted from its rows (``every``: every event
    and each part's slice of them, already loaded; else the part is read), and kept when every row of
    the part counts."""
    whole = part["max_event_id"] <= high_water
    if every is not None:
        arrays = every[0].take(every[1][part["file"]])  # a slice: views of the arrays, nothing copied
    else:
        arrays = store.event_arrays(parts=[part], manifest=manifest)
    # Run ids as Parquet's dictionary codes, counted per code: no string per row.
    table = pq.read_table(store.directory / part["file"], columns=["run_id", "event_id"], read_dictionary=["run_id"])
    if not whole:
        arrays = arrays.take(arrays.event_id.values <= high_water)
        table = table.filter(pc.less_equal(table.column("event_id"), high_water))
    runs = run_counts(table.column("run_id"))
    tally = tally_events(arrays)
    if whole:
        keep_tally(store.directory, part["file"], tally, runs)
    return tally, runs


def _drop_stale_tallies(store: ColumnarStore, manifest: dict[str, Any]) -> None:
    """Remove the tally files of parts the store no longer has (compacted or rebuilt away)."""
    current = {tally_file_of(p["file"]) for p in manifest["parts"]}
    for path in store.directory.glob(f"{TALLY_PREFIX}*"):
        if path.name not in current and not (store.directory / path.name.removeprefix(TALLY_PREFIX)).exists():
            path.unlink(missing_ok=True)
