"""Reading the store's parts into :class:`~autopack_pipeline.domain.analysis.EventArrays`: numpy
arrays filled part by part, labels unified into one dictionary per column over all parts."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn
from autopack_pipeline.storage.arrow_modules import pa, pc, pq
from autopack_pipeline.storage.columnar.encoding import ColumnarStoreError, arrow_of, filled, no_labels, numpy_of
from autopack_pipeline.storage.columnar.phases import PHASE_CODE, RUN_CODE, PhaseEncoder
from autopack_pipeline.storage.process_memory import release_freed_memory, small_pages

_ARRAY_INTS = {
    "event_id": np.int64, "deliverable_count": np.int32, "predicted_output_tokens": np.int32,
    "actual_output_tokens": np.int32, "selected_budget": np.int32, "actual_max_tokens": np.int32,
    "attempt": np.int32,
}
_ARRAY_FLAGS = ("success", "truncated", "is_truncated_output")
_ARRAY_CODES = ("run_id", "phase_id", "category", "complexity", "model")
# Nothing goes to Arrow through pa.array here, not even an empty list (encoding.arrow_of says why).
_ARRAY_NAMES = (*_ARRAY_INTS, "timestamp", *_ARRAY_FLAGS, *_ARRAY_CODES)
# The smaller types columns take where every value fits (_Filler.narrow).
_NARROW = {"event_id": np.int32, "deliverable_count": np.int16, "category": np.int16, "complexity": np.int16,
           "model": np.int16}


class _Labels:
    """One label column's dictionary over every chunk read so far, grown as chunks come: a chunk's codes
    are mapped onto it as they are copied, so no second pass over the rows. The same dictionary as
    encoding all the chunks' dictionaries one after the other (each new label in order of appearance)."""

    def __init__(self) -> None:
        self.dictionary: pa.Array = no_labels()
        self._last: tuple[pa.Array, np.ndarray] | None = None  # chunks sharing a dictionary map once

    def lookup(self, dictionary: pa.Array) -> np.ndarray:
        """Per code of ``dictionary``, its code in the whole column; then -1 (so a missing code, -1, maps to -1)."""
        if self._last is not None and _same_array(self._last[0], dictionary):
            return self._last[1]
        text = dictionary.cast(pa.string())
        if len(self.dictionary):
            at = numpy_of(filled(pc.index_in(text, value_set=self.dictionary), -1)).astype(np.int32)
        else:
            at = np.full(len(text), -1, dtype=np.int32)
        new = at < 0
        at[new] = np.arange(len(self.dictionary), len(self.dictionary) + int(new.sum()), dtype=np.int32)
        if new.any():
            self.dictionary = pa.concat_arrays([self.dictionary, text.filter(arrow_of(new))])
        self._last = (dictionary, np.append(at, np.int32(-1)))
        return self._last[1]


