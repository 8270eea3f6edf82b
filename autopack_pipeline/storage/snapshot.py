"""What the ``raw_events`` asset hands on: where the events of one refresh are, not the events.

A ten-million-row events frame costs gigabytes and a minute to pickle between assets, and every
downstream asset would unpickle it again. So ``raw_events`` refreshes the columnar store (only the
new rows are read from the database) and hands on an :class:`EventSnapshot`: the store's directory,
its row count and its high-water event id at that moment. Its IO manager (``defs/events/io_manager``)
loads the analysis arrays from the store for the steps downstream and keeps only the rows the
snapshot saw, so a refresh by another run in between does not change what this run analyses.

A database without a store (in-memory SQLite), or a store that cannot be written, is read whole
and its arrays travel inside the snapshot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.storage.columnar import ColumnarStore, ColumnarStoreError, Progress, RefreshResult, refresh_store
from autopack_pipeline.storage.frames import event_arrays_from_frame
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, unreadable_document

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


class SnapshotUnavailable(RuntimeError):
    """The store no longer holds the rows a snapshot saw (it was rebuilt or deleted)."""


@dataclass(frozen=True)
class EventSnapshot:
    """The events as one refresh saw them: ``rows`` events with ids up to ``high_water_event_id``."""

    rows: int
    high_water_event_id: int
    run_counts: dict[str, int] = field(default_factory=dict)  # events per run id
    store_directory: str | None = None
    inline: EventArrays | None = field(default=None, repr=False)
    # Rows left out for an unreadable timestamp: {"count": n, "rows": [the first few, named]}.
    unreadable: dict[str, Any] = field(default_factory=lambda: unreadable_document([]))
    # The store's events as whoever made the snapshot already loaded them (raw_events reads them for
    # its metadata): handed to the IO manager of the same process so the steps downstream do not
    # read ten million events again. Never stored; not part of what the snapshot is.
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
        return cls(rows=len(arrays), high_water_event_id=int(known.max()) if len(known) else 0,
                   run_counts={str(k): int(v) for k, v in counts.items()}, inline=arrays,
                   unreadable=unreadable_document(unreadable or []))

    def arrays(self) -> EventArrays:
        """The events as analysis arrays, in event-id order."""
        if self.inline is not None:
            return self.inline
        if self.loaded is not None:
            return self.loaded
        if self.store_directory is None:
            raise SnapshotUnavailable("the snapshot names no columnar store and carries no events")
        arrays = _load_store(self.store_directory)
        if len(arrays) == self.rows:
            return arrays
        # The store grew since the snapshot: keep the rows it saw.
        kept = arrays.take(arrays.event_id.values <= self.high_water_event_id)
        if len(kept) != self.rows:
            raise SnapshotUnavailable(
                f"the columnar store {self.store_directory} holds {len(kept)} events up to id "
                f"{self.high_water_event_id}, the snapshot saw {self.rows}: it was rebuilt since; "
                "materialise raw_events again"
            )
        return kept


def with_arrays_loaded(snapshot: EventSnapshot) -> EventSnapshot:
    """The snapshot with its events loaded (once) and kept in it, for the steps of this process."""
    if snapshot.inline is not None or snapshot.loaded is not None:
        return snapshot
    return replace(snapshot, loaded=snapshot.arrays())


def _load_store(directory: str) -> EventArrays:
    """Every event of the store at ``directory`` as arrays. Not cached here: whoever hands a snapshot
    on keeps the loaded arrays for as long as it serves them (the raw_events IO manager, per run)."""
    store = ColumnarStore(directory)
    if store.manifest() is None:
        raise SnapshotUnavailable(f"no columnar store at {directory} any more; materialise raw_events again")
    return store.event_arrays()


def snapshot_events(engine: Engine, *, progress: Progress | None = None, count_runs: bool = True
                    ) -> tuple[EventSnapshot, RefreshResult | None, str | None]:
    """Refresh the columnar store of ``engine``'s database and snapshot it; ``progress(rows, total)``
    follows the extraction of new rows. ``count_runs=False`` leaves the snapshot's ``run_counts``
    empty for a caller that only reads its events (counting runs reads the store's run ids whole).

    Returns (snapshot, the refresh, None), or, without a usable store, (a snapshot of the whole
    table read from the database, None, why there was no store).
    """
    try:
        store, refresh = refresh_store(engine, progress=progress)
    except (ColumnarStoreError, OSError) as exc:
        store, refresh, reason = None, None, f"columnar store unavailable ({exc}); read the whole events table"
    else:
        reason = None if store is not None else "an in-memory database has no columnar store; read it whole"
    if store is None or refresh is None:
        # Only here is the table read row by row: the reader (pandas, the ORM's models) loads for it alone.
        from autopack_pipeline.storage.events import read_events_checked

        return EventSnapshot.from_frame(*read_events_checked(engine)), None, reason
    snapshot = EventSnapshot(rows=refresh.rows_after, high_water_event_id=refresh.high_water,
                             run_counts=_run_counts(store, refresh.high_water) if count_runs else {},
                             store_directory=str(store.directory),
                             unreadable=store.unreadable())
    return snapshot, refresh, None


def _run_counts(store: ColumnarStore, high_water: int) -> dict[str, int]:
    table = store.table(["run_id", "event_id"], as_codes=("run_id",))
    if table.num_rows == 0:
        return {}
    ids = table.column("event_id")
    # Filtering ten million dictionary-coded rows costs a third of a second: only when a refresh
    # since added rows past the snapshot's high-water id.
    seen = table.filter(pc.less_equal(ids, high_water)) if pc.max(ids).as_py() > high_water else table
    chunks = [chunk for chunk in seen.column("run_id").chunks if len(chunk)]
    if not chunks:
        return {}
    # Count codes per chunk, then add the counts up per name with one Arrow encoding of the chunks'
    # dictionaries: no Python per event and none per (chunk, run) either.
    per_code = [np.bincount(chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False) + 1,
                            minlength=len(chunk.dictionary) + 1)[1:] for chunk in chunks]
    names = pc.dictionary_encode(pa.concat_arrays([chunk.dictionary.cast(pa.string()) for chunk in chunks]))
    totals = np.bincount(names.indices.to_numpy(zero_copy_only=False), weights=np.concatenate(per_code),
                         minlength=len(names.dictionary)).astype(np.int64)
    present = totals > 0
    return dict(zip(names.dictionary.filter(pa.array(present)).to_pylist(), totals[present].tolist()))
