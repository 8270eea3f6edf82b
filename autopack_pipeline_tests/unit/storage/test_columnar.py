"""The columnar copy of the events table: it reads back exactly as the table does, a refresh asks the
database only for new rows, and anything that would make it stale (another database, a replaced file,
a late PostgreSQL commit) is caught."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from autopack_pipeline.domain import analysis as fm
from autopack_pipeline.services import seed_files
from autopack_pipeline.services.analysis import WindowedEvents
from autopack_pipeline.services.pipeline import analyse_events
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage import adbc, columnar
from autopack_pipeline.storage.adbc import AdbcUnavailable
from autopack_pipeline.storage.columnar import ColumnarStore, ColumnarStoreError, store_directory_for
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import (
    ensure_run_and_phase,
    estimation_row,
    insert_estimation_row,
    read_events,
)
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.synth import bulk_load
from autopack_pipeline_tests.oracle.calibration import calibrate_autopack_median
from autopack_pipeline_tests.oracle.compare import assert_close
from autopack_pipeline_tests.oracle.coverage import calibrate_coverage
from autopack_pipeline_tests.oracle.gates import evaluate_calibration_gate
from autopack_pipeline_tests.oracle.metrics import group_tier1_metrics, tier_metrics_document
from autopack_pipeline_tests.oracle.samples import clean_samples, sample_exclusions
from autopack_pipeline_tests.unit.storage.test_autopack_upgrade import autopack_engine  # noqa: F401 - a fixture


@pytest.fixture
def store(tmp_path, monkeypatch) -> ColumnarStore:
    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    return ColumnarStore(directory)


def assert_reads_like_the_table(store: ColumnarStore, engine) -> None:
    pd.testing.assert_frame_equal(store.events_frame(), read_events(engine))


def assert_codes_follow_the_ids(store: ColumnarStore, engine) -> None:
    """One run code per run id and one phase key per (run id, phase id) over every part, and the rows as
    the table holds them."""
    events = read_events(engine)
    arrays = store.event_arrays()
    pairs = events["run_id"] + "\x00" + events["phase_id"]
    assert (pd.factorize(arrays.phase_key.values)[0] == pd.factorize(pairs)[0]).all()
    assert (pd.factorize(arrays.run_code.values)[0] == pd.factorize(events["run_id"])[0]).all()
    assert_reads_like_the_table(store, engine)


def written_files(parts: list[dict]) -> set[str]:
    """The files a refresh leaves for ``parts``: each part and its tally (no file of an old part)."""
    return {p["file"] for p in parts} | {f"tally-{p['file']}" for p in parts}


def test_a_cold_refresh_copies_every_event(engine, store):
    bulk_load(engine, 2500, runs=3, seed=1)
    result = store.refresh(engine)
    assert (result.new_rows, result.rows_after, result.high_water, result.rebuilt) == (2500, 2500, 2500, None)
    assert_reads_like_the_table(store, engine)
    manifest = store.manifest()
    assert manifest["high_water_event_id"] == 2500 and len(manifest["parts"]) == 1
    assert store.table(["category"]).schema.field("category").type == pa.dictionary(pa.int32(), pa.string())


def test_a_refresh_asks_only_for_rows_above_the_mark(engine, store, monkeypatch):
    bulk_load(engine, 1200, runs=2, seed=1)
    store.refresh(engine)
    bulk_load(engine, 300, runs=1, seed=2)
    asked: list[tuple] = []
    original = columnar._BatchReader.read_apart  # what read calls too

    def spy(self, where, params):
        asked.append(params)
        return original(self, where, params)

    monkeypatch.setattr(columnar._BatchReader, "read_apart", spy)
    result = store.refresh(engine)
    assert (result.new_rows, result.rows_before, result.parts_written) == (300, 1200, 1)
    assert asked and all(low >= 1200 for low, _high in asked)
    assert_reads_like_the_table(store, engine)
    again = store.refresh(engine)
    assert (again.new_rows, again.parts_written, again.rebuilt) == (0, 0, None)


def test_awkward_values_read_back_exactly(engine, store, make_event):
    odd = [('run,"1"', "phase\nwith newline"), ("run'2", "phase,2"), ("r3", "")]
    for run_id, phase_id in odd:
        ensure_run_and_phase(engine, run_id, phase_id)
    with engine.begin() as connection:
        for i, (run_id, phase_id) in enumerate(odd):
            row = estimation_row(make_event(run_id=run_id, phase_id=phase_id, stop_reason=None if i else 'it"s, odd',
                                            actual_max_tokens=None, attempt=None if i else 2, category="testing"))
            insert_estimation_row(connection, row)
    bulk_load(engine, 50, runs=1, seed=3)
    if engine.dialect.name == "sqlite":  # text stamps without a fraction, as other writers leave them
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE token_estimation_v2_events SET timestamp = '2025-02-03 04:05:06' "
                                       "WHERE event_id = 2")
    store.refresh(engine)
    assert_reads_like_the_table(store, engine)


def test_batches_are_read_into_arrow_by_adbc_on_postgresql_and_by_sqlite3_on_sqlite(engine, store, monkeypatch):
    bulk_load(engine, 1200, seed=4)
    text_routes: list[str] = []
    for route in ("_sqlite_csv", "_postgresql_csv", "_rows"):
        original = getattr(columnar._BatchReader, route)
        monkeypatch.setattr(columnar._BatchReader, route,
                            lambda self, *a, _route=route, _original=original: text_routes.append(_route) or _original(self, *a))
    assert store.refresh(engine).new_rows == 1200
    if engine.dialect.name == "sqlite":
        # Never ADBC's SQLite driver: a second SQLite library in the process would break the file's locks.
        assert set(text_routes) == {"_sqlite_csv"}
        with pytest.raises(AdbcUnavailable, match="second SQLite library"):
            adbc.connect(engine)
    else:
        assert text_routes == []  # neither CSV text nor SQLAlchemy rows
    assert_reads_like_the_table(store, engine)


def test_postgresql_batches_are_read_on_two_adbc_connections_kept_until_the_refresh_ends(
        engine, backend, store, monkeypatch):
    """The driver's connect reads the server's type catalogue (40-50 ms): a refresh's batches are read by two
    threads, each on a connection kept between its batches, all closed when the refresh is done."""
    if backend != "postgresql":
        pytest.skip("SQLite is read by the sqlite3 module or by child processes")
    monkeypatch.setattr(columnar.store, "BATCH_IDS", 100)
    bulk_load(engine, 1000, seed=31)
    opened, threads = [], set()
    connect = adbc.connect

    def counted(*args, **kwargs):
        threads.add(threading.current_thread().name)
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(adbc, "connect", counted)
    store.refresh(engine)
    assert 1 <= len(opened) <= 2 and all(connection._closed for connection in opened)  # 10 batches
    assert threads <= {"prefetch-0", "prefetch-1"}
    assert_reads_like_the_table(store, engine)


def test_a_column_of_mixed_types_the_adbc_driver_refuses_goes_through_the_csv_route(sqlite_engine, store):
    # SQLite keeps any value in any column; ADBC's SQLite driver types a column by its first rows and
    # stops at a value of another type.
    bulk_load(sqlite_engine, 3000, seed=4)
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET model = 7 WHERE event_id = 2900")
    assert store.refresh(sqlite_engine).new_rows == 3000
    assert_reads_like_the_table(store, sqlite_engine)
    assert store.events_frame()["model"].iloc[2899] == "7"


def test_batches_the_csv_route_cannot_parse_go_through_sqlalchemy(sqlite_engine, store, monkeypatch):
    bulk_load(sqlite_engine, 300, runs=1, seed=4)

    def refuse(self, where, params):
        raise pa.ArrowInvalid("unparseable")

    monkeypatch.setattr(columnar._BatchReader, "_adbc", refuse)
    monkeypatch.setattr(columnar._BatchReader, "_sqlite_csv", refuse)
    assert store.refresh(sqlite_engine).new_rows == 300
    assert_reads_like_the_table(store, sqlite_engine)


def test_an_autopack_database_without_our_columns(autopack_engine, store):  # noqa: F811 - the fixture
    store.refresh(autopack_engine)
    assert_reads_like_the_table(store, autopack_engine)
    assert store.events_frame()["attempt"].isna().all()


def test_a_database_without_the_events_table_is_refused(blank_engine, store):
    with pytest.raises(ColumnarStoreError, match="token_estimation_v2_events"):
        store.refresh(blank_engine)


def test_a_replaced_database_rebuilds_the_store(tmp_path, store):
    path = tmp_path / "telemetry.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    bulk_load(engine, 400, runs=1, seed=1)
    store.refresh(engine)
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"telemetry.db{suffix}").unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    bulk_load(engine, 600, runs=2, seed=7)
    result = store.refresh(engine)
    assert result.rebuilt and "gone or changed" in result.rebuilt
    assert result.rows_after == 600
    assert_reads_like_the_table(store, engine)
    assert {p.name for p in store.directory.glob("*.parquet")} == written_files(store.manifest()["parts"])


def test_one_directory_never_mixes_two_databases(tmp_path, store):
    engines = []
    for name, seed in (("a.db", 1), ("b.db", 2)):
        engine = make_engine(f"sqlite:///{tmp_path / name}")
        upgrade_database(engine)
        bulk_load(engine, 300, runs=1, seed=seed)
        engines.append(engine)
    store.refresh(engines[0])
    result = store.refresh(engines[1])
    assert result.rebuilt and "held events of" in result.rebuilt
    assert_reads_like_the_table(store, engines[1])


def test_many_small_refreshes_are_compacted(sqlite_engine, store, monkeypatch):
    monkeypatch.setattr(columnar.freshness, "MAX_SMALL_PARTS", 2)
    for seed in range(1, 6):
        bulk_load(sqlite_engine, 40, runs=1, seed=seed)
        store.refresh(sqlite_engine)
    parts = store.manifest()["parts"]
    assert len(parts) <= 3
    assert {p.name for p in store.directory.glob("*.parquet")} == written_files(parts)
    assert_reads_like_the_table(store, sqlite_engine)


def test_a_postgresql_commit_below_the_mark_is_picked_up_later(engine, backend, store, make_event):
    if backend != "postgresql":
        pytest.skip("SQLite has one writer: ids commit in order")
    ensure_run_and_phase(engine, "run-1", "phase-1")
    late = engine.connect()
    transaction = late.begin()
    insert_estimation_row(late, estimation_row(make_event(actual_output_tokens=111)))  # takes the lower id
    with engine.begin() as connection:
        insert_estimation_row(connection, estimation_row(make_event(actual_output_tokens=222)))
    first = store.refresh(engine)
    assert first.new_rows == 1 and store.manifest()["gaps"]
    transaction.commit()
    late.close()
    second = store.refresh(engine)
    assert second.new_rows == 1 and not store.manifest()["gaps"]
    assert_reads_like_the_table(store, engine)
    assert store.events_frame()["actual_output_tokens"].tolist() == [111, 222]


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_the_analysis_on_the_store_equals_the_reference(engine, store, phase_ids):
    # Three parts (a cold extraction and two refreshes), on Autopack's shape and on reused phase ids,
    # whose labels repeat across parts: the codes are unified over all of them.
    bulk_load(engine, 3000, runs=4 if phase_ids == "reused" else None, seed=6, phase_ids=phase_ids)
    store.refresh(engine)
    bulk_load(engine, 1500, runs=2 if phase_ids == "reused" else None, seed=7, phase_ids=phase_ids)
    store.refresh(engine)
    bulk_load(engine, 700, runs=1 if phase_ids == "reused" else None, seed=8, phase_ids=phase_ids)
    store.refresh(engine)
    assert len(store.manifest()["parts"]) == 3
    events = read_events(engine)
    arrays = store.event_arrays()
    # Equal codes exactly where the strings are equal, for every label column.
    for codes, column in ((arrays.run_code.values, "run_id"), (arrays.phase_key.values, None),
                          (arrays.category.codes, "category"), (arrays.model.codes, "model")):
        labels = (events["run_id"] + "\x00" + events["phase_id"]) if column is None else events[column]
        assert (pd.factorize(codes)[0] == pd.factorize(labels)[0]).all()
    assert [arrays.category.labels[c] for c in arrays.category.codes] == events["category"].tolist()
    table = seed_files.load_coefficients_for(load_settings())
    samples = clean_samples(events)
    document = tier_metrics_document(events, len(samples))
    gate = evaluate_calibration_gate(samples, document["all_events"]["tier1"], force=True,
                                     group_tier1=group_tier1_metrics(events))
    provenance = {"exclusions": sample_exclusions(events), "coefficient_file_version": table.version,
                  "dagster_run_id": None, "database": None, "forced": True, "dedup": True,
                  "gate_summary": gate.summary()}
    # The services' one chain on the store's arrays, with no database: what the benchmarks run.
    analysis = analyse_events(load_settings(), WindowedEvents(arrays, None), arrays, force=True, write_reports=False)
    assert analysis.samples.count == len(samples)
    assert_close(analysis.metrics.document, document)
    assert analysis.calibration.gate == gate
    results = analysis.calibration.results
    assert_close(results["autopack-median"], calibrate_autopack_median(samples, provenance=provenance))
    assert_close(results["coverage"], calibrate_coverage(events, coefficients=table, provenance=provenance))


def test_where_the_store_lives(tmp_path, monkeypatch):
    monkeypatch.delenv(columnar.COLUMNAR_DIR_VARIABLE, raising=False)
    sqlite = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert store_directory_for(sqlite) == tmp_path / ".autopack" / "columnar" / "x.db"
    assert store_directory_for(sa.create_engine("sqlite://")) is None
    postgres = sa.create_engine("postgresql+psycopg://u:secret@db.example:5433/telemetry")
    directory = store_directory_for(postgres)
    assert directory.name == "postgresql-db.example-5433-telemetry" and "secret" not in str(directory)
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "elsewhere"))
    assert store_directory_for(sqlite) == tmp_path / "elsewhere"
    assert store_directory_for(sa.create_engine("sqlite://")) is None  # nothing to keep a copy of


def test_phases_of_runs_split_across_parts_keep_one_key(engine, store, monkeypatch):
    """Phase ids are encoded part by part; a run whose events fall in several parts (parts of 700
    rows here, runs of ~34 events) has its phases joined across them: one key per (run_id, phase_id)."""
    monkeypatch.setattr(columnar.store, "PART_ROWS", 700)
    monkeypatch.setattr(columnar.store, "BATCH_IDS", 350)
    bulk_load(engine, 3000, seed=9)
    store.refresh(engine, full=True)
    assert len(store.manifest()["parts"]) >= 4
    events = read_events(engine)
    arrays = store.event_arrays()
    pairs = events["run_id"] + "\x00" + events["phase_id"]
    assert (pd.factorize(arrays.phase_key.values)[0] == pd.factorize(pairs)[0]).all()
    assert fm.clean_sample_rows(arrays).exclusions == sample_exclusions(events)


def test_runs_and_phases_continued_by_later_refreshes_keep_their_codes(engine, store, make_event, monkeypatch):
    """A refresh gives a run or a phase that earlier parts hold the codes those parts gave it (found from
    their tallies and rows on disk), a new one a new code; a compaction keeps the codes it merges."""
    monkeypatch.setattr(columnar.freshness, "MAX_SMALL_PARTS", 2)
    bulk_load(engine, 400, runs=4, seed=11)
    store.refresh(engine)
    first = read_events(engine)
    for round_ in range(4):
        older = first.iloc[[round_ * 37, round_ * 53 + 5, 390 - round_]]  # phases of runs the first part holds
        with engine.begin() as connection:
            for run_id, phase_id in zip(older["run_id"], older["phase_id"]):
                insert_estimation_row(connection, estimation_row(make_event(run_id=run_id, phase_id=phase_id, attempt=2)))
        ensure_run_and_phase(engine, older["run_id"].iloc[0], f"new-phase-{round_}")
        ensure_run_and_phase(engine, f"new-run-{round_}", "p1")
        with engine.begin() as connection:
            for run_id, phase_id in ((older["run_id"].iloc[0], f"new-phase-{round_}"), (f"new-run-{round_}", "p1")):
                insert_estimation_row(connection, estimation_row(make_event(run_id=run_id, phase_id=phase_id)))
        store.refresh(engine)
    assert store.manifest()["parts"][-1]["rows"] > 5  # the small parts were merged
    assert_codes_follow_the_ids(store, engine)


def test_a_refresh_reads_the_tallies_only_of_parts_whose_run_ids_the_new_runs_fall_within(
        engine, store, make_event, monkeypatch):
    """Each part keeps its lowest and highest run id: new runs whose ids sort past every earlier part's (ids
    that grow with time) read no earlier tally; a run continued later reads the tally of the part holding
    it; a store written before the ranges were kept reads every tally, as before. The codes are right
    either way."""
    from autopack_pipeline.storage.columnar import part_codes as part_codes_module

    read = []
    kept_tally = part_codes_module.kept_tally
    monkeypatch.setattr(part_codes_module, "kept_tally",
                        lambda directory, part_file: read.append(part_file) or kept_tally(directory, part_file))
    for seed in (21, 22):
        bulk_load(engine, 300, runs=6, seed=seed)
        store.refresh(engine)
    first, second = (part["file"] for part in store.manifest()["parts"])
    assert [(part["min_run_id"], part["max_run_id"]) for part in store.manifest()["parts"]] == [
        ("synth-21-r00000", "synth-21-r00005"), ("synth-22-r00000", "synth-22-r00005")]

    bulk_load(engine, 300, runs=6, seed=23)
    store.refresh(engine)
    assert read == []  # synth-23-... sorts past both parts' runs

    ensure_run_and_phase(engine, "synth-21-r00002", "late-phase")
    with engine.begin() as connection:
        insert_estimation_row(connection, estimation_row(make_event(run_id="synth-21-r00002", phase_id="late-phase")))
    store.refresh(engine)
    assert read == [first]  # only the part holding synth-21-...

    manifest = store.manifest()  # as a store written before the ranges were kept
    for part in manifest["parts"]:
        del part["min_run_id"], part["max_run_id"]
    store._write_manifest(manifest)
    read.clear()
    bulk_load(engine, 300, runs=6, seed=24)
    store.refresh(engine)
    assert read[:2] == [first, second] and len(read) == len(manifest["parts"])

    assert_codes_follow_the_ids(store, engine)


def test_phases_of_runs_split_across_encoding_pieces_keep_one_key(engine, store, monkeypatch):
    """Within a part, phase ids are encoded in pieces of TEXT_PIECE_ROWS rows (17 here, runs of ~34
    events, so most runs span two or three pieces, and some pieces hold a run's rows apart): one key
    per (run_id, phase_id) all the same."""
    from autopack_pipeline.storage.columnar import phases

    bulk_load(engine, 3000, seed=10)
    monkeypatch.setattr(phases, "TEXT_PIECE_ROWS", 17)
    store.refresh(engine, full=True)
    assert len(store.manifest()["parts"]) == 1
    events = read_events(engine)
    arrays = store.event_arrays()
    pairs = events["run_id"] + "\x00" + events["phase_id"]
    assert (pd.factorize(arrays.phase_key.values)[0] == pd.factorize(pairs)[0]).all()
    assert fm.clean_sample_rows(arrays).exclusions == sample_exclusions(events)


def test_with_a_phase_id_missing_the_phase_codes_are_unified_over_every_part():
    """A missing id (possible in an Autopack database, not in ours) makes the reference pair ids across
    rows, which needs equal codes for equal phase ids in every part: they are unified instead."""
    from autopack_pipeline.storage.columnar.arrays import _Filler

    def part(runs, phases):
        n = len(runs)
        columns = {name: pa.array([1] * n, pa.int64()) for name in
                   ("event_id", "deliverable_count", "predicted_output_tokens", "actual_output_tokens",
                    "selected_budget", "actual_max_tokens", "attempt")}
        columns |= {"timestamp": pa.array([0] * n, pa.timestamp("us")),
                    **{name: pa.array([True] * n) for name in ("success", "truncated", "is_truncated_output")},
                    "run_id": pa.array(runs).dictionary_encode(), "phase_id": pa.array(phases, pa.string()),
                    **{name: pa.array(["x"] * n).dictionary_encode() for name in ("category", "complexity", "model")}}
        return pa.table(columns)

    for phases, unified in ((["p1", "p2", "p1"], False), (["p1", None, "p1"], True)):
        filler = _Filler(6)
        filler.add(part(["a", "b", "c"], ["p1", "p2", "p3"]), 0)
        filler.add(part(["a", "d", "e"], phases), 3)
        filler.finish_phases()
        codes = filler.values["phase_id"]
        assert codes[0] == codes[3]  # run a's p1 in both parts: one phase
        assert bool(codes[5] == codes[0]) is unified  # another run's p1: the same code only when unified


def test_with_an_id_missing_the_parts_codes_give_way_to_the_phase_ids(tmp_path):
    """Parts carry one phase code per phase; with an id missing somewhere, the load encodes the phase
    ids read as text instead, equal ids equal codes over every part (as a store without codes loads)."""
    from autopack_pipeline.storage.columnar.encoding import _KINDS, _parse_types, _store_table

    store = ColumnarStore(tmp_path / "columnar")
    store.directory.mkdir()
    manifest = store._new_manifest("test")

    def write(first_id, runs, phases):
        n = len(runs)
        types = _parse_types(False)
        columns = {name: pa.array([None] * n, types[name]) for name in _KINDS}
        columns |= {"event_id": pa.array(range(first_id, first_id + n), pa.int64()),
                    "timestamp": pa.array([0] * n, pa.int64()), "run_id": pa.array(runs, pa.string()),
                    "phase_id": pa.array(phases, pa.string())}
        store._append_part(manifest, _store_table(pa.table(columns)))
        manifest["rows"] += n

    write(1, ["a", "b", "c"], ["p1", "p2", "p3"])
    write(4, ["a", "d", "e"], ["p1", None, "p1"])
    codes = store.event_arrays(parts=manifest["parts"], manifest=manifest).phase_code.values
    assert codes[0] == codes[3] == codes[5]  # run a's p1 in both parts, and run e's p1: unified
    del manifest["parts"][1]
    manifest["rows"] = 3
    coded = store.event_arrays(parts=manifest["parts"], manifest=manifest)
    assert coded.phase_code.valid is None and len(set(coded.phase_code.values)) == 3


def test_sqlite_reads_the_prediction_inputs_grouped_by_deliverables_as_the_csv_route_reads_them(sqlite_engine, monkeypatch):
    # The grouped route hands each distinct deliverables text once; the batch must come out exactly as
    # the CSV route's: codes in first-row order, NULL apart from '', feature columns with values read too.
    from autopack_pipeline.storage.columnar.batches import _BatchReader
    from autopack_pipeline.storage.columnar.encoding import INPUT_KINDS, _store_table

    bulk_load(sqlite_engine, 900, seed=6)
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET deliverables_json = '' WHERE event_id % 7 = 0")
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET deliverables_json = 'it''s, odd\nNULL' "
                                   "WHERE event_id % 11 = 0")
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET context_quality = 'good', "
                                   "examples_required = 1 WHERE event_id % 5 = 0")
    reader = _BatchReader(sqlite_engine, INPUT_KINDS)
    batch = ("event_id > %s AND event_id <= %s", (0, 900))
    grouped = _store_table(reader._sqlite_grouped(*batch), INPUT_KINDS)
    assert grouped.equals(_store_table(reader._sqlite_csv(*batch), INPUT_KINDS))
    assert grouped.column("deliverables_json").to_pylist()[6] == ""
    assert grouped.column("context_quality").to_pylist()[4] == "good"

    with sqlite_engine.begin() as connection:  # SQLite keeps any type: a number goes to the CSV route
        connection.exec_driver_sql("UPDATE token_estimation_v2_events SET deliverables_json = 5 WHERE event_id = 3")
    routes: list[str] = []
    for route in ("_sqlite_grouped", "_sqlite_csv"):
        original = getattr(columnar._BatchReader, route)
        monkeypatch.setattr(columnar._BatchReader, route,
                            lambda self, *a, _route=route, _original=original: routes.append(_route) or _original(self, *a))
    table = reader.read(*batch)
    assert routes == ["_sqlite_grouped", "_sqlite_csv"]
    assert table.column("deliverables_json").to_pylist()[2] == "5"
