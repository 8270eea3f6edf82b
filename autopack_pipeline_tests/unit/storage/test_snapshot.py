"""The event snapshot raw_events hands on: the same events as the table, fixed at its refresh."""

from __future__ import annotations

import pickle
import sqlite3
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.events.io_manager import EventSnapshotIOManager, event_io_resources
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain import analysis as fm
from autopack_pipeline.domain.event_tally import tally_events
from autopack_pipeline.domain.windows import latest_day as fm_latest_day
from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.frames import conform_events_frame, event_arrays_from_frame
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.snapshot import (
    EventHistory,
    EventSnapshot,
    SnapshotUnavailable,
    history_of,
    snapshot_events,
)
from autopack_pipeline.synth import bulk_load
from autopack_pipeline_tests.oracle.compare import assert_close
from autopack_pipeline_tests.oracle.metrics import tier_metrics_document


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    engine = make_engine(f"sqlite:///{tmp_path / 'telemetry.db'}")
    upgrade_database(engine)
    yield engine
    engine.dispose()


def same_events(snapshot: EventSnapshot, frame) -> None:
    """The snapshot's arrays hold the frame's events: equal counts, ids and figures."""
    arrays = snapshot.arrays()
    assert snapshot.rows == len(arrays) == len(frame)
    assert arrays.event_id.values.tolist() == frame["event_id"].tolist()
    assert_close(fm.tier_metrics_document_arrays(arrays, clean_samples=0), tier_metrics_document(frame, 0))
    if snapshot.history is not None:
        same_history(snapshot.history, frame)


def same_history(history: EventHistory, frame) -> None:
    """The figures over every event are the frame's: the tally, the runs and the largest of them."""
    assert history.tally == tally_events(event_arrays_from_frame(frame))
    counts = frame["run_id"].value_counts()
    assert history.runs == len(counts)
    largest = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda item: (-item[1], item[0]))[:20]
    assert history.largest_runs == largest


@pytest.mark.integration  # materialises an asset through Dagster
def test_the_raw_events_asset_hands_on_a_snapshot_of_the_table(engine, tmp_path):
    bulk_load(engine, 700, runs=2, seed=2)
    result = dg.materialize([raw_events], resources={"telemetry_db": TelemetryDatabase(
        database_url=str(engine.url)), **event_io_resources()})
    assert result.success
    snapshot = result.output_for_node("raw_events")
    assert isinstance(snapshot, EventSnapshot) and snapshot.inline is None
    assert snapshot.store_directory == str(tmp_path / "columnar")
    assert snapshot.high_water_event_id == int(read_events(engine)["event_id"].max())
    same_events(snapshot, read_events(engine))
    assert len(pickle.dumps(snapshot)) < 2_000  # a reference, not the events
    metadata = result.asset_materializations_for_node("raw_events")[0].metadata
    assert metadata["dagster/row_count"].value == 700 and metadata["events_extracted"].value == 700
    assert metadata["runs"].value == 2 == snapshot.history.runs


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_a_snapshot_keeps_its_rows_after_the_store_grows(engine, phase_ids):
    # Autopack's shape (many runs, every phase its own id) and reused ids (the same labels in both parts).
    bulk_load(engine, 500, runs=2 if phase_ids == "reused" else None, seed=3, phase_ids=phase_ids)
    first, refresh, fallback = snapshot_events(engine, with_history=True)
    assert fallback is None and refresh.new_rows == 500
    before = read_events(engine)
    bulk_load(engine, 300, runs=1 if phase_ids == "reused" else None, seed=4, phase_ids=phase_ids)
    second, refresh, _ = snapshot_events(engine, with_history=True)
    assert refresh.new_rows == 300 and second.rows == 800
    same_events(first, before)  # the store holds 800 rows; the first snapshot still sees its 500
    same_events(second, read_events(engine))


def test_the_io_manager_stores_a_description_and_loads_the_events_once_per_snapshot(engine, tmp_path):
    """raw_events' IO manager replaces the old module cache: the arrays live as long as the IO manager
    object (one run in process); another object (another process) loads them again from the disk."""
    bulk_load(engine, 200, runs=1, seed=5)
    snapshot, _, _ = snapshot_events(engine)
    manager = EventSnapshotIOManager(str(tmp_path / "io"))
    manager.handle_output(dg.build_output_context(asset_key=raw_events.key), snapshot)
    stored = tmp_path / "io" / "raw_events.snapshot.json"
    assert stored.exists() and stored.stat().st_size < 10_000  # a description, not the events
    loaded = manager.load_input(dg.build_input_context(asset_key=raw_events.key))
    assert manager.load_input(dg.build_input_context(asset_key=raw_events.key)) is loaded
    elsewhere = EventSnapshotIOManager(str(tmp_path / "io")).load_input(dg.build_input_context(asset_key=raw_events.key))
    assert elsewhere is not loaded and len(elsewhere) == len(loaded) == 200
    assert (elsewhere.event_id.values == loaded.event_id.values).all()


