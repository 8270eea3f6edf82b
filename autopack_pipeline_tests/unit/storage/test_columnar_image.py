"""The store's image (storage.columnar.image): the analysis arrays of every part, kept as files a later
load maps instead of decoding the parts; always the arrays the parts decode to, never a stale state."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pickle
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn
from autopack_pipeline.storage import columnar
from autopack_pipeline.storage.columnar import ColumnarStore
from autopack_pipeline.storage.columnar import image as image_module
from autopack_pipeline.storage.columnar.arrays import _load_arrays
from autopack_pipeline.storage.columnar.image import ImageWriter, image_directory, read_image
from autopack_pipeline.synth import bulk_load


@pytest.fixture
def store(tmp_path, monkeypatch) -> ColumnarStore:
    directory = tmp_path / "columnar"
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(directory))
    return ColumnarStore(directory)


def decoded(store: ColumnarStore) -> EventArrays:
    """The arrays the store's parts decode to, with no image involved."""
    return _load_arrays(store.directory, store.manifest())


def assert_same_arrays(got: EventArrays, expected: EventArrays) -> None:
    """Every column equal, in the same type (labels, codes, masks and values)."""
    for field in dataclasses.fields(EventArrays):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if b is None:
            assert a is None, field.name
        elif isinstance(b, LabelColumn):
            assert a.labels == b.labels, field.name
            assert a.codes.dtype == b.codes.dtype and np.array_equal(a.codes, b.codes), field.name
        elif isinstance(b, IntColumn):
            assert a.values.dtype == b.values.dtype and np.array_equal(a.values, b.values), field.name
            assert (a.valid is None) == (b.valid is None), field.name
            assert b.valid is None or np.array_equal(a.valid, b.valid), field.name
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b), field.name


def images(store: ColumnarStore) -> list[str]:
    """The image directories of the store, complete or not (hidden ones are half-written)."""
    return sorted(p.name for p in store.directory.iterdir() if "image-" in p.name)


def is_mapped(array: np.ndarray) -> bool:
    return isinstance(array.base, np.memmap)


def test_a_full_load_keeps_an_image_that_later_loads_map(sqlite_engine, store):
    bulk_load(sqlite_engine, 3000, runs=4, seed=1)
    store.refresh(sqlite_engine)
    assert images(store) == []  # a refresh decodes nothing: no image yet
    first = store.event_arrays()
    assert images(store) == [image_directory(store.directory, store.manifest()).name]
    assert_same_arrays(first, decoded(store))
    again = store.event_arrays()
    assert_same_arrays(again, decoded(store))
    assert all(is_mapped(getattr(again, name).values) for name in ("event_id", "predicted", "actual", "run_code"))
    assert is_mapped(again.category.codes) and is_mapped(again.success)
    # Mapped arrays travel as plain arrays (the Dagster IO manager pickles what assets return).
    assert_same_arrays(pickle.loads(pickle.dumps(again)), decoded(store))


def test_writing_into_mapped_arrays_changes_only_this_process_copy(sqlite_engine, store):
    bulk_load(sqlite_engine, 800, runs=2, seed=2)
    store.refresh(sqlite_engine)
    store.event_arrays()
    mapped = store.event_arrays()
    mapped.predicted.values[:10] = -7  # copy-on-write: the image's file keeps its values
    mapped.success[:] = 0
    assert_same_arrays(store.event_arrays(), decoded(store))


def test_after_a_refresh_with_new_events_the_next_load_writes_the_new_image_and_removes_the_old(sqlite_engine, store):
    bulk_load(sqlite_engine, 1200, runs=3, seed=3)
    store.refresh(sqlite_engine)
    store.event_arrays()
    before = images(store)
    store.refresh(sqlite_engine)  # nothing new: the same state, the same image
    assert image_directory(store.directory, store.manifest()).name == before[0]
    bulk_load(sqlite_engine, 500, runs=2, seed=4)
    store.refresh(sqlite_engine)
    assert image_directory(store.directory, store.manifest()).name not in before  # the old one is stale
    assert images(store) == before  # left to the next whole load, which decodes anyway
    arrays = store.event_arrays()
    assert len(arrays) == 1700
    assert_same_arrays(arrays, decoded(store))
    assert images(store) == [image_directory(store.directory, store.manifest()).name]
    assert_same_arrays(store.event_arrays(), decoded(store))


