"""A cold SQLite extraction read by child processes (``storage/columnar/sqlite_children.py``) writes the
same store as the parent reading every batch itself: the same parts, tallies, codes and rows set aside;
a batch the children cannot read as the parent would, or a child that dies, is read by the parent; an
extraction that fails ends its children and leaves no manifest."""

from __future__ import annotations

import json
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.columnar import ColumnarStore, sqlite_children
from autopack_pipeline.storage.columnar.prefetch import prefetch
from autopack_pipeline.synth import bulk_load

BATCH = 250  # ids per batch here, so a few thousand events make enough batches for the children


@pytest.fixture
def odd_database(sqlite_engine):
    """3,000 events in 12 batches: odd values, unreadable timestamps, and a flag of 2 (ADBC reads it as\n    an integer, the CSV route refuses it: the batch goes back to the parent)."""
    bulk_load(sqlite_engine, 3000, runs=4, seed=7)
    with sqlite_engine.begin() as connection:
        run = connection.exec_driver_sql
        run("UPDATE token_estimation_v2_events SET model = 7 WHERE event_id = 2900")  # a number in a text column
        run("UPDATE token_estimation_v2_events SET timestamp = 'not a date' WHERE event_id IN (10, 1700)")
        run("UPDATE token_estimation_v2_events SET timestamp = '2025-02-03 04:05:06' WHERE event_id = 11")
        run("UPDATE token_estimation_v2_events SET stop_reason = NULL, actual_max_tokens = NULL WHERE event_id < 400")
        run("UPDATE token_estimation_v2_events SET success = 2 WHERE event_id = 1400")  # not a flag: batch 6
    return sqlite_engine


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(columnar.store, "BATCH_IDS", BATCH)
    monkeypatch.setattr(columnar.store, "PART_ROWS", 1000)
    monkeypatch.setattr(sqlite_children, "MIN_BATCHES", 2)


def _contents(store: ColumnarStore) -> tuple[dict, dict]:
    manifest = json.loads(store.manifest_path.read_text())
    manifest.pop("updated_at")
    files = {path.name: pq.read_table(path) for path in sorted(store.directory.glob("*.parquet"))}
    return manifest, files


def _assert_same(one: ColumnarStore, other: ColumnarStore) -> None:
    (manifest, files), (expected_manifest, expected_files) = _contents(one), _contents(other)
    assert manifest == expected_manifest
    assert files.keys() == expected_files.keys()
    for name, table in files.items():
        assert table.equals(expected_files[name], check_metadata=True), name


def _parent_reads(monkeypatch) -> list[tuple]:
    """The batches the parent reads itself (the children's reads do not pass here)."""
    read: list[tuple] = []
    original = columnar._BatchReader.read_apart

    def spy(self, where, params):
        read.append(params)
        return original(self, where, params)

    monkeypatch.setattr(columnar._BatchReader, "read_apart", spy)
    return read


def _reference(engine, tmp_path, monkeypatch) -> ColumnarStore:
    with monkeypatch.context() as patch:
        patch.setattr(columnar.store, "child_readers", lambda reader, batches: None)
        reference = ColumnarStore(tmp_path / "parent")
        reference.refresh(engine)
    return reference


def test_the_children_write_the_store_the_parent_writes(odd_database, tmp_path, monkeypatch, small_batches):
    reference = _reference(odd_database, tmp_path, monkeypatch)
    parent_read = _parent_reads(monkeypatch)
    store = ColumnarStore(tmp_path / "children")
    result = store.refresh(odd_database)
    assert result.new_rows == 2998 and result.parts_written == 3
    # Only the batch holding a flag of 2 came back to the parent.
    assert parent_read == [(1250, 1500)]
    _assert_same(store, reference)
    assert [row["event_id"] for row in store.unreadable()["rows"]] == [10, 1700]
    assert store.events_frame()["model"].iloc[2897] == "7"


