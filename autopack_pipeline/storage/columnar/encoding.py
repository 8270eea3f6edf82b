"""The store's columns and their Arrow types: labels dictionary-encoded, token counts int32, flags
bool, timestamps µs UTC, phase ids plain strings; a batch read from the database becomes a table of
this schema here. Also the store's sizes and limits, its error, and what a refresh reports."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.storage.arrow_modules import pa, pc
from autopack_pipeline.storage.catalog import EVENTS_TABLE
from autopack_pipeline.storage.frames import EVENT_COLUMNS
from autopack_pipeline.storage.timestamps import SHOWN_ROWS, UnreadableTimestamp, merge_ids

STORE_FORMAT = 4  # 4: phase codes in the parts (phases.py); 3: the prediction inputs in files beside the parts
MANIFEST = "manifest.json"
TABLE = EVENTS_TABLE
PART_ROWS = 1_000_000  # rows per file of a cold extraction
BATCH_IDS = 250_000  # event ids per database query
SMALL_PART_ROWS = PART_ROWS // 2
MAX_SMALL_PARTS = 8  # more small files than this are merged into one
GAP_RETENTION_SECONDS = 600
MAX_GAP_RANGES = 1_000

Progress = Callable[[int, int], None]


# Column -> kind. Order is the events frame's (storage/frames.py).
_KINDS: dict[str, str] = {
    "event_id": "key",
    "run_id": "label",
    "phase_id": "text",
    "timestamp": "timestamp",
    "category": "label",
    "complexity": "label",
    "deliverable_count": "int",
    "predicted_output_tokens": "int",
    "actual_output_tokens": "int",
    "selected_budget": "int",
    "actual_max_tokens": "int",
    "success": "flag",
    "truncated": "flag",
    "is_truncated_output": "flag",
    "stop_reason": "label",
    "model": "label",
    "attempt": "int",
}
# What each event keeps about its prediction (storage/prediction_inputs.py), read only by calibration's
# re-prediction and the backtest. A column group of its own, one file beside each part, extracted the
# first time it is asked for: the deliverables text alone made a cold extraction of 10M events 60 %
# longer, for commands the analysis never runs.
INPUT_KINDS: dict[str, str] = {
    "event_id": "key",
    "deliverables_json": "label",
    "coefficients_version": "label",
    "api_reference_required": "flag",
    "examples_required": "flag",
    "research_required": "flag",
    "usage_guide_required": "flag",
    "context_quality": "label",
}
# Long texts that repeat across many rows (a run's phases, retries and templates share deliverables):
# SQLite hands each distinct text of a batch once, with the ids of its rows (batches.py), rather than
# formatting it into a line per row, the most of what reading the prediction inputs cost.
GROUPED_LABELS = ("deliverables_json",)
assert list(_KINDS) == list(EVENT_COLUMNS), "the parts hold the events frame's columns"
# Integer columns of a handful of distinct values (ceilings, attempts, counts): dictionary pages read
# faster than delta-packed ones for these (3.5-3.9 against 4.3-5.8 ms per million) and take less room.
FEW_VALUES = ("deliverable_count", "selected_budget", "actual_max_tokens", "attempt")


@functools.cache
def arrow_type(kind: str) -> pa.DataType:
    """The Arrow type a part stores a column of ``kind`` as (built on first use: pyarrow imports then)."""
    return {
        "key": pa.int64(),
        "label": pa.dictionary(pa.int32(), pa.string()),
        "text": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "int": pa.int32(),
        "flag": pa.bool_(),
    }[kind]


# pyarrow imports pandas the first time it converts between Arrow and Python or numpy through its
# pandas machinery: ``pa.array`` and ``pa.scalar`` (a list, a Python number, even a numpy array) and
# ``Array.to_numpy``. That is 0.3 s and 50 MB that reading the store for ``calibrate`` or ``metrics``
# never needs, so the readers cross over through ``arrow_of`` and ``numpy_of`` instead.


def arrow_of(values: np.ndarray) -> pa.Array:
    """A numpy array of numbers or booleans (no nulls) as an Arrow array, sharing its memory where it can."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:  # Arrow keeps booleans as bits
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def numpy_of(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow numbers or booleans without nulls as numpy (a read-only view where it can be one)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_boolean(array.type):  # bits: as bytes of 0 and 1, read as booleans
        return array.cast(pa.int8()).to_tensor().to_numpy().view(np.bool_)
    return array.to_tensor().to_numpy()


def filled(array: pa.Array, value: Any) -> pa.Array:
    """``array`` (numbers or booleans) with its nulls set to ``value``; ``array`` itself when it has none."""
    if not array.null_count:
        return array
    return array.fill_null(arrow_of(np.full(1, value, dtype=array.type.to_pandas_dtype()))[0])


def read_parquet(path: Any, columns: list[str] | None = None, read_dictionary: list[str] | None = None) -> pa.Table:
    """One Parquet file (``columns`` of it) as a table. Through ``ParquetFile``, not ``pq.read_table``:
    that one imports pyarrow.dataset, whose import loads pandas (see ``arrow_of``)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, read_dictionary=read_dictionary) as parquet:
        return parquet.read(columns=columns)


def _schema(kinds: dict[str, str]) -> pa.Schema:
    return pa.schema([(name, arrow_type(kind)) for name, kind in kinds.items()])


@functools.cache
def no_labels() -> pa.Array:
    """An empty dictionary of labels."""
    return pa.nulls(0, pa.string())


@functools.cache
def store_schema() -> pa.Schema:
    """The schema of a part's events."""
    return _schema(_KINDS)


@functools.cache
def input_schema() -> pa.Schema:
    """The schema of a part's prediction inputs."""
    return _schema(INPUT_KINDS)


class ColumnarStoreError(RuntimeError):
    """The store or the database could not be read as expected."""


@dataclass
class RefreshResult:
    """What one refresh did."""

    directory: str
    rows_before: int
    new_rows: int
    rows_after: int
    high_water_before: int
    high_water: int
    parts_written: int
    parts_compacted: int
    seconds: float
    rebuilt: str | None = None  # why the store was rebuilt from scratch, if it was
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = f"columnar store {self.directory}: "
        if self.rebuilt:
            head += f"rebuilt ({self.rebuilt}); "
        return (head + f"{self.new_rows} new events up to event_id {self.high_water} "
                f"({self.rows_after} in total) in {self.seconds:.2f} s")


def _parse_types(timestamps_as_text: bool, kinds: dict[str, str] = _KINDS) -> dict[str, pa.DataType]:
    types = {}
    for name, kind in kinds.items():
        if kind == "timestamp":
            types[name] = pa.string() if timestamps_as_text else pa.int64()
        elif kind in ("label", "text"):
            types[name] = pa.string()
        elif kind == "flag":
            types[name] = pa.bool_()
        elif kind == "key":
            types[name] = pa.int64()
        else:
            types[name] = pa.int32()
    return types


def _unreadable_entry(rows: list[UnreadableTimestamp]) -> dict[str, Any]:
    """The manifest's record of the rows set aside: their count, id ranges (asked for again on every
    refresh) and the first few, as a command shows them."""
    return {"count": len(rows), "ranges": merge_ids(row.event_id for row in rows),
            "rows": [row.to_dict() for row in rows[:SHOWN_ROWS]]}


def _empty_parsed(timestamps_as_text: bool, kinds: dict[str, str] = _KINDS) -> pa.Table:
    return pa.schema(list(_parse_types(timestamps_as_text, kinds).items())).empty_table()


def _store_table(parsed: pa.Table, kinds: dict[str, str] = _KINDS) -> pa.Table:
    """A parsed batch (its timestamps already µs UTC) in the schema of ``kinds``, sorted by event_id."""
    columns = {}
    for name, kind in kinds.items():
        column = parsed.column(name)
        if kind == "timestamp":
            column = column.cast(pa.timestamp("us", tz="UTC"))
        elif kind == "label":
            if column.type != arrow_type("label"):  # already codes (a grouped label): kept as they are
                column = pc.dictionary_encode(column.cast(pa.string()))
        elif kind == "text":
            column = column.cast(pa.string())
        else:
            column = column.cast(arrow_type(kind))  # safe cast: an int32 overflow raises
        columns[name] = column
    table = pa.table(columns).combine_chunks()
    if table.num_rows > 1:
        ids = numpy_of(table.column("event_id"))
        if not np.all(ids[1:] > ids[:-1]):
            table = table.take(arrow_of(np.argsort(ids, kind="stable")))
    return table