class _Filler:
    """Preallocated analysis arrays, filled part by part."""

    def __init__(self, rows: int, ranges: dict[str, tuple[int, int]] | None = None,
                 zeros: Callable[[str, int, type], np.ndarray] | None = None) -> None:
        """``ranges``: the lowest and highest value of some integer columns (missing ones as 0), known
        beforehand: those that fit their smaller type (_NARROW) are filled in it, not narrowed after.
        ``zeros(name, rows, dtype)``: where each column's array is made (default np.zeros; the store's
        image gives arrays backed by its files, storage.columnar.image)."""
        self.rows = rows
        types: dict[str, type] = {**_ARRAY_INTS, "timestamp": np.int64, **dict.fromkeys(_ARRAY_FLAGS, np.int8),
                                  **dict.fromkeys(_ARRAY_CODES, np.int32)}
        for name, (low, high) in (ranges or {}).items():
            if _fits(_NARROW[name], low, high):
                types[name] = _NARROW[name]
        for name in ("category", "complexity", "model"):  # widened in add() if a column has that many labels
            types[name] = _NARROW[name]
        make = zeros or (lambda _name, count, dtype: np.zeros(count, dtype=dtype))
        self.values: dict[str, np.ndarray] = {name: make(name, rows, dtype) for name, dtype in types.items()}
        self.valid: dict[str, np.ndarray] = {}
        self.labels = {name: _Labels() for name in _ARRAY_CODES}
        # Phase ids read as text (a store written before parts carried phase codes, or a missing id).
        self.phases = PhaseEncoder(self.values["phase_id"])
        self.missing_ids = False  # a run or phase code read is missing (see _load_arrays)

    def add(self, table: pa.Table, start: int) -> None:
        """The rows of ``table`` from row ``start`` on, for the columns it has (a part may come a few
        columns at a time)."""
        where = slice(start, start + table.num_rows)
        present = set(table.column_names)
        for name in (*_ARRAY_INTS, "timestamp"):
            if name not in present:
                continue
            values, valid = _int_values(table.column(name), name)
            if valid is not None:
                self.valid.setdefault(name, np.ones(self.rows, dtype=bool))[where] = valid
            self.values[name][where] = values
        for name in _ARRAY_FLAGS:
            if name in present:
                _flag_values(table.column(name), self.values[name][where])
        for name, code in (("run_id", RUN_CODE), ("phase_id", PHASE_CODE)):
            if code in present:  # the part's codes (phases.py): the ids as the analysis needs them
                column = _one_array(table.column(code))
                if column.null_count:  # only ever set (two threads write here)
                    self.missing_ids = True
                self.values[name][where] = numpy_of(filled(column, -1))
        for name in _ARRAY_CODES:
            if name not in present:
                continue
            column = table.column(name)
            if not pa.types.is_dictionary(column.type):  # phase ids as text
                self.phases.add(column, start)
                continue
            offset = start
            for chunk in column.chunks:
                lookup = self.labels[name].lookup(chunk.dictionary)
                if not _fits(self.values[name].dtype, -1, len(self.labels[name].dictionary) - 1):
                    self.values[name] = self.values[name].astype(np.int32)  # one thread fills a label column
                indices = numpy_of(filled(chunk.indices, -1))
                np.take(lookup.astype(self.values[name].dtype, copy=False), indices, mode="wrap",  # -1: the last
                        out=self.values[name][offset:offset + len(chunk)])
                offset += len(chunk)

    def finish_phases(self) -> None:
        """The phase ids read as text made one code per phase (PhaseEncoder.finish), once every run code is in."""
        if self.phases.pieces:
            self.phases.finish(self.values["run_id"])

    def permute(self, order: np.ndarray) -> None:
        for name in self.values:
            self.values[name] = self.values[name][order]
        for name in self.valid:
            self.valid[name] = self.valid[name][order]

    def narrow(self) -> None:
        """Smaller integer types where every value fits (event ids, deliverable counts, label codes). A label
        column's codes lie in -1 .. its labels' count - 1, which says they fit without a pass over them."""
        for name, small in _NARROW.items():
            values = self.values[name]
            if values.dtype == small:
                continue
            labels = len(self.labels[name].dictionary) if name in self.labels else None
            if len(values) == 0 or (labels is not None and _fits(small, -1, labels - 1)) or _fits(
                    small, int(values.min()), int(values.max())):
                self.values[name] = values.astype(small)

    def int_column(self, name: str) -> IntColumn:
        return IntColumn(self.values[name], self.valid.get(name))

    def code_column(self, name: str) -> IntColumn:
        codes = self.values[name]
        valid = codes >= 0
        if valid.all():
            return IntColumn(codes, None)  # no code missing: the codes as they are (no copy)
        return IntColumn(np.maximum(codes, 0), valid)

    def label_column(self, name: str) -> LabelColumn:
        return LabelColumn(self.values[name], tuple(self.labels[name].dictionary.to_pylist()))


def _fits(dtype: type, low: int, high: int) -> bool:
    info = np.iinfo(dtype)
    return info.min <= low and high <= info.max


