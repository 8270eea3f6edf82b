"""The prediction inputs kept in the columnar copy's image (storage.columnar.inputs_image): mapped by later
reads, always the inputs the Parquet files and the database hold, never those of another state of the copy."""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest

from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.columnar import inputs_image
from autopack_pipeline.storage.columnar import store as store_module
from autopack_pipeline.storage.columnar.image import complete_image
from autopack_pipeline.storage.events import estimation_row, insert_estimation_row
from autopack_pipeline.storage.prediction_inputs import (
    _read_from_database,
    prediction_inputs_from_arrow,
    read_prediction_inputs,
)


def _rows(inputs) -> list[tuple]:
    return [(int(inputs.event_ids[i]), inputs.deliverables_at(i), inputs.version_at(i), inputs.features_at(i))
            for i in range(len(inputs))]


def _reference(engine, id_range=None) -> list[tuple]:
    """Every stored event's inputs read from the table itself, in event id order (within ``id_range``)."""
    rows = sorted(_rows(prediction_inputs_from_arrow(_read_from_database(engine))))
    return [row for row in rows if id_range is None or id_range[0] <= row[0] <= id_range[1]]


def _add_events(engine, make_event, prefix: str, count: int) -> None:
    """Events whose inputs vary: versions, doc features, deliverables (one text is not JSON)."""
    with engine.begin() as connection:
        for i in range(count):
            row = estimation_row(make_event(event_uid=f"{prefix}{i}", coefficients_version=[None, "v1", "v2"][i % 3],
                                            context_quality=[None, "some", "strong", "none"][i % 4],
                                            examples_required=[None, True, False][i % 3]))
            row["deliverables_json"] = ['["docs/a.md"]', '["src/b.py", "tests/test_b.py"]', "not json", "[]"][i % 4]
            insert_estimation_row(connection, row)


@pytest.fixture
def store(seeded, make_event, tmp_path, monkeypatch) -> columnar.ColumnarStore:
    """A copy of two parts (two refreshes) with its image written (a whole load)."""
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    store = columnar.ColumnarStore(tmp_path / "columnar")
    for batch in range(2):
        _add_events(seeded, make_event, f"b{batch}-", 20)
        store.refresh(seeded)
    assert len(store.manifest()["parts"]) == 2
    store.event_arrays()
    return store


def _inputs_kept(store) -> bool:
    image = complete_image(store.directory, store.manifest())
    return image is not None and (image / inputs_image.INPUTS_DIRECTORY / "inputs.json").exists()


def _forbid_parquet(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a Parquet file was read")

    monkeypatch.setattr(store_module, "read_parquet", refuse)


def test_the_first_read_keeps_the_inputs_in_the_image_and_later_reads_map_them(seeded, store, monkeypatch):
    assert not _inputs_kept(store)
    assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)
    assert _inputs_kept(store)
    _forbid_parquet(monkeypatch)
    mapped = read_prediction_inputs(seeded)
    assert isinstance(mapped.deliverables.codes.base, np.memmap) and isinstance(mapped.event_ids.base, np.memmap)
    assert _rows(mapped) == _reference(seeded)


def test_an_id_range_of_the_kept_inputs_gives_those_events_inputs(seeded, store, monkeypatch):
    read_prediction_inputs(seeded)
    _forbid_parquet(monkeypatch)
    ids = [row[0] for row in _reference(seeded)]
    # Across both parts, one event, inside the first part, beyond the newest event.
    for id_range in ((ids[5], ids[30]), (ids[25], ids[25]), (ids[0], ids[3]), (ids[-1] + 1, ids[-1] + 9)):
        assert _rows(read_prediction_inputs(seeded, id_range=id_range)) == _reference(seeded, id_range)


