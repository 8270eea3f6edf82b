"""Every event records the coefficient version that predicted it, readable back with its inputs."""

from __future__ import annotations

import pytest

from autopack_pipeline.storage.events import record_estimation_event
from autopack_pipeline.storage.prediction_inputs import read_prediction_inputs


def test_events_record_their_coefficients_version(seeded, make_event):
    assert record_estimation_event(seeded, make_event(coefficients_version="v5-step1+cal20260101T000000Z",
                                                      context_quality="some", examples_required=True,
                                                      event_uid="with-version"), respect_flag=False)
    assert record_estimation_event(seeded, make_event(event_uid="without-version"), respect_flag=False)
    inputs = read_prediction_inputs(seeded)
    assert {inputs.version_at(i) for i in range(len(inputs))} == {"v5-step1+cal20260101T000000Z", None}
    assert inputs.versions_present() == ["v5-step1+cal20260101T000000Z"]
    at = next(i for i in range(len(inputs)) if inputs.version_at(i) is not None)
    assert inputs.deliverables_at(at) == ["src/example.py"]
    features = inputs.features_at(at)
    assert features["context_quality"] == "some" and features["examples_required"] is True


@pytest.mark.parametrize("batch_ids", [None, 7], ids=["one-batch", "batches-on-two-threads"])
def test_the_columnar_copy_and_the_database_give_the_same_inputs(seeded, make_event, tmp_path, monkeypatch, batch_ids):
    """Both routes (the columnar copy, refreshed first; the table itself) against the rows read one by
    one: NULL and set features, unparseable deliverables, events before and after the version column.
    With small batches the copy's inputs are read by two threads, and still come in event_id order."""
    import json

    import sqlalchemy as sa

    from autopack_pipeline.storage import columnar
    from autopack_pipeline.storage.events import estimation_row, insert_estimation_row
    from autopack_pipeline.storage.models import TokenEstimationV2Event
    from autopack_pipeline.storage.prediction_inputs import _read_from_database, prediction_inputs_from_arrow

    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    if batch_ids:
        monkeypatch.setattr(columnar.store, "BATCH_IDS", batch_ids)
    engine = seeded
    with engine.begin() as connection:
        for i in range(40):
            row = estimation_row(make_event(event_uid=f"e{i}", coefficients_version=[None, "v1", "v2"][i % 3],
                                                    context_quality=[None, "some", "strong", "none"][i % 4],
                                                    examples_required=[None, True, False][i % 3],
                                                    api_reference_required=[None, False][i % 2]))
            row["deliverables_json"] = ['["docs/a.md"]', '["src/b.py", "tests/test_b.py"]', "not json", "[]",
                                        '{"a": 1}'][i % 5]
            insert_estimation_row(connection, row)
    events = TokenEstimationV2Event.__table__
    with engine.connect() as connection:
        stored = connection.execute(sa.select(events).order_by(events.c.event_id)).mappings().all()

    def expected(row) -> tuple:
        try:
            items = json.loads(row["deliverables_json"])
        except ValueError:
            items = []
        return (int(row["event_id"]), items if isinstance(items, list) else [], row["coefficients_version"],
                {name: row[name] for name in ("api_reference_required", "examples_required", "research_required",
                                              "usage_guide_required", "context_quality")})

    copied = read_prediction_inputs(engine)
    assert list(copied.event_ids) == sorted(copied.event_ids)  # in event_id order, however many threads read it
    for inputs in (copied, prediction_inputs_from_arrow(_read_from_database(engine))):
        got = [(int(inputs.event_ids[i]), inputs.deliverables_at(i), inputs.version_at(i), inputs.features_at(i))
               for i in range(len(inputs))]
        assert sorted(got, key=lambda entry: entry[0]) == [expected(row) for row in stored]
    assert columnar.ColumnarStore(tmp_path / "columnar").rows == 40  # the first read went through the copy


def _rows(inputs) -> list[tuple]:
    return sorted((int(inputs.event_ids[i]), inputs.deliverables_at(i), inputs.version_at(i), inputs.features_at(i))
                  for i in range(len(inputs)))


def _reference(engine) -> list[tuple]:
    from autopack_pipeline.storage.prediction_inputs import _read_from_database, prediction_inputs_from_arrow

    return _rows(prediction_inputs_from_arrow(_read_from_database(engine)))


def test_the_copy_extracts_the_inputs_when_first_asked_for_then_only_for_new_parts(engine, tmp_path, monkeypatch):
    from autopack_pipeline.storage import columnar
    from autopack_pipeline.synth import bulk_load

    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    store = columnar.ColumnarStore(directory)
    bulk_load(engine, 1200, runs=2, seed=1)
    store.refresh(engine)
    assert not list(directory.glob("inputs-*")) and all("inputs" not in p for p in store.manifest()["parts"])

    asked: list[tuple] = []
    original = columnar._BatchReader.read

    def spy(self, where, params):
        if self.kinds is columnar.INPUT_KINDS:
            asked.append(params)
        return original(self, where, params)

    monkeypatch.setattr(columnar._BatchReader, "read", spy)
    assert _rows(read_prediction_inputs(engine)) == _reference(engine)
    assert asked and all("inputs" in p for p in store.manifest()["parts"])
    bulk_load(engine, 300, runs=1, seed=2)
    asked.clear()
    assert _rows(read_prediction_inputs(engine)) == _reference(engine)  # refreshes the copy first
    assert asked and all(low >= 1200 for low, _high in asked)  # the inputs of the new part alone
    asked.clear()
    read_prediction_inputs(engine)
    assert not asked


