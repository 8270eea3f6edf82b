"""A refresh that finds the columnar copy up to date asks the database's catalog and nothing else: for a
SQLite file opened as a handle, no engine is made (no SQLAlchemy); anything to do is the full refresh's."""

from __future__ import annotations

import json

import pytest

from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.columnar import ColumnarStore
from autopack_pipeline.storage.handle import DatabaseHandle, describe_database
from autopack_pipeline.synth import bulk_load


@pytest.fixture
def store(tmp_path, monkeypatch) -> ColumnarStore:
    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    return ColumnarStore(directory)


def _handle(sqlite_engine) -> DatabaseHandle:
    return DatabaseHandle(f"sqlite:///{describe_database(sqlite_engine).sqlite_path}")


def test_an_up_to_date_copy_is_found_so_without_an_engine(sqlite_engine, store):
    bulk_load(sqlite_engine, 900, runs=2, seed=1)
    first = store.refresh(sqlite_engine)
    manifest_before = store.manifest_path.read_bytes()
    database = _handle(sqlite_engine)
    again = store.refresh(database)
    assert not database.has_engine
    assert (again.new_rows, again.rows_before, again.rows_after, again.high_water, again.rebuilt) == (
        0, first.rows_after, first.rows_after, first.high_water, None)
    assert store.manifest_path.read_bytes() == manifest_before  # nothing to record: not written again


def test_new_rows_are_extracted_through_the_engine(sqlite_engine, store):
    bulk_load(sqlite_engine, 600, runs=1, seed=1)
    store.refresh(sqlite_engine)
    bulk_load(sqlite_engine, 250, runs=1, seed=2)
    database = _handle(sqlite_engine)
    result = store.refresh(database)
    assert database.has_engine and (result.new_rows, result.rows_after) == (250, 850)
    assert store.events_frame()["event_id"].tolist() == list(range(1, 851))
    database.dispose()


def test_a_changed_row_at_the_mark_rebuilds(sqlite_engine, store):
    bulk_load(sqlite_engine, 300, runs=1, seed=1)
    store.refresh(sqlite_engine)
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET actual_output_tokens = 77 "
                                   "WHERE event_id = (SELECT max(event_id) FROM token_estimation_v2_events)")
    database = _handle(sqlite_engine)
    result = store.refresh(database)
    assert database.has_engine and result.rebuilt and "gone or changed" in result.rebuilt
    database.dispose()


@pytest.mark.parametrize("record", ["unreadable", "gaps", "parts"])
def test_a_manifest_with_something_to_do_goes_through_the_full_refresh(sqlite_engine, store, monkeypatch, record):
    bulk_load(sqlite_engine, 300, runs=1, seed=1)
    store.refresh(sqlite_engine)
    manifest = store.manifest()
    if record == "unreadable":  # rows set aside for a bad timestamp are asked for again
        manifest["unreadable"] = {"count": 1, "ranges": [[10_000, 10_000]], "rows": []}
    elif record == "gaps":  # an id gap still within its retention
        manifest["gaps"] = [[10_000, 10_001, 9e18]]
    else:  # more small parts than the refresh leaves uncompacted
        monkeypatch.setattr(columnar.freshness, "MAX_SMALL_PARTS", 0)
    store.manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    database = _handle(sqlite_engine)
    result = store.refresh(database)
    assert database.has_engine and result.rows_after == 300
    database.dispose()


def test_a_refresh_of_an_engine_asks_the_engine(sqlite_engine, store, monkeypatch):
    bulk_load(sqlite_engine, 200, runs=1, seed=1)
    store.refresh(sqlite_engine)
    asked = []
    original = columnar.store.up_to_date

    def spy(directory, manifest, source, database):
        asked.append(database.engine is sqlite_engine)
        return original(directory, manifest, source, database)

    monkeypatch.setattr(columnar.store, "up_to_date", spy)
    assert store.refresh(sqlite_engine).new_rows == 0 and asked == [True]
