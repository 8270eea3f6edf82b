"""Reading the store's parts into :class:`~autopack_pipeline.domain.analysis.EventArrays`: numpy
arrays filled part by part, labels unified into one dictionary per column over all parts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn
from autopack_pipeline.storage.columnar.encoding import ColumnarStoreError, arrow_of, filled, numpy_of
from autopack_pipeline.storage.process_memory import release_freed_memory

_ARRAY_INTS = {
    "event_id": np.int64, "deliverable_count": np.int32, "predicted_output_tokens": np.int32,
    "actual_output_tokens": np.int32, "selected_budget": np.int32, "actual_max_tokens": np.int32,
    "attempt": np.int32,
}
_ARRAY_FLAGS = ("success", "truncated", "is_truncated_output")
_ARRAY_CODES = ("run_id", "phase_id", "category", "complexity", "model")
# Nothing goes to Arrow through pa.array here, not even an empty list (encoding.arrow_of says why).
_NO_LABELS = pa.nulls(0, pa.string())
_ARRAY_NAMES = (*_ARRAY_INTS, "timestamp", *_ARRAY_FLAGS, *_ARRAY_CODES)
# The columns _load_arrays reads on its second thread: about half of the reading's CPU time.
_BESIDE = ("phase_id", "event_id", "timestamp")
# Rows per piece a text column (phase ids) is dictionary-encoded in (_Filler._add_text).
TEXT_PIECE_ROWS = 1 << 15


class _Filler:
    """Preallocated analysis arrays, filled part by part."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.values: dict[str, np.ndarray] = {name: np.zeros(rows, dtype=t) for name, t in _ARRAY_INTS.items()}
        self.values["timestamp"] = np.zeros(rows, dtype=np.int64)
        self.values.update({name: np.zeros(rows, dtype=np.int8) for name in _ARRAY_FLAGS})
        self.values.update({name: np.zeros(rows, dtype=np.int32) for name in _ARRAY_CODES})
        self.valid: dict[str, np.ndarray] = {}
        # Per label column, the dictionary of every chunk written so far and the rows it covers; the codes
        # written are the chunk's own until :meth:`unify_labels` maps them onto one dictionary.
        self.chunk_dictionaries: dict[str, list[tuple[slice, pa.Array]]] = {name: [] for name in _ARRAY_CODES}
        self.labels: dict[str, pa.Array] = {}
        # Text columns (phase ids), encoded part by part: per part, the rows and the part's dictionary,
        # whose codes were written shifted past the dictionaries of the parts before (_add_text).
        self.texts: dict[str, list[tuple[slice, pa.Array]]] = {name: [] for name in _ARRAY_CODES}

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
            if name not in present:
                continue
            self.values[name][where] = _flag_values(table.column(name))
        for name in _ARRAY_CODES:
            if name not in present:
                continue
            out = self.values[name]
            column = table.column(name)
            if not pa.types.is_dictionary(column.type):
                self._add_text(name, where, column)
                continue
            pieces = self.chunk_dictionaries[name]
            offset = start
            for chunk in column.chunks:
                out[offset:offset + len(chunk)] = numpy_of(filled(chunk.indices, -1))
                if pieces and pieces[-1][0].stop == offset and _same_array(pieces[-1][1], chunk.dictionary):
                    pieces[-1] = (slice(pieces[-1][0].start, offset + len(chunk)), pieces[-1][1])
                else:  # chunks sharing a dictionary (Parquet gives every row group its column's) count once
                    pieces.append((slice(offset, offset + len(chunk)), chunk.dictionary))
                offset += len(chunk)

    def _add_text(self, name: str, where: slice, column: pa.ChunkedArray) -> None:
        """A text column (phase ids) dictionary-encoded piece by piece (``TEXT_PIECE_ROWS`` rows), the codes
        shifted past the pieces before: equal codes, equal text, but one text may have a code per piece
        until :meth:`_join_phase_parts`. Arrow's hash table of a piece stays in the CPU's cache: a million
        phase ids cost 0.26 s of CPU encoded at once, 0.03 s in pieces of 32k (ten parts of a million
        encoded apart cost 0.6 of ten million at once, the reason the pieces began as parts)."""
        out = self.values[name]
        text = column.cast(pa.string())
        shift = sum(len(dictionary) for _rows, dictionary in self.texts[name])
        for begin in range(0, len(text), TEXT_PIECE_ROWS):
            encoded = pc.dictionary_encode(text.slice(begin, TEXT_PIECE_ROWS))
            offset = where.start + begin
            for chunk in encoded.chunks:  # one dictionary for the chunks of one call
                codes = numpy_of(filled(chunk.indices, -1))
                out[offset:offset + len(chunk)] = np.where(codes >= 0, codes + shift, -1)
                offset += len(chunk)
            dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else _NO_LABELS
            self.texts[name].append((slice(where.start + begin, offset), dictionary))
            shift += len(dictionary)
        del text, column

    def _join_phase_parts(self) -> None:
        """Phase codes that identify a phase, (run id, phase id), across the pieces they were encoded in.

        Within a piece (:meth:`_add_text`) one phase id has one code. A phase of a run whose events lie in
        several pieces has a code per piece: those runs' rows (a few per piece boundary: Autopack writes a
        run's events together) are encoded again together, into codes past every piece's. Rows of other
        runs keep their piece's code; the same phase id in two such runs may differ in code, which is
        harmless: a phase is its run and its id together (``EventArrays.phase_key``). When a run id or a
        phase id is missing somewhere, the codes are unified over all pieces instead (one dictionary, equal
        text equal code), as the reference's pairing of ids across rows then needs.
        """
        pieces = self.texts["phase_id"]
        if len(pieces) < 2:  # one encoding already: equal text, equal code (hashing it again cost 0.1 s)
            self.texts["phase_id"] = []
            return
        runs, phases = self.values["run_id"], self.values["phase_id"]
        if (runs < 0).any() or (phases < 0).any():
            self._unify_text_parts("phase_id")
            return
        # A run spans pieces when its first and last rows lie in different ones (its rows need not be
        # together). First and last rows by ufunc.at, a million rows at a time (no 10M-row index array).
        first = np.full(len(self.labels["run_id"]), self.rows, dtype=np.int64)
        last = np.full(len(first), -1, dtype=np.int64)
        for begin in range(0, self.rows, 1 << 20):
            at = np.arange(begin, min(begin + (1 << 20), self.rows))
            np.minimum.at(first, runs[at], at)
            np.maximum.at(last, runs[at], at)
        starts = np.array([rows.start for rows, _dictionary in pieces])
        seen = last >= 0
        spanning = np.zeros(len(first), dtype=bool)
        spanning[seen] = (np.searchsorted(starts, first[seen], side="right")
                          != np.searchsorted(starts, last[seen], side="right"))
        shifts = np.cumsum([0] + [len(dictionary) for _rows, dictionary in pieces])
        if spanning.any():
            texts, where = [], []
            for (rows, dictionary), shift in zip(pieces, shifts[:-1]):
                mine = np.flatnonzero(spanning[runs[rows]]) + rows.start
                if len(mine):
                    texts.append(dictionary.take(arrow_of(phases[mine] - shift)))
                    where.append(mine)
            rows = np.concatenate(where)
            joined = pc.dictionary_encode(pa.chunked_array(texts, type=pa.string()))
            phases[rows] = np.concatenate([numpy_of(c.indices) for c in joined.chunks]) + shifts[-1]
        self.texts["phase_id"] = []  # no labels kept: phase codes are only compared, never named

    def _unify_text_parts(self, name: str) -> None:
        """One dictionary over every part of a text column, and the codes into it."""
        parts = self.texts[name]
        self.labels[name] = _NO_LABELS
        if parts:
            out = self.values[name]
            encoded = pc.dictionary_encode(pa.concat_arrays([dictionary for _rows, dictionary in parts]))
            self.labels[name] = encoded.dictionary
            lookup = np.append(numpy_of(encoded.indices).astype(np.int32), np.int32(-1))
            for rows, _dictionary in parts:
                out[rows] = lookup[out[rows]]  # the codes were shifted into the concatenation already
        self.texts[name] = []

    def unify_labels(self) -> None:
        """One dictionary per label column over every chunk of every part, and the codes into it.

        For dictionary columns, the chunks' dictionaries are concatenated and dictionary-encoded once
        (one hash pass in Arrow): the result's dictionary is the unified one, and its indices, cut at the
        chunk boundaries, map each chunk's local codes onto it. Text columns (phase ids, about one per
        phase) were encoded part by part; their codes identify a phase with its run
        (:meth:`_join_phase_parts`). Python never touches a label value, so a million distinct phase ids
        cost what a thousand do, bar the hashing.
        """
        for name, pieces in self.chunk_dictionaries.items():
            if not pieces:
                self.labels[name] = _NO_LABELS
                continue
            if len(pieces) == 1:  # one dictionary already (one part, or text encoded above): the codes stand
                self.labels[name] = pieces[0][1].cast(pa.string())
                continue
            encoded = pc.dictionary_encode(pa.concat_arrays([d.cast(pa.string()) for _rows, d in pieces]))
            self.labels[name] = encoded.dictionary
            maps = numpy_of(encoded.indices).astype(np.int32)
            out = self.values[name]
            first = 0
            for rows, dictionary in pieces:
                lookup = np.append(maps[first:first + len(dictionary)], np.int32(-1))  # local -1: missing
                out[rows] = lookup[out[rows]]
                first += len(dictionary)
        self.chunk_dictionaries = {name: [] for name in _ARRAY_CODES}
        for name in _ARRAY_CODES:
            if self.texts[name]:
                self._join_phase_parts() if name == "phase_id" else self._unify_text_parts(name)

    def permute(self, order: np.ndarray) -> None:
        for name in self.values:
            self.values[name] = self.values[name][order]
        for name in self.valid:
            self.valid[name] = self.valid[name][order]

    def narrow(self) -> None:
        """Smaller integer types where every value fits (event ids, deliverable counts, label codes)."""
        for name, small in (("event_id", np.int32), ("deliverable_count", np.int16), ("category", np.int16),
                            ("complexity", np.int16), ("model", np.int16)):
            values = self.values[name]
            info = np.iinfo(small)
            if len(values) == 0 or (info.min <= int(values.min()) and int(values.max()) <= info.max):
                self.values[name] = values.astype(small)

    def int_column(self, name: str) -> IntColumn:
        return IntColumn(self.values[name], self.valid.get(name))

    def code_column(self, name: str) -> IntColumn:
        codes = self.values[name]
        valid = codes >= 0
        return IntColumn(np.maximum(codes, 0), None if valid.all() else valid)

    def label_column(self, name: str) -> LabelColumn:
        return LabelColumn(self.values[name], tuple(self.labels[name].to_pylist()))


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