def test_compaction_merges_the_inputs_beside_the_parts(sqlite_engine, tmp_path, monkeypatch):
    from autopack_pipeline.storage import columnar
    from autopack_pipeline.synth import bulk_load

    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    monkeypatch.setattr(columnar.freshness, "MAX_SMALL_PARTS", 2)
    store = columnar.ColumnarStore(directory)
    compactions = 0
    for seed in range(1, 6):
        bulk_load(sqlite_engine, 40, runs=1, seed=seed)
        if store.refresh(sqlite_engine).parts_compacted:
            compactions += 1  # the new part's inputs were read, and merged with the others'
            assert all("inputs" in p for p in store.manifest()["parts"])
        assert _rows(read_prediction_inputs(sqlite_engine)) == _reference(sqlite_engine)
    assert compactions
    parts = store.manifest()["parts"]
    assert len(parts) <= 3 and all("inputs" in p for p in parts)
    assert {p.name for p in directory.glob("*.parquet")} == {
        name for p in parts for name in (p["file"], p["inputs"], f"tally-{p['file']}")}


def test_an_id_range_reads_the_inputs_of_those_events_only(seeded, make_event, tmp_path, monkeypatch):
    """The range crosses the columnar copy's parts (two refreshes, two parts) and ends inside one:
    the inputs are those of the full read within the range, event by event."""
    from autopack_pipeline.storage import columnar

    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    for batch in range(2):
        for i in range(20):
            assert record_estimation_event(seeded, make_event(event_uid=f"b{batch}-{i}",
                                                              coefficients_version=[None, "v1", "v2"][i % 3]),
                                           respect_flag=False)
        columnar.refresh_store(seeded)
    assert len(columnar.ColumnarStore(tmp_path / "columnar").manifest()["parts"]) >= 2

    def entries(inputs) -> list[tuple]:
        return [(int(inputs.event_ids[i]), inputs.deliverables_at(i), inputs.version_at(i))
                for i in range(len(inputs))]

    every = entries(read_prediction_inputs(seeded))
    ids = sorted(entry[0] for entry in every)
    for low, high in ((ids[5], ids[30]), (ids[25], ids[25]), (ids[-1] + 1, ids[-1] + 9)):
        chosen = entries(read_prediction_inputs(seeded, id_range=(low, high)))
        assert chosen == [entry for entry in every if low <= entry[0] <= high]
    assert len(entries(read_prediction_inputs(seeded, id_range=(ids[5], ids[30])))) == 26


def test_a_copy_refreshed_by_the_caller_is_not_refreshed_again_unless_it_lacks_the_events(
        seeded, make_event, tmp_path, monkeypatch):
    """``refreshed``: the events came through the copy just refreshed, so it is read as it is; a copy whose
    high-water mark is below the events asked about is refreshed all the same (their inputs are not in it)."""
    from autopack_pipeline.storage import columnar
    from autopack_pipeline.storage.columnar import store as store_module

    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    for i in range(10):
        assert record_estimation_event(seeded, make_event(event_uid=f"a{i}"), respect_flag=False)
    columnar.refresh_store(seeded)
    refreshes: list[int] = []
    real = store_module.ColumnarStore.refresh
    monkeypatch.setattr(store_module.ColumnarStore, "refresh",
                        lambda self, *a, **k: refreshes.append(1) or real(self, *a, **k))
    every = _rows(read_prediction_inputs(seeded))
    assert refreshes == [1]
    ids = [row[0] for row in every]
    assert _rows(read_prediction_inputs(seeded, id_range=(ids[0], ids[-1]), refreshed=True)) == every
    assert refreshes == [1]
    assert record_estimation_event(seeded, make_event(event_uid="late"), respect_flag=False)
    newest = _rows(read_prediction_inputs(seeded, id_range=(ids[0], ids[-1] + 1), refreshed=True))
    assert refreshes == [1, 1] and len(newest) == len(every) + 1


def test_a_column_of_nulls_encodes_as_missing_everywhere_whatever_its_type():
    """An Autopack database keeps no doc feature: flags and texts all NULL, typed or not, are missing
    everywhere, one byte per event, with no value."""
    import numpy as np
    import pyarrow as pa

    from autopack_pipeline.storage.prediction_inputs import _deliverables, _encoded

    for column in (pa.nulls(4), pa.array([None] * 4, type=pa.bool_()), pa.array([None] * 4, type=pa.string()),
                   pa.chunked_array([pa.array([None] * 2, type=pa.bool_())] * 2),
                   pa.array([None] * 4, type=pa.string()).dictionary_encode()):
        for parse in (None, _deliverables):
            encoded = _encoded(column, parse)
            assert encoded.codes.dtype == np.int8 and encoded.codes.tolist() == [-1] * 4 and encoded.values == ()
    partly = _encoded(pa.array([None, True, None, False]))
    assert partly.codes.tolist() == [-1, 0, -1, 1] and partly.values == (True, False)