def test_a_range_over_some_parts_keeps_only_its_own_inputs_while_other_parts_have_none(seeded, store, monkeypatch):
    """A window over a long history: keeping every part's inputs would read from the database inputs that nobody
    asked for, so the range's own are kept, and serve the ranges within it."""
    ids = [row[0] for row in _reference(seeded)]
    newest = (ids[25], ids[-1])  # within the second part
    assert _rows(read_prediction_inputs(seeded, id_range=newest)) == _reference(seeded, newest)
    assert not _inputs_kept(store)
    image = complete_image(store.directory, store.manifest())
    assert (image / inputs_image.inputs_directory(newest) / "inputs.json").exists()
    assert ["inputs" in part for part in store.manifest()["parts"]] == [False, True]
    with monkeypatch.context() as forbidden:
        _forbid_parquet(forbidden)
        for id_range in (newest, (ids[30], ids[35])):
            assert _rows(read_prediction_inputs(seeded, id_range=id_range)) == _reference(seeded, id_range)
    # Beyond the kept range: not from the range's inputs.
    for id_range in ((ids[5], ids[30]), (ids[24], ids[-1])):
        assert _rows(read_prediction_inputs(seeded, id_range=id_range)) == _reference(seeded, id_range)
    assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)  # every part asked for: every part kept
    assert _inputs_kept(store)


def test_without_an_image_the_inputs_are_read_from_the_parquet_files(seeded, make_event, tmp_path, monkeypatch):
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    store = columnar.ColumnarStore(tmp_path / "columnar")
    _add_events(seeded, make_event, "a", 12)
    store.refresh(seeded)  # no whole load: no image
    assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)
    assert complete_image(store.directory, store.manifest()) is None
    assert not list(store.directory.glob(f"*/{inputs_image.INPUTS_DIRECTORY}"))


def test_inputs_read_while_a_refresh_changes_the_copy_are_not_kept_in_the_old_image(seeded, make_event, store,
                                                                                   monkeypatch):
    old_image = complete_image(store.directory, store.manifest())
    real = store_module.ColumnarStore.inputs_table

    def refreshed_meanwhile(self, *args, **kwargs):
        table = real(self, *args, **kwargs)
        _add_events(seeded, make_event, "late-", 3)
        self.refresh(seeded)
        return table

    monkeypatch.setattr(store_module.ColumnarStore, "inputs_table", refreshed_meanwhile)
    assert len(read_prediction_inputs(seeded)) == 40  # what the copy held when the inputs were read
    assert not (old_image / inputs_image.INPUTS_DIRECTORY).exists()


def test_damaged_kept_inputs_are_removed_and_read_again(seeded, store, caplog):
    read_prediction_inputs(seeded)
    kept = complete_image(store.directory, store.manifest()) / inputs_image.INPUTS_DIRECTORY
    codes = kept / "versions.npy"
    codes.write_bytes(codes.read_bytes()[:-10])  # cut short
    with caplog.at_level(logging.WARNING, logger="autopack_pipeline.storage.columnar"):
        assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)
    assert "removing the damaged prediction inputs" in caplog.text
    assert _inputs_kept(store)  # written again by that read
    assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)


def test_inputs_that_cannot_be_kept_are_logged_and_leave_nothing_behind(seeded, store, monkeypatch, caplog):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inputs_image.np, "save", disk_full)
    with caplog.at_level(logging.WARNING, logger="autopack_pipeline.storage.columnar"):
        assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)
    assert "could not keep the prediction inputs" in caplog.text
    image = complete_image(store.directory, store.manifest())
    assert [path.name for path in image.iterdir() if "inputs" in path.name] == []


def test_what_a_killed_writer_left_is_removed_by_the_next_one(seeded, store):
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its process id no longer runs
    image = complete_image(store.directory, store.manifest())
    left = [image / f".{inputs_image.inputs_directory(span)}.{ended.pid}.tmp" for span in (None, (3, 9))]
    for directory in left:
        directory.mkdir()
        (directory / "event_ids.npy").write_bytes(b"half")
    assert _rows(read_prediction_inputs(seeded)) == _reference(seeded)
    assert _inputs_kept(store) and not any(directory.exists() for directory in left)