def _flag_values(column: pa.ChunkedArray) -> np.ndarray:
    """A nullable boolean column as int8: 1, 0, or -1 where missing."""
    array = _one_array(column)
    flags = numpy_of(filled(array, False)).astype(np.int8)
    if array.null_count:
        flags[~numpy_of(array.is_valid())] = -1
    return flags


def _same_array(a: pa.Array, b: pa.Array) -> bool:
    """The same Arrow data (one buffer shared), without comparing values."""
    return len(a) == len(b) and a.offset == b.offset and [x.address if x else 0 for x in a.buffers()] == \
        [x.address if x else 0 for x in b.buffers()]


def _load_arrays(directory: Path, manifest: dict[str, Any]) -> EventArrays:
    filler = _Filler(int(manifest["rows"]))
    files = [directory / part["file"] for part in manifest["parts"]]
    starts = []  # each part's first row
    position = 0
    for path in files:
        starts.append(position)
        position += pq.read_metadata(path).num_rows
    if position != filler.rows:
        raise ColumnarStoreError(f"the manifest of {directory} counts {filler.rows} rows, its parts {position}")

    def read(names: tuple[str, ...]) -> None:
        # Phase ids are read as text and encoded here: with about one distinct id per phase, Parquet's
        # dictionary pages overflow to plain ones, and asking pyarrow for a dictionary costs twice as
        # much as encoding the text (0.87 s against 0.41 s per million, measured).
        # One column at a time: the peak is the arrays plus one decoded column per thread, not plus a
        # whole part (at a million rows 75 MB above the arrays instead of 145, for the same time).
        # ParquetFile, not pq.read_table: that one imports pyarrow.dataset, which imports pandas (0.3 s, 50 MB).
        for path, start in zip(files, starts):
            with pq.ParquetFile(path) as parquet:
                for name in names:
                    filler.add(parquet.read(columns=[name]), start)

    # Two threads, each filling its own columns (no column is written by both): Parquet decoding, Arrow's
    # hashing and numpy's copies let go of the GIL, so the phase ids (a third of the reading) and the two
    # 8-byte columns are read beside the others, on the second of the machine's cores.
    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = pool.submit(read, _BESIDE)
        read(tuple(name for name in _ARRAY_NAMES if name not in _BESIDE))
        beside.result()
    release_freed_memory()  # what the second thread's malloc arena kept (storage.process_memory)
    filler.unify_labels()
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