def test_a_damaged_image_is_removed_and_written_again(sqlite_engine, store, caplog):
    bulk_load(sqlite_engine, 900, runs=2, seed=5)
    store.refresh(sqlite_engine)
    store.event_arrays()
    path = image_directory(store.directory, store.manifest())
    with open(path / "predicted_output_tokens.npy", "r+b") as handle:
        handle.truncate(200)  # cut short
    with caplog.at_level(logging.WARNING, logger="autopack_pipeline.storage.columnar"):
        arrays = store.event_arrays()
    assert_same_arrays(arrays, decoded(store))
    assert "removing the damaged arrays image" in caplog.text and path.name in caplog.text
    assert images(store) == [path.name]  # decoded into a new image, which the next load maps
    assert is_mapped(store.event_arrays().predicted.values)
    (path / "image.json").unlink()  # not an image any more (only a rename puts a whole one in place)
    assert_same_arrays(store.event_arrays(), decoded(store))
    assert (path / "image.json").exists()


def test_an_image_that_cannot_be_written_leaves_nothing_behind(sqlite_engine, store, monkeypatch, caplog):
    bulk_load(sqlite_engine, 700, runs=2, seed=6)
    store.refresh(sqlite_engine)
    calls = []

    def disk_full(fd, offset, length):
        calls.append(length)
        if len(calls) > 3:  # a few columns written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_module.os, "posix_fallocate", disk_full)
    with caplog.at_level(logging.WARNING, logger="autopack_pipeline.storage.columnar"):
        arrays = store.event_arrays()
    assert_same_arrays(arrays, decoded(store))
    assert "could not write the arrays image" in caplog.text
    assert images(store) == []
    monkeypatch.undo()
    assert_same_arrays(store.event_arrays(), decoded(store))  # the next load writes it
    assert len(images(store)) == 1


def test_a_failed_decoding_leaves_no_half_written_image(sqlite_engine, store, monkeypatch):
    bulk_load(sqlite_engine, 600, runs=2, seed=7)
    store.refresh(sqlite_engine)

    def broken(self, table, start):
        raise RuntimeError("a part cannot be decoded")

    monkeypatch.setattr(columnar.arrays._Filler, "add", broken)
    with pytest.raises(RuntimeError, match="cannot be decoded"):
        store.event_arrays()
    assert images(store) == []


def test_a_load_of_some_parts_writes_no_image(sqlite_engine, store, monkeypatch):
    monkeypatch.setattr(columnar.store, "PART_ROWS", 300)
    monkeypatch.setattr(columnar.store, "BATCH_IDS", 300)
    bulk_load(sqlite_engine, 1000, runs=3, seed=8)
    store.refresh(sqlite_engine)
    manifest = store.manifest()
    assert len(manifest["parts"]) > 1
    some = store.event_arrays(parts=manifest["parts"][1:], manifest=manifest)
    assert len(some) == sum(part["rows"] for part in manifest["parts"][1:])
    assert images(store) == []
    assert_same_arrays(store.event_arrays(), decoded(store))  # the whole store: an image of every part


def test_arrays_made_after_the_decoding_are_kept_too(tmp_path):
    """Masks of missing values, columns replaced after the decoding (narrowed, reordered) and a missing
    model column are saved beside the arrays the decoder filled in the image's files."""
    manifest = {"rows": 4, "sorted": False, "parts": [{"file": "part-000001.parquet", "rows": 4}]}
    (tmp_path / "part-000001.parquet").write_bytes(b"the part the image is of")
    writer = ImageWriter(tmp_path, manifest)
    filled = {name: writer.zeros(name, 4, dtype) for name, dtype in
              (("event_id", np.int32), ("predicted", np.int32), ("success", np.int8), ("category", np.int16))}
    filled["event_id"][:] = [3, 1, 4, 2]
    filled["predicted"][:] = [100, 0, 300, 400]
    filled["success"][:] = [1, 0, -1, 1]
    filled["category"][:] = [0, 1, -1, 0]
    ints = np.array([5, 6, 7, 8], dtype=np.int64)  # made in memory, not by the writer
    arrays = EventArrays(
        event_id=IntColumn(filled["event_id"]), timestamp_us=IntColumn(ints * 1_000_000),
        category=LabelColumn(filled["category"], ("docs", "tests")), complexity=LabelColumn(ints.astype(np.int16) % 2, ("low", "high")),
        deliverable_count=IntColumn(ints.astype(np.int16)), predicted=IntColumn(filled["predicted"], np.array([True, False, True, True])),
        actual=IntColumn(ints.astype(np.int32)), selected_budget=IntColumn(ints.astype(np.int32)),
        actual_max_tokens=IntColumn(ints.astype(np.int32)), success=filled["success"], truncated=ints.astype(np.int8) % 2,
        is_truncated_output=ints.astype(np.int8) % 2, attempt=IntColumn(ints.astype(np.int32)),
        run_code=IntColumn(ints.astype(np.int32)), phase_code=IntColumn(ints.astype(np.int32)), model=None,
    )
    mapped = writer.finish(arrays)
    assert_same_arrays(mapped, arrays)
    assert is_mapped(mapped.predicted.values) and is_mapped(mapped.predicted.valid) and is_mapped(mapped.truncated)
    assert_same_arrays(read_image(tmp_path, manifest), arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image_directory(tmp_path, manifest).name,
                                                                 "part-000001.parquet"])


