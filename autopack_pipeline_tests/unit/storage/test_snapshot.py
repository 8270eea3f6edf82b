"""The event snapshot raw_events hands on: the same events as the table, fixed at its refresh."""

from __future__ import annotations

import pickle
import sqlite3

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.events.io_manager import EventSnapshotIOManager, event_io_resources
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain import analysis as fm
from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.frames import conform_events_frame
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.snapshot import EventSnapshot, SnapshotUnavailable, snapshot_events, with_arrays_loaded
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
    assert snapshot.run_counts == {str(k): int(v) for k, v in frame["run_id"].value_counts().items()}


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


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_a_snapshot_keeps_its_rows_after_the_store_grows(engine, phase_ids):
    # Autopack's shape (many runs, every phase its own id) and reused ids (the same labels in both parts).
    bulk_load(engine, 500, runs=2 if phase_ids == "reused" else None, seed=3, phase_ids=phase_ids)
    first, refresh, fallback = snapshot_events(engine)
    assert fallback is None and refresh.new_rows == 500
    before = read_events(engine)
    bulk_load(engine, 300, runs=1 if phase_ids == "reused" else None, seed=4, phase_ids=phase_ids)
    second, refresh, _ = snapshot_events(engine)
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


def test_the_io_manager_hands_on_the_arrays_raw_events_loaded_in_the_same_process(engine, tmp_path):
    bulk_load(engine, 200, runs=1, seed=6)
    snapshot = with_arrays_loaded(snapshot_events(engine)[0])
    assert snapshot.loaded is not None and len(pickle.dumps(snapshot)) < 2_000  # never stored
    manager = EventSnapshotIOManager(str(tmp_path / "io"))
    manager.handle_output(dg.build_output_context(asset_key=raw_events.key), snapshot)
    assert manager.load_input(dg.build_input_context(asset_key=raw_events.key)) is snapshot.loaded
    elsewhere = EventSnapshotIOManager(str(tmp_path / "io")).load_input(dg.build_input_context(asset_key=raw_events.key))
    assert elsewhere is not snapshot.loaded and (elsewhere.event_id.values == snapshot.loaded.event_id.values).all()


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
def test_a_run_reads_the_events_once_for_raw_events_its_checks_and_the_drift_check(engine, monkeypatch):
    from autopack_pipeline.defs.asset_graph import DATA_QUALITY_CHECKS
    from autopack_pipeline.defs.events.drift_checks import estimator_drift
    from autopack_pipeline.storage import snapshot as snapshot_module

    bulk_load(engine, 400, runs=2, seed=7)
    reads = []
    real = snapshot_module._load_store
    monkeypatch.setattr(snapshot_module, "_load_store", lambda directory: reads.append(directory) or real(directory))
    result = dg.materialize([raw_events, *DATA_QUALITY_CHECKS, estimator_drift], resources={
        "telemetry_db": TelemetryDatabase(database_url=str(engine.url)), **event_io_resources()})
    assert result.success and len(result.get_asset_check_evaluations()) >= 4
    assert len(reads) == 1


def test_run_counts_are_those_of_the_rows_up_to_the_high_water_id(engine):
    """The store grew past a snapshot's high-water id: its counts leave the later rows out; at the
    store's own high-water id every row counts (the rows are counted without a filter then)."""
    from autopack_pipeline.storage.snapshot import _run_counts

    bulk_load(engine, 300, runs=3, seed=2)
    first = read_events(engine)
    store, refresh = columnar.refresh_store(engine)
    bulk_load(engine, 200, runs=2, seed=5)
    store, later = columnar.refresh_store(engine)
    counts = {str(k): int(v) for k, v in first["run_id"].value_counts().items()}
    assert _run_counts(store, refresh.high_water) == counts
    every = {str(k): int(v) for k, v in read_events(engine)["run_id"].value_counts().items()}
    assert _run_counts(store, later.high_water) == every != counts
