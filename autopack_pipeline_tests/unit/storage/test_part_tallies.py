"""Each part of the columnar copy is tallied as it is written (extraction, refresh, compaction), from
the rows in memory: the tally kept equals the one counted from the part's rows read back (the path a
store written by an earlier version takes), and the figures over every part are those of the table."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from autopack_pipeline.storage import columnar
from autopack_pipeline.storage import snapshot as snapshot_module
from autopack_pipeline.storage.columnar import ColumnarStore
from autopack_pipeline.storage.columnar.tallies import kept_tally, tally_file_of
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.snapshot import history_of
from autopack_pipeline.synth import bulk_load
from autopack_pipeline_tests.unit.storage.test_snapshot import same_history


@pytest.fixture
def store(tmp_path, monkeypatch) -> ColumnarStore:
    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    return ColumnarStore(directory)


def _per_run(runs) -> dict[str, int]:
    found: dict[str, int] = {}
    for run, events in zip(runs.column("run_id").to_pylist(), runs.column("events").to_pylist()):
        found[run] = found.get(run, 0) + events
    return found


def assert_tallied_as_written(store: ColumnarStore, engine) -> None:
    """Every part has the tally counted from its rows read back, and no other tally file is left;
    added up, they are the table's figures."""
    manifest = store.manifest()
    written = {part["file"]: kept_tally(store.directory, part["file"]) for part in manifest["parts"]}
    assert {path.name for path in store.directory.glob("tally-*")} == {tally_file_of(p["file"]) for p in manifest["parts"]}
    for part in manifest["parts"]:
        assert written[part["file"]] is not None, part["file"]
        tally, runs = written[part["file"]]
        read_back, read_runs = snapshot_module._part_tally(store, manifest, part, manifest["high_water_event_id"])
        assert tally == read_back and tally.events == part["rows"]
        assert _per_run(runs) == _per_run(read_runs)
    same_history(history_of(store, manifest["high_water_event_id"]), read_events(engine))


def _odd_values(engine, first: int) -> None:
    """Failures, disagreeing truncation flags, negative and absurd counts and a missing ceiling from
    event ``first`` on (the table allows no other missing value), so every figure of a tally counts."""
    with engine.begin() as connection:
        for offset, assignment in enumerate((
                "success = false", "truncated = true, is_truncated_output = false",
                "truncated = false, is_truncated_output = true", "actual_output_tokens = -3",
                "predicted_output_tokens = 5000000", "selected_budget = -2", "deliverable_count = 5000",
                "actual_max_tokens = -1", "actual_max_tokens = NULL")):
            connection.execute(sa.text(f"UPDATE token_estimation_v2_events SET {assignment} WHERE event_id = :id"),
                               {"id": first + 7 * offset})


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_a_cold_extraction_and_refreshes_tally_each_part_as_its_rows_read_back(engine, store, phase_ids):
    reused = phase_ids == "reused"  # few runs, their phase ids repeated; else Autopack's shape
    bulk_load(engine, 1500, runs=3 if reused else None, seed=31, phase_ids=phase_ids)
    _odd_values(engine, 3)
    store.refresh(engine)
    for seed, first in ((32, 1501), (33, 2101)):  # refresh appends: a part each
        bulk_load(engine, 600, runs=1 if reused else None, seed=seed, phase_ids=phase_ids)
        _odd_values(engine, first + 2)
        store.refresh(engine)
    assert len(store.manifest()["parts"]) == 3
    assert_tallied_as_written(store, engine)
    total = history_of(store, store.manifest()["high_water_event_id"]).tally
    assert total.truncation_disagreements and total.implausible["actual_output_tokens"]["negative"] == 3
    assert total.implausible["predicted_output_tokens"]["absurd"] == 3 and total.succeeded < total.events


def test_events_out_of_time_and_id_order_are_tallied_in_the_part_that_holds_them(sqlite_engine, store):
    """Timestamps against the id order, and an event set aside for an unreadable timestamp that joins a
    later part once fixed (a part with an id below the mark: the store is no longer sorted)."""
    engine = sqlite_engine
    bulk_load(engine, 800, runs=2, seed=41)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = "
                                   "'2030-01-01 00:00:00.000000' WHERE event_id IN (3, 40, 41)"))
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = 'not a date' "
                                   "WHERE event_id = 10"))
    _odd_values(engine, 5)
    store.refresh(engine)
    assert store.manifest()["rows"] == 799
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = "
                                   "'2020-01-01 00:00:00.000000', success = false WHERE event_id = 10"))
    bulk_load(engine, 300, runs=1, seed=42)
    store.refresh(engine)
    manifest = store.manifest()
    assert not manifest["sorted"] and manifest["parts"][-1]["min_event_id"] == 10 and manifest["rows"] == 1100
    assert_tallied_as_written(store, engine)


def test_a_compacted_part_is_tallied_and_the_merged_parts_tallies_are_removed(engine, store, monkeypatch):
    monkeypatch.setattr(columnar.freshness, "MAX_SMALL_PARTS", 2)
    bulk_load(engine, 500, runs=2, seed=51)
    compacted = [store.refresh(engine).parts_compacted]
    for seed in range(52, 58):
        bulk_load(engine, 40, runs=1, seed=seed)
        _odd_values(engine, store.manifest()["high_water_event_id"] + 1)
        compacted.append(store.refresh(engine).parts_compacted)
    assert compacted[-1] == 3 and len(store.manifest()["parts"]) == 1  # the last refresh merged three parts
    assert_tallied_as_written(store, engine)
    store.refresh(engine, full=True)  # a rebuild: the old parts' tallies go with them
    assert_tallied_as_written(store, engine)


def test_a_store_of_an_earlier_version_is_tallied_when_first_asked_and_its_new_parts_as_written(engine, store):
    """Parts written without a tally (an earlier version): a refresh tallies the part it writes and
    leaves the old ones; the history counts the old ones from their rows once and keeps their tallies."""
    bulk_load(engine, 900, runs=3, seed=61)
    store.refresh(engine)
    for path in store.directory.glob("tally-*"):
        path.unlink()
    bulk_load(engine, 200, runs=1, seed=62)
    store.refresh(engine)
    old, new = store.manifest()["parts"]
    assert kept_tally(store.directory, old["file"]) is None and kept_tally(store.directory, new["file"]) is not None
    same_history(history_of(store, new["max_event_id"]), read_events(engine))
    assert_tallied_as_written(store, engine)  # the old part's tally, kept now, is the one of its rows