def test_a_writer_killed_half_way_leaves_files_the_next_writer_removes(sqlite_engine, store):
    """A process killed while decoding leaves its temporary directory; the next image written removes it,
    but not one a running process is still writing."""
    bulk_load(sqlite_engine, 500, runs=2, seed=9)
    store.refresh(sqlite_engine)
    store.directory.mkdir(parents=True, exist_ok=True)
    ended = store.directory / ".image-0123456789abcdef0123.999999999.tmp"  # no such process
    running = store.directory / f".image-0123456789abcdef0123.{os.getpid()}.tmp"
    for path in (ended, running):
        path.mkdir()
        (path / "event_id.npy").write_bytes(b"half")
    assert_same_arrays(store.event_arrays(), decoded(store))
    assert not ended.exists() and running.exists()
    assert images(store) == sorted([running.name, image_directory(store.directory, store.manifest()).name])


def test_a_writer_whose_files_were_removed_meanwhile_keeps_its_arrays_and_writes_no_image(sqlite_engine, store,
                                                                                        monkeypatch, caplog):
    """Another process' clean-up (or a user) removing the directory being decoded into: the arrays are the
    ones decoded, and no image naming files that are gone is put in place."""
    bulk_load(sqlite_engine, 500, runs=2, seed=10)
    store.refresh(sqlite_engine)
    finish = ImageWriter.finish

    def removed_first(self, arrays):
        shutil.rmtree(self.temporary)
        return finish(self, arrays)

    monkeypatch.setattr(ImageWriter, "finish", removed_first)
    with caplog.at_level(logging.WARNING, logger="autopack_pipeline.storage.columnar"):
        arrays = store.event_arrays()
    assert_same_arrays(arrays, decoded(store))
    assert "was removed while the parts were decoded into it" in caplog.text
    assert images(store) == []


def test_every_part_chosen_from_a_manifest_is_the_whole_store_and_uses_its_image(sqlite_engine, store, monkeypatch):
    """A window that reaches back past the first part (every part chosen, as the assets choose them by their
    newest timestamp) reads the image, and writes it when there is none; the same arrays as a whole load."""
    monkeypatch.setattr(columnar.store, "PART_ROWS", 300)
    monkeypatch.setattr(columnar.store, "BATCH_IDS", 300)
    bulk_load(sqlite_engine, 1000, runs=3, seed=11)
    store.refresh(sqlite_engine)
    manifest = store.manifest()
    every = store.event_arrays(parts=list(manifest["parts"]), manifest=manifest)
    assert_same_arrays(every, decoded(store))
    assert images(store) == [image_directory(store.directory, manifest).name]
    assert is_mapped(store.event_arrays(parts=list(manifest["parts"]), manifest=manifest).actual.values)


def test_a_part_written_again_under_the_same_name_never_finds_the_old_image(sqlite_engine, store):
    """A store made again from scratch (its manifest deleted) numbers its parts from 1 again: the same file
    names and row counts, other contents. The image of the old files is not theirs."""
    bulk_load(sqlite_engine, 600, runs=2, seed=12)
    store.refresh(sqlite_engine)
    old = store.event_arrays()
    part = store.directory / store.manifest()["parts"][0]["file"]
    table = pq.read_table(part)
    column = table.schema.get_field_index("predicted_output_tokens")
    table = table.set_column(column, "predicted_output_tokens", pc.add(table.column(column), 1))
    pq.write_table(table, part)
    again = store.event_arrays()
    assert_same_arrays(again, decoded(store))
    assert np.array_equal(again.predicted.values, old.predicted.values + 1)
