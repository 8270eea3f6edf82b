"""Reading the store's parts into :class:`~autopack_pipeline.domain.analysis.EventArrays`: numpy
arrays filled part by part, labels unified into one dictionary per column over all parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn
from autopack_pipeline.storage.columnar.encoding import ColumnarStoreError

_ARRAY_INTS = {
    "event_id": np.int64, "deliverable_count": np.int32, "predicted_output_tokens": np.int32,
    "actual_output_tokens": np.int32, "selected_budget": np.int32, "actual_max_tokens": np.int32,
    "attempt": np.int32,
}
_ARRAY_FLAGS = ("success", "truncated", "is_truncated_output")
_ARRAY_CODES = ("run_id", "phase_id", "category", "complexity", "model")


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
        self.texts: dict[str, list[tuple[int, pa.ChunkedArray]]] = {name: [] for name in _ARRAY_CODES}

    def _mark_nulls(self, name: str, where: slice, array: pa.Array) -> None:
        if array.null_count:
            mask = self.valid.setdefault(name, np.ones(self.rows, dtype=bool))
            mask[where] = array.is_valid().to_numpy(zero_copy_only=False)

    def add(self, table: pa.Table, start: int) -> None:
        where = slice(start, start + table.num_rows)
        for name in (*_ARRAY_INTS, "timestamp"):
            array = table.column(name).combine_chunks()
            if name == "timestamp":
                array = array.view(pa.int64())
            self._mark_nulls(name, where, array)
            self.values[name][where] = (array.fill_null(0) if array.null_count else array).to_numpy()
        for name in _ARRAY_FLAGS:
            array = table.column(name).combine_chunks()
            flags = self.values[name]
            flags[where] = array.fill_null(False).to_numpy(zero_copy_only=False)
            if array.null_count:
                flags[where][~array.is_valid().to_numpy(zero_copy_only=False)] = -1
        for name in _ARRAY_CODES:
            out = self.values[name]
            column = table.column(name)
            if not pa.types.is_dictionary(column.type):
                # Text (phase ids): kept as it is and encoded once over every part in unify_labels, one
                # hash pass in all, where encoding per part and then unifying hashes every id twice.
                self.texts[name].append((start, column))
                continue
            pieces = self.chunk_dictionaries[name]
            offset = start
            for chunk in column.chunks:
                out[offset:offset + len(chunk)] = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                if pieces and pieces[-1][0].stop == offset and _same_array(pieces[-1][1], chunk.dictionary):
                    pieces[-1] = (slice(pieces[-1][0].start, offset + len(chunk)), pieces[-1][1])
                else:  # chunks sharing a dictionary (Parquet gives every row group its column's) count once
                    pieces.append((slice(offset, offset + len(chunk)), chunk.dictionary))
                offset += len(chunk)

    def unify_labels(self) -> None:
        """One dictionary per label column over every chunk of every part, and the codes into it.

        Text columns (phase ids) are dictionary-encoded over all their parts at once. For dictionary
        columns, the chunks' dictionaries are concatenated and dictionary-encoded once (one hash pass in
        Arrow): the result's dictionary is the unified one, and its indices, cut at the chunk boundaries,
        map each chunk's local codes onto it. Python never touches a label value, so a million distinct
        phase ids cost what a thousand do, bar the hashing.
        """
        for name, parts in self.texts.items():
            if not parts:
                continue
            encoded = pc.dictionary_encode(pa.chunked_array([chunk for _start, column in parts
                                                             for chunk in column.chunks], type=pa.string()))
            out = self.values[name]
            offset = parts[0][0]
            for chunk in encoded.chunks:  # parts were added in row order, so chunks follow one another
                out[offset:offset + len(chunk)] = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                offset += len(chunk)
            if encoded.num_chunks:
                self.chunk_dictionaries[name].append((slice(parts[0][0], offset), encoded.chunk(0).dictionary))
        self.texts = {name: [] for name in _ARRAY_CODES}
        for name, pieces in self.chunk_dictionaries.items():
            if not pieces:
                self.labels[name] = pa.array([], type=pa.string())
                continue
            if len(pieces) == 1:  # one dictionary already (one part, or text encoded above): the codes stand
                self.labels[name] = pieces[0][1].cast(pa.string())
                continue
            encoded = pc.dictionary_encode(pa.concat_arrays([d.cast(pa.string()) for _rows, d in pieces]))
            self.labels[name] = encoded.dictionary
            maps = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            out = self.values[name]
            first = 0
            for rows, dictionary in pieces:
                lookup = np.append(maps[first:first + len(dictionary)], np.int32(-1))  # local -1: missing
                out[rows] = lookup[out[rows]]
                first += len(dictionary)
        self.chunk_dictionaries = {name: [] for name in _ARRAY_CODES}

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


def _same_array(a: pa.Array, b: pa.Array) -> bool:
    """The same Arrow data (one buffer shared), without comparing values."""
    return len(a) == len(b) and a.offset == b.offset and [x.address if x else 0 for x in a.buffers()] == \
        [x.address if x else 0 for x in b.buffers()]


def _load_arrays(directory: Path, manifest: dict[str, Any]) -> EventArrays:
    filler = _Filler(int(manifest["rows"]))
    names = [*_ARRAY_INTS, "timestamp", *_ARRAY_FLAGS, *_ARRAY_CODES]
    position = 0
    for part in manifest["parts"]:
        # Phase ids are read as text and encoded here in one pass: with about one distinct id per phase,
        # Parquet's dictionary pages overflow to plain ones, and asking pyarrow for a dictionary costs
        # twice as much as encoding the text (0.87 s against 0.41 s per million, measured).
        table = pq.read_table(directory / part["file"], columns=names)
        filler.add(table, position)
        position += table.num_rows
        del table
    if position != filler.rows:
        raise ColumnarStoreError(f"the manifest of {directory} counts {filler.rows} rows, its parts {position}")
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