def test_a_later_refresh_by_the_children_asks_again_for_the_rows_set_aside(odd_database, tmp_path, monkeypatch,
                                                                            small_batches):
    stores = [ColumnarStore(tmp_path / "parent"), ColumnarStore(tmp_path / "children")]
    with monkeypatch.context() as patch:
        patch.setattr(columnar.store, "child_readers", lambda reader, batches: None)
        stores[0].refresh(odd_database)
    stores[1].refresh(odd_database)
    with odd_database.begin() as connection:  # the rows set aside fixed, and six batches more
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET timestamp = '2025-03-04 05:06:07' "
                                   "WHERE event_id IN (10, 1700)")
    bulk_load(odd_database, 1500, runs=2, seed=8)
    parent_read = _parent_reads(monkeypatch)
    result = stores[1].refresh(odd_database)
    assert result.new_rows == 1502 and parent_read == []  # the set-aside ranges read by the children too
    with monkeypatch.context() as patch:
        patch.setattr(columnar.store, "child_readers", lambda reader, batches: None)
        stores[0].refresh(odd_database)
    _assert_same(stores[1], stores[0])
    assert stores[1].unreadable()["count"] == 0


def test_a_child_that_dies_leaves_its_batches_to_the_parent(odd_database, tmp_path, monkeypatch, small_batches, caplog):
    reference = _reference(odd_database, tmp_path, monkeypatch)
    parent_read = _parent_reads(monkeypatch)
    monkeypatch.setattr(sqlite_children, "child_command",
                        lambda: [sys.executable, "-c", "import sys; sys.stderr.write('gone'); sys.exit(3)"])
    store = ColumnarStore(tmp_path / "children")
    assert store.refresh(odd_database).new_rows == 2998
    assert len(parent_read) == 12
    assert "a reading child process ended" in caplog.text and "exit code 3" in caplog.text
    _assert_same(store, reference)


def test_a_failed_extraction_ends_its_children_and_writes_no_manifest(odd_database, tmp_path, monkeypatch,
                                                                     small_batches):
    started: list[sqlite_children.ChildReaders] = []
    original_init = sqlite_children.ChildReaders.__init__

    def keep(self, *args):
        original_init(self, *args)
        started.append(self)

    monkeypatch.setattr(sqlite_children.ChildReaders, "__init__", keep)
    original_append = ColumnarStore._append_part

    def fail_second(self, manifest, table, inputs=None):
        if manifest["parts"]:
            raise OSError("disk full")
        return original_append(self, manifest, table, inputs)

    monkeypatch.setattr(ColumnarStore, "_append_part", fail_second)
    store = ColumnarStore(tmp_path / "children")
    with pytest.raises(OSError, match="disk full"):
        store.refresh(odd_database)
    assert store.manifest() is None
    assert len(started) == 1 and all(process.poll() is not None for process in started[0].processes)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("prefetch")]


def test_a_short_refresh_is_read_in_the_parent(sqlite_engine, tmp_path, monkeypatch):
    bulk_load(sqlite_engine, 300, runs=1, seed=2)
    parent_read = _parent_reads(monkeypatch)
    assert ColumnarStore(tmp_path / "store").refresh(sqlite_engine).new_rows == 300
    assert parent_read == [(0, 300)]  # one batch: starting a child would cost more than it reads


def test_a_batch_adbc_types_otherwise_than_the_csv_route_reads_it_is_refused():
    kinds = {"event_id": "key", "run_id": "label", "timestamp": "timestamp", "success": "flag"}

    def table(**columns):
        base = {"event_id": pa.array([1, 2]), "run_id": pa.array(["a", "b"]), "timestamp": pa.array(["x", None]),
                "success": pa.array([0, 1])}
        return pa.table({**base, **columns})

    assert sqlite_children.checked(table(), kinds).equals(table())
    loose = sqlite_children.checked(table(timestamp=pa.nulls(2)), kinds)  # NULL in every row: text, no value
    assert loose.column("timestamp").type == pa.string() and loose.column("timestamp").null_count == 2
    for odd in ({"event_id": pa.array([1.0, 2.5])}, {"run_id": pa.array([1, 2])}, {"success": pa.array([0, 2])},
                {"success": pa.array([-1, 0])}, {"timestamp": pa.array([b"x", None])}):
        with pytest.raises(ValueError):
            sqlite_children.checked(table(**odd), kinds)


def test_prefetch_over_two_workers_keeps_the_order_and_raises_in_place():
    def convert(item):
        if item == 7:
            raise ValueError("seven")
        return item * 10

    got = []
    with pytest.raises(ValueError, match="seven"):
        for item, converted in prefetch(range(20), convert, depth=1, workers=2):
            got.append((item, converted))
    assert got == [(i, i * 10) for i in range(7)]
    assert [converted for _item, converted in prefetch(range(9), lambda i: -i, workers=2)] == [-i for i in range(9)]
