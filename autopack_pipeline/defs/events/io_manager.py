"""The IO manager of raw_events: it stores where the events are, and hands each step what it reads.

raw_events returns an :class:`EventSnapshot` (the columnar store's directory, its row count and
high-water event id at the refresh, and the figures over every event). Pickling ten million events
between steps would cost gigabytes and a minute, and the columnar store already holds them, so this
IO manager writes only the snapshot's description (a small JSON file per materialisation) and, on
load, reads from the store what the step asks for:

- an input typed :class:`EventHistory` (the data-quality checks): the figures over every event the
  snapshot saw, from its description; no event is read;
- an input whose definition metadata says ``{"events": "analysis_reach"}`` (``ANALYSIS_REACH``; the
  assets that read the analysis window): the events since the analysis' reach
  (``services.analysis.events_within_reach``), from only the parts that hold them;
- any other input typed :class:`EventArrays` (the drift check, generated_tasks, the per-day metrics):
  every event the snapshot saw.

The file and the store are on disk, so any executor's step (another process included) loads the
same events. A database without a columnar store (in-memory SQLite) has its events inside the
snapshot: they are pickled beside the JSON.

Loaded arrays are kept by this IO manager object for the steps it serves (with the in-process
executor, one run), keyed on the snapshot and the reach: a run's steps read each once. When
raw_events read every event itself (tallying a store whose parts were written untallied, by an
earlier version), it hands
them over: then nothing is read again, and the analysis' reach is taken from them. The drift
report of every event is kept beside them: the estimator_drift check and generated_tasks both need
it, and it costs seconds at ten million events, so a run computes it once.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.drift import DriftReport
from autopack_pipeline.services.analysis import events_within_reach
from autopack_pipeline.services.pipeline import drift_report
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.snapshot import EventHistory, EventSnapshot

# The input metadata of a step that reads only the analysis' reach of the events (see above).
ANALYSIS_REACH = {"events": "analysis_reach"}
_EVERY_EVENT = "every_event"


class EventSnapshotIOManager(dg.IOManager):
    """Stores a snapshot's description under ``base_dir``; loads what a step reads of the events it names."""

    def __init__(self, base_dir: str) -> None:
        self._base = Path(base_dir)
        self._loaded: dict[tuple, EventArrays] = {}  # (store, rows, high water, reach) -> arrays
        self._drift: dict[tuple, DriftReport] = {}  # same key as _loaded, emptied with it
        # The last description read, by (path, mtime, size): every downstream step of a run loads the same one.
        self._description: tuple[tuple, dict[str, Any]] | None = None

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        key = context.asset_key if context.has_asset_key else dg.AssetKey(context.name)
        return self._base.joinpath(*key.path).with_suffix(".snapshot.json")

    def handle_output(self, context: dg.OutputContext, obj: EventSnapshot) -> None:
        if not isinstance(obj, EventSnapshot):
            raise TypeError(f"the event snapshot IO manager stores EventSnapshot values, not {type(obj).__name__}")
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        description: dict[str, Any] = {
            "rows": obj.rows, "high_water_event_id": obj.high_water_event_id,
            "store_directory": obj.store_directory, "unreadable": obj.unreadable, "inline": None,
            "history": None if obj.history is None else obj.history.as_dict(),
        }
        if obj.inline is None and obj.loaded is not None:  # this run's steps get the events raw_events read
            self._loaded = {self._key(obj, _EVERY_EVENT): obj.loaded}
            self._drift = {}
        if obj.inline is not None:  # no columnar store: the events themselves must travel
            inline = path.with_suffix(".arrays.pickle")
            inline.write_bytes(pickle.dumps(obj.inline, protocol=pickle.HIGHEST_PROTOCOL))
            description["inline"] = inline.name
        path.write_text(json.dumps(description))

    def load_snapshot(self, context: dg.InputContext) -> EventSnapshot:
        """The snapshot as raw_events stored it (its events inline when it had no store)."""
        path = self._path(context)
        if not path.exists():
            raise dg.Failure(f"raw_events has no stored snapshot at {path}: materialise raw_events first")
        stat = path.stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._description is None or self._description[0] != stamp:
            self._description = (stamp, json.loads(path.read_text()))
        description = dict(self._description[1])
        inline_name = description.pop("inline")
        # A description written before the figures over every event were kept has run counts instead
        # (megabytes at ten million events, read by no step): the events it names still load.
        description.pop("run_counts", None)
        history = description.pop("history", None)
        inline = pickle.loads(path.with_name(inline_name).read_bytes()) if inline_name else None
        return EventSnapshot(**description, inline=inline,
                             history=None if history is None else EventHistory.from_dict(history))

    def load_input(self, context: dg.InputContext) -> EventArrays | EventHistory:
        snapshot = self.load_snapshot(context)
        if _typing_type(context) is EventHistory:
            if snapshot.history is None:
                raise dg.Failure("this raw_events materialisation stored no figures over every event; "
                                 "materialise raw_events again")
            return snapshot.history
        if (context.definition_metadata or {}).get("events") == ANALYSIS_REACH["events"]:
            return self.arrays_within_reach(snapshot)
        return self.arrays_of(snapshot)

    def arrays_of(self, snapshot: EventSnapshot) -> EventArrays:
        """Every event ``snapshot`` names, read once per snapshot for every step this object serves
        (the drift checks ask with the snapshot of their own refresh: the same one, when nothing new
        arrived since raw_events)."""
        return self._kept(snapshot, _EVERY_EVENT, snapshot.arrays)

    def arrays_within_reach(self, snapshot: EventSnapshot) -> EventArrays:
        """The events of ``snapshot`` the analysis steps read (``services.analysis.events_within_reach``)."""
        # Taken from every event when this object holds them already (no part read again).
        every = self._loaded.get(self._key(snapshot, _EVERY_EVENT))
        source = snapshot if every is None else replace(snapshot, loaded=every)
        return self._kept(snapshot, "analysis_reach", lambda: events_within_reach(load_settings(), source))

    @staticmethod
    def _key(snapshot: EventSnapshot, reach: str) -> tuple:
        return (snapshot.store_directory, snapshot.rows, snapshot.high_water_event_id, reach)

    def _kept(self, snapshot: EventSnapshot, reach: str, load) -> EventArrays:
        if snapshot.inline is not None:
            return load()
        key = self._key(snapshot, reach)
        snapshot_key = key[:3]
        if key not in self._loaded:
            # Only this snapshot's arrays are kept (they are large): another snapshot's go.
            self._loaded = {k: v for k, v in self._loaded.items() if k[:3] == snapshot_key}
            self._drift = {k: v for k, v in self._drift.items() if k in self._loaded}
            self._loaded[key] = load()
        return self._loaded[key]

    def drift_of(self, arrays: EventArrays) -> DriftReport:
        """``drift_report(arrays)``, computed once for the arrays this object handed out; arrays it
        does not hold (inline ones, or read elsewhere) are analysed afresh each time."""
        key = next((key for key, held in self._loaded.items() if held is arrays), None)
        if key is None:
            return drift_report(arrays, load_settings())
        if key not in self._drift:
            self._drift[key] = drift_report(arrays, load_settings())
        return self._drift[key]


def _typing_type(context: dg.InputContext) -> Any:
    """The Python type the step's input is annotated with; None for a context built without one (tests)."""
    try:
        return context.dagster_type.typing_type
    except dg.DagsterInvariantViolationError:
        return None


class EventSnapshotIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Where raw_events' snapshot descriptions go: ``base_dir``, by default the Dagster instance's storage."""

    base_dir: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> EventSnapshotIOManager:
        return EventSnapshotIOManager(self.base_dir or context.instance.storage_directory())


def event_io_resources() -> dict[str, EventSnapshotIOManagerFactory]:
    """The resource raw_events needs beside telemetry_db, for a ``dg.materialize`` outside ``defs``."""
    from autopack_pipeline.defs.events.assets import EVENTS_IO_MANAGER

    return {EVENTS_IO_MANAGER: EventSnapshotIOManagerFactory()}