def test_the_io_manager_hands_each_step_what_it_reads(engine, tmp_path):
    """Typed EventHistory: the figures over every event (no event read); ANALYSIS_REACH metadata: the
    events since the analysis' reach; otherwise every event."""
    from autopack_pipeline.defs.events.io_manager import ANALYSIS_REACH
    from autopack_pipeline.services.analysis import events_within_reach
    from autopack_pipeline.settings import load_settings

    bulk_load(engine, 300, runs=3, seed=6)
    _spread_over_days(engine, 90)
    snapshot = snapshot_events(engine, with_history=True)[0]
    manager = EventSnapshotIOManager(str(tmp_path / "io"))
    manager.handle_output(dg.build_output_context(asset_key=raw_events.key), snapshot)

    def context(**kwargs):
        return dg.build_input_context(asset_key=raw_events.key, **kwargs)

    history = manager.load_input(context(dagster_type=dg.DagsterType(lambda _c, v: True, typing_type=EventHistory,
                                                                     name="EventHistory")))
    assert history == snapshot.history and history.tally.events == 300
    every = manager.load_input(context())
    assert len(every) == 300
    reach = manager.load_input(context(definition_metadata=ANALYSIS_REACH))
    expected = events_within_reach(load_settings(), snapshot)
    assert 0 < len(reach) == len(expected) < 300
    assert (reach.event_id.values == expected.event_id.values).all()
    assert manager.load_input(context(definition_metadata=ANALYSIS_REACH)) is reach  # kept for the run
    assert manager.load_input(context()) is every


def test_the_io_manager_carries_inline_events_in_a_file(tmp_path):
    frame = conform_events_frame(pd.DataFrame({"event_id": [1, 2], "run_id": ["r", "r"], "phase_id": ["a", "b"]}))
    manager = EventSnapshotIOManager(str(tmp_path))
    manager.handle_output(dg.build_output_context(asset_key=raw_events.key), EventSnapshot.from_frame(frame))
    loaded = EventSnapshotIOManager(str(tmp_path)).load_input(dg.build_input_context(asset_key=raw_events.key))
    assert list(loaded.event_id.values) == [1, 2]