def _value_range(footers: list[pq.FileMetaData], name: str) -> tuple[int, int] | None:
    """The lowest and highest value of an integer column over every row group (0 too where one is
    missing: the arrays hold 0 there), from the Parquet statistics; None when a row group has none."""
    low = high = None
    for footer in footers:
        column = footer.schema.names.index(name) if name in footer.schema.names else -1
        for group in range(footer.num_row_groups):
            statistics = footer.row_group(group).column(column).statistics if column >= 0 else None
            if statistics is None or not statistics.has_null_count:
                return None
            values = [0] if statistics.null_count else []
            if statistics.has_min_max:
                values += [statistics.min, statistics.max]
            elif statistics.null_count != footer.row_group(group).num_rows:
                return None
            for value in values:
                low = value if low is None else min(low, value)
                high = value if high is None else max(high, value)
    return None if low is None else (int(low), int(high))


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array: its only chunk as it is (``combine_chunks`` would copy even that one)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _int_values(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A nullable integer column (or the timestamps, as µs) as the analysis holds it: the values, 0 where
    missing (a view where nothing is), and where they are known (None: everywhere)."""
    array = _one_array(column)
    if name == "timestamp":
        array = array.view(pa.int64())
    return numpy_of(filled(array, 0)), (numpy_of(array.is_valid()) if array.null_count else None)


def _flag_values(column: pa.ChunkedArray, out: np.ndarray | None = None) -> np.ndarray:
    """A nullable boolean column as int8 (into ``out`` when given): 1, 0, or -1 where missing."""
    array = _one_array(column)
    flags = numpy_of(filled(array, False).cast(pa.int8()))  # Arrow's bits as bytes, once
    if out is None:
        out = flags.copy()
    else:
        out[:] = flags
    if array.null_count:
        out[~numpy_of(array.is_valid())] = -1
    return out


def _same_array(a: pa.Array, b: pa.Array) -> bool:
    """The same Arrow data (one buffer shared), without comparing values."""
    return len(a) == len(b) and a.offset == b.offset and [x.address if x else 0 for x in a.buffers()] == \
        [x.address if x else 0 for x in b.buffers()]


@small_pages()  # the arrays are fresh mappings the kernel zeroes: cheaper on 4 KB pages (process_memory)
def _load_arrays(directory: Path, manifest: dict[str, Any],
                 zeros: Callable[[str, int, type], np.ndarray] | None = None) -> EventArrays:
    """Every part of ``manifest`` decoded into the analysis arrays (``zeros``: see :class:`_Filler`)."""
    parts = manifest["parts"]
    files = [directory / part["file"] for part in parts]
    starts, footers = [], []  # each part's first row and Parquet footer (read once, not per column)
    position = 0
    coded = True  # every part carries its run and phase codes (a store written before that has none)
    for path in files:
        starts.append(position)
        footers.append(pq.read_metadata(path))
        position += footers[-1].num_rows
        coded = coded and {RUN_CODE, PHASE_CODE} <= set(footers[-1].schema.names)
    ranges = {"event_id": (min(p["min_event_id"] for p in parts), max(p["max_event_id"] for p in parts))} if parts else {}
    if (counts := _value_range(footers, "deliverable_count")) is not None:
        ranges["deliverable_count"] = counts
    filler = _Filler(int(manifest["rows"]), ranges, zeros)
    if position != filler.rows:
        raise ColumnarStoreError(f"the manifest of {directory} counts {filler.rows} rows, its parts {position}")

    def read(name: str, which: range) -> None:
        # One column at a time: the peak is the arrays plus one decoded column per thread, not plus a
        # whole part (at a million rows 75 MB above the arrays instead of 145, for the same time).
        # ParquetFile, not pq.read_table: that one imports pyarrow.dataset, which imports pandas (0.3 s, 50 MB).
        # Decoded on this thread (use_threads=False): handing one column to Arrow's pool and waiting for it
        # cost half as much CPU again as the decoding (120 against 78 ms per part).
        for part in which:
            with pq.ParquetFile(files[part], metadata=footers[part]) as parquet:
                filler.add(parquet.read(columns=[name], use_threads=False), starts[part])

    codes = {"run_id": RUN_CODE, "phase_id": PHASE_CODE} if coded else {}
    names = [codes.get(name, name) for name in _ARRAY_NAMES]
    # Label columns (and phase ids without codes, read as text and encoded here, phases.PhaseEncoder: with
    # about one id per phase, asking pyarrow for a dictionary cost twice as much, 0.87 against 0.41 s per
    # million) are built up part after part, so each is one job over every part; any other column is a job
    # per part.
    # Two threads take the jobs in turn: Parquet decoding and numpy's copies let go of the GIL, so the
    # reading is spread over the machine's two cores whatever each column costs.
    in_order = [name for name in names if name in _ARRAY_CODES]
    every = range(len(files))
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(read, name, every) for name in in_order]
        jobs += [pool.submit(read, name, range(part, part + 1)) for part in every
                 for name in names if name not in in_order]
        for job in jobs:
            job.result()
    if filler.missing_ids:
        # A missing id: equal phase ids must have equal codes over every part, which the parts' codes
        # (one per phase) need not be; the phase ids are read as text and encoded instead.
        read("phase_id", every)
    release_freed_memory()  # what the threads' malloc arenas kept (storage.process_memory)
    filler.finish_phases()
    if not manifest["sorted"]:
        filler.permute(np.argsort(filler.values["event_id"], kind="stable"))
    filler.narrow()
    pa.default_memory_pool().release_unused()
    return EventArrays(
        event_id=filler.int_column("event_id"),
        timestamp_us=filler.int_column("timestamp"),
        category=filler.label_column("category"),
        complexity=filler.label_column("complexity"),
        deliverable_count=filler.int_column("deliverable_count"),
        predicted=filler.int_column("predicted_output_tokens"),
        actual=filler.int_column("actual_output_tokens"),
        selected_budget=filler.int_column("selected_budget"),
        actual_max_tokens=filler.int_column("actual_max_tokens"),
        success=filler.values["success"],
        truncated=filler.values["truncated"],
        is_truncated_output=filler.values["is_truncated_output"],
        attempt=filler.int_column("attempt"),
        run_code=filler.code_column("run_id"),
        phase_code=filler.code_column("phase_id"),
        model=filler.label_column("model"),
    )


def counted_arrays(table: pa.Table) -> EventArrays:
    """The numbers and flags of a part in memory (the store's schema) as :class:`EventArrays`, converted
    as a part read back is (:func:`_int_values`, :func:`_flag_values`), its labels (run, phase,
    category, complexity, model) all missing: what a tally reads (``domain/event_tally``), without
    encoding a label (the phase ids alone cost 0.4 s per million rows). The numbers are views of the
    table's columns where nothing is missing: the extraction holds the part already."""
    rows = table.num_rows

    def ints(name: str) -> IntColumn:
        return IntColumn(*_int_values(table.column(name), name))

    # Read-only views of one value (no memory per row): nothing of a tally reads them.
    missing_label = LabelColumn(np.broadcast_to(np.int32(-1), rows), ())
    missing_code = IntColumn(np.broadcast_to(np.int32(0), rows), np.broadcast_to(False, rows))
    return EventArrays(
        event_id=ints("event_id"),
        timestamp_us=ints("timestamp"),
        category=missing_label,
        complexity=missing_label,
        deliverable_count=ints("deliverable_count"),
        predicted=ints("predicted_output_tokens"),
        actual=ints("actual_output_tokens"),
        selected_budget=ints("selected_budget"),
        actual_max_tokens=ints("actual_max_tokens"),
        success=_flag_values(table.column("success")),
        truncated=_flag_values(table.column("truncated")),
        is_truncated_output=_flag_values(table.column("is_truncated_output")),
        attempt=ints("attempt"),
        run_code=missing_code,
        phase_code=missing_code,
        model=missing_label,
    )