def test_a_rebuilt_store_refuses_an_old_snapshot_with_a_reason(engine):
    bulk_load(engine, 400, runs=2, seed=6)
    snapshot, _, _ = snapshot_events(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM token_estimation_v2_events WHERE event_id % 2 = 0"))
    columnar.ColumnarStore(snapshot.store_directory).refresh(engine, full=True)
    with pytest.raises(SnapshotUnavailable, match="rebuilt since; materialise raw_events again"):
        snapshot.arrays()
    with pytest.raises(SnapshotUnavailable, match="rebuilt since; materialise raw_events again"):
        snapshot.arrays(since=datetime(2000, 1, 1, tzinfo=timezone.utc))


def test_without_a_store_the_events_travel_inside_the_snapshot(engine, tmp_path, monkeypatch):
    bulk_load(engine, 150, runs=1, seed=7)
    # An in-memory copy of that database (bulk_load writes files only): it has no store.
    memory = make_engine("sqlite://")
    with sqlite3.connect(engine.url.database) as source:
        source.backup(memory.raw_connection().driver_connection)
    snapshot, refresh, reason = snapshot_events(memory)
    assert refresh is None and "in-memory" in reason and snapshot.inline is not None
    same_events(pickle.loads(pickle.dumps(snapshot)), read_events(engine))

    # A store directory that cannot be created (a file is in the way): read whole, and say why.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(blocker / "columnar"))
    snapshot, refresh, reason = snapshot_events(engine)
    assert refresh is None and reason.startswith("columnar store unavailable")
    same_events(snapshot, read_events(engine))
    assert np.all(np.diff(snapshot.arrays().event_id.values) > 0)


@pytest.mark.integration  # materialises through Dagster
def test_raw_events_and_its_checks_read_no_event_once_each_part_is_tallied(engine, monkeypatch):
    """The parts are tallied as the store writes them: the first run after an extraction reads no event
    in raw_events or the data-quality checks (the drift check reads every event, once). A store written
    by an earlier version, its parts untallied: its first run reads every event once in raw_events to
    tally the parts and hands them on to the drift check; a later run reads none for the tallies."""
    from autopack_pipeline.defs.asset_graph import DATA_QUALITY_CHECKS
    from autopack_pipeline.defs.events.drift_checks import estimator_drift
    from autopack_pipeline.storage import snapshot as snapshot_module

    reads = []
    real, real_tally = columnar.ColumnarStore.event_arrays, snapshot_module._part_tally

    def counted(store, **kwargs):
        reads.append("every event" if kwargs.get("parts") is None else len(kwargs["parts"]))
        return real(store, **kwargs)

    def tallied(*args, **kwargs):
        reads.append("a part tallied from its rows")
        return real_tally(*args, **kwargs)

    monkeypatch.setattr(columnar.ColumnarStore, "event_arrays", counted)
    monkeypatch.setattr(snapshot_module, "_part_tally", tallied)
    resources = {"telemetry_db": TelemetryDatabase(database_url=str(engine.url)), **event_io_resources()}
    bulk_load(engine, 400, runs=2, seed=7)
    result = dg.materialize([raw_events, *DATA_QUALITY_CHECKS], resources=resources)
    assert result.success and len(result.get_asset_check_evaluations()) >= 3
    assert reads == []  # extracted and tallied by raw_events' refresh: not one event read for the figures
    result = dg.materialize([raw_events, *DATA_QUALITY_CHECKS, estimator_drift], resources=resources)
    assert result.success and reads == ["every event"]  # the drift check's
    store = columnar.ColumnarStore.for_database(engine)
    tallies = list(store.directory.glob("tally-*"))
    assert len(tallies) == 1
    for path in tallies:  # as a store written before parts were tallied as written
        path.unlink()
    reads.clear()
    result = dg.materialize([raw_events, *DATA_QUALITY_CHECKS, estimator_drift], resources=resources)
    # No part tallied: every event read once to tally the part, and handed on to the drift check.
    assert result.success and reads == [1, "a part tallied from its rows"]
    reads.clear()
    result = dg.materialize([raw_events, *DATA_QUALITY_CHECKS, estimator_drift], resources=resources)
    assert result.success and reads == ["every event"]  # the drift check's; the tally was kept


def test_the_history_is_that_of_the_rows_up_to_the_high_water_id(engine):
    """The store grew past a snapshot's high-water id: its figures leave the later rows out, also when
    a compaction merged them into one part with the earlier rows (that part is tallied up to the id)."""
    bulk_load(engine, 300, runs=3, seed=2)
    first = read_events(engine)
    store, refresh = columnar.refresh_store(engine)
    for seed in range(5, 15):  # ten small parts: more than MAX_SMALL_PARTS, so they are merged
        bulk_load(engine, 20, runs=1, seed=seed)
        store, later = columnar.refresh_store(engine)
    assert len(store.manifest()["parts"]) < 11 and store.manifest()["parts"][0]["max_event_id"] > refresh.high_water
    same_history(history_of(store, refresh.high_water), first)
    same_history(history_of(store, later.high_water), read_events(engine))


def _spread_over_days(engine, days: int, first: int = 1, start_day: int = 0) -> None:
    """Give the events from id ``first`` up timestamps spread evenly over ``days`` days from
    2025-01-01 + ``start_day``, in id order."""
    with engine.begin() as connection:
        top = connection.execute(sa.text("SELECT max(event_id) FROM token_estimation_v2_events")).scalar()
        connection.execute(sa.text(
            "UPDATE token_estimation_v2_events SET timestamp = strftime('%Y-%m-%d %H:%M:%f', '2025-01-01', "
            "'+' || (:offset + (event_id - :first) * :seconds / (:top - :first + 1)) || ' seconds') "
            "WHERE event_id >= :first"),
            {"first": first, "top": top, "seconds": days * 86_400, "offset": start_day * 86_400})


@pytest.mark.parametrize("late_event", [False, True])
def test_the_analysis_reach_reads_only_the_parts_that_hold_it_whatever_the_order(engine, monkeypatch, late_event):
    """Three parts over 90 days; the 28-day window lies in the last. With ``late_event`` the first
    part also holds the newest event (events not in time order): it is read too, and the windows are
    anchored on that event. Either way the analysis' figures are those computed over every event."""
    from autopack_pipeline.services.analysis import analysis_reach, events_for_analysis, events_within_reach
    from autopack_pipeline.services.pipeline import metrics_stage, sample_stage
    from autopack_pipeline.settings import load_settings

    for load, seed in enumerate((11, 12, 13)):  # days 0-30, 30-60, 60-90: a part each
        bulk_load(engine, 400, runs=4, seed=seed)
        _spread_over_days(engine, 30, first=400 * load + 1, start_day=30 * load)
        if late_event and load == 0:
            with engine.begin() as connection:
                connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = "
                                           "'2025-03-31 12:00:00.000000' WHERE event_id = 5"))
        columnar.refresh_store(engine)
    snapshot, _, _ = snapshot_events(engine)
    store = columnar.ColumnarStore(snapshot.store_directory)
    assert len(store.manifest()["parts"]) == 3
    parts = []
    real = columnar.ColumnarStore.event_arrays
    monkeypatch.setattr(columnar.ColumnarStore, "event_arrays",
                        lambda self, **kw: parts.append([p["file"] for p in kw.get("parts") or []]) or real(self, **kw))
    settings = load_settings()
    every = snapshot.arrays()
    reach = events_within_reach(settings, snapshot)
    assert snapshot.latest_day() == fm_latest_day(every)
    since = analysis_reach(settings, snapshot.latest_day())
    stamps = every.timestamp_us
    expected = every.event_id.values[stamps.notna() & (stamps.values >= int(since.timestamp() * 1_000_000))]
    assert reach.event_id.values.tolist() == expected.tolist()
    read = parts[-1]
    assert (store.manifest()["parts"][0]["file"] in read) == late_event  # the oldest part only when it holds late events
    assert store.manifest()["parts"][1]["file"] not in read and store.manifest()["parts"][2]["file"] in read
    for arrays in (every, reach):  # the same figures from both
        windowed = events_for_analysis(settings, arrays)
        samples = sample_stage(windowed)
        metrics = metrics_stage(windowed, samples, arrays)
        if arrays is every:
            reference = (samples.count, samples.group_counts, metrics.document, metrics.last_7_days)
        else:
            assert (samples.count, samples.group_counts, metrics.document, metrics.last_7_days) == reference


def test_a_tally_is_the_same_read_with_every_event_or_part_by_part(engine):
    """The first tally reads every event once (no part tallied yet); a part whose tally file is gone
    is read on its own. Both give the frame's figures."""
    from autopack_pipeline.storage import snapshot as snapshot_module

    for seed in (21, 22, 23):
        bulk_load(engine, 200, runs=2, seed=seed)
        store, refresh = columnar.refresh_store(engine)
    written = sorted(store.directory.glob("tally-*"))
    assert len(written) == 3  # tallied by the refreshes; removed, as in a store of an earlier version
    for path in written:
        path.unlink()
    history, every = snapshot_module._history_and_events(store, refresh.high_water)
    assert every is not None and len(every) == 600  # every event read once, for all three parts
    same_history(history, read_events(engine))
    tallies = sorted(store.directory.glob("tally-*"))
    assert len(tallies) == 3
    tallies[1].unlink()
    again, every = snapshot_module._history_and_events(store, refresh.high_water)
    assert every is None and again == history and len(list(store.directory.glob("tally-*"))) == 3


def test_a_description_from_before_the_history_still_loads_its_events(engine, tmp_path):
    """A raw_events materialisation stored by the previous version (run counts, no history): the
    analysis steps still load its events; a data-quality check asks for raw_events again."""
    import json

    bulk_load(engine, 120, runs=2, seed=8)
    snapshot = snapshot_events(engine)[0]
    stored = tmp_path / "raw_events.snapshot.json"
    stored.write_text(json.dumps({"rows": snapshot.rows, "high_water_event_id": snapshot.high_water_event_id,
                                  "run_counts": {"r": 120}, "store_directory": snapshot.store_directory,
                                  "unreadable": snapshot.unreadable, "inline": None}))
    manager = EventSnapshotIOManager(str(tmp_path))
    assert len(manager.load_input(dg.build_input_context(asset_key=raw_events.key))) == 120
    typed = dg.build_input_context(asset_key=raw_events.key, dagster_type=dg.DagsterType(
        lambda _c, v: True, typing_type=EventHistory, name="EventHistory"))
    with pytest.raises(dg.Failure, match="materialise raw_events again"):
        manager.load_input(typed)
