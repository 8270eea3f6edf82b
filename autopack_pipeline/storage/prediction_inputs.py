"""What each stored event keeps about its prediction: deliverables, coefficient version, doc features.

The analysis arrays leave these out because the metrics never need them; the backtest and the
calibration's re-prediction do (``domain.reprediction``). They are read whole columns at a time:
from the columnar copy (``storage/columnar``), refreshed first, which reads them out of the
database beside its parts the first time they are asked for and for new parts only after that;
without a usable copy (an in-memory database), from the database in one query. Each column becomes
codes into its distinct values in Arrow, and each distinct ``deliverables_json`` text is parsed once (phases of
a run, retries and templates repeat them), so no Python object is made per event. Columns a
database does not have (an Autopack database has no ``coefficients_version``) come back missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from autopack_pipeline.domain.reprediction import FEATURE_COLUMNS, EncodedColumn, PredictionInputs
from autopack_pipeline.storage.arrow_modules import pa, pc
from autopack_pipeline.storage.catalog import EVENTS_TABLE as TABLE
from autopack_pipeline.storage.columnar.encoding import filled, numpy_of
from autopack_pipeline.storage.columnar.image import complete_image
from autopack_pipeline.storage.columnar.inputs_image import read_inputs_image, write_inputs_image
from autopack_pipeline.storage.columnar.parts import parts_holding

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from autopack_pipeline.storage.columnar import ColumnarStore
    from autopack_pipeline.storage.handle import Database
INPUT_COLUMNS = ("deliverables_json", "coefficients_version", *FEATURE_COLUMNS)
TEXT_COLUMNS = ("deliverables_json", "coefficients_version", "context_quality")  # the rest are flags


def _deliverables(text: str | None) -> tuple[str, ...] | None:
    """``deliverables_json`` as a tuple of strings; unparseable JSON counts as no deliverables."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return None
    return tuple(str(v) for v in value) if isinstance(value, list) else None


def _code_type(distinct: int) -> type[np.signedinteger]:
    """The narrowest signed integer for codes -1 .. distinct - 1: the doc features and versions take a
    byte per event, not four (the inputs are held through the whole calibration, its memory peak)."""
    return np.int8 if distinct < 2**7 else np.int16 if distinct < 2**15 else np.int32


def _encoded(column: pa.ChunkedArray | pa.Array, parse=None) -> EncodedColumn:
    """A column as codes into its distinct values (nulls: -1), values through ``parse`` when given."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_null(column.type) or column.null_count == len(column):
        # Nothing stored (an Autopack database keeps no doc feature: four flags and a text, all NULL): no
        # value to encode, where encoding a million NULLs per column cost ~12 ms at a million events.
        return EncodedColumn(np.full(len(column), -1, dtype=np.int8))
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    values = column.dictionary.to_pylist()
    codes = numpy_of(filled(column.indices, -1)).astype(_code_type(len(values)))
    if parse is not None:
        values = [parse(value) for value in values]
        # A text that parses to nothing (bad JSON) is missing, like NULL.
        lookup = np.array([i if value is not None else -1 for i, value in enumerate(values)] + [-1], dtype=codes.dtype)
        codes = lookup[codes]
    return EncodedColumn(codes, tuple(values))


def prediction_inputs_from_arrow(table: pa.Table) -> PredictionInputs:
    """``event_id`` and any of :data:`INPUT_COLUMNS` as the domain's :class:`PredictionInputs`
    (a missing ``coefficients_version`` is None everywhere; missing feature columns are left out)."""
    rows = table.num_rows
    ids = numpy_of(table.column("event_id")).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    names = set(table.column_names)
    none = EncodedColumn(np.full(rows, -1, dtype=np.int8))
    return PredictionInputs(
        ids,
        _encoded(table.column("deliverables_json"), _deliverables) if "deliverables_json" in names else none,
        _encoded(table.column("coefficients_version")) if "coefficients_version" in names else none,
        {name: _encoded(table.column(name)) for name in FEATURE_COLUMNS if name in names},
    )


def read_prediction_inputs(database: Database, event_ids: Iterable[int] | None = None, *,
                           id_range: tuple[int, int] | None = None, refreshed: bool = False) -> PredictionInputs:
    """Every stored event's prediction inputs (of ``event_ids`` only, when given; of the events with
    ids from ``id_range[0]`` to ``id_range[1]`` only, when given: the columnar copy reads only the
    parts that can hold them). ``refreshed``: the events asked about came through the columnar copy,
    refreshed by this process moments ago, so its parts hold every one of them and it is not refreshed
    again (the second refresh's database round trips cost ``calibrate`` up to a tenth of a second while
    its other threads hold the GIL)."""
    from autopack_pipeline.storage.columnar import ColumnarStore, ColumnarStoreError, refresh_store

    table = None
    try:
        store = ColumnarStore.for_database(database) if refreshed else None
        manifest = store.manifest() if store is not None else None
        if manifest is None or (id_range is not None and manifest["high_water_event_id"] < id_range[1]):
            store = refresh_store(database)[0]  # not refreshed, or not holding every event asked about
        if store is not None and event_ids is None and (kept := _kept_inputs(store, database, id_range)) is not None:
            return kept
        if store is not None:
            table = store.inputs_table(database, as_codes=TEXT_COLUMNS, id_range=id_range)
    except (ColumnarStoreError, OSError):
        table = None  # no usable copy: the database itself
    if table is None:
        from autopack_pipeline.storage.handle import as_handle

        table = _read_from_database(as_handle(database).engine)
        if id_range is not None and table.num_rows:
            ids = table.column("event_id")
            table = table.filter(pc.and_(pc.greater_equal(ids, id_range[0]), pc.less_equal(ids, id_range[1])))
    if event_ids is not None:
        wanted = pa.array(np.fromiter((int(i) for i in event_ids), dtype=np.int64))
        table = table.filter(pc.is_in(table.column("event_id").cast(pa.int64()), value_set=wanted))
    inputs = prediction_inputs_from_arrow(table)
    del table
    pa.default_memory_pool().release_unused()  # the table's memory back to the system: the analysis is at its peak next
    return inputs


def _kept_inputs(store: ColumnarStore, database: Database, id_range: tuple[int, int] | None) -> PredictionInputs | None:
    """The inputs of ``id_range``'s events from the store's image (``columnar.inputs_image``): mapped, or read
    and kept there first: every part's, unless ``id_range`` reaches only some parts and others have no inputs
    yet (reading those would read inputs from the database that nobody asked for), then ``id_range``'s own.
    None when the store has no image of its current state."""
    manifest = store.manifest()
    image = complete_image(store.directory, manifest) if manifest is not None else None
    if image is None:
        return None
    kept = read_inputs_image(image, id_range)
    if kept is None:
        parts = manifest["parts"]
        every_part = len(parts_holding(manifest, id_range)) == len(parts) or all("inputs" in part for part in parts)
        span = None if every_part else id_range
        kept = prediction_inputs_from_arrow(store.inputs_table(database, as_codes=TEXT_COLUMNS, id_range=span))
        pa.default_memory_pool().release_unused()
        if complete_image(store.directory, store.manifest()) == image:  # no refresh since: the image's own inputs
            write_inputs_image(image, kept, span)
    return kept.within(id_range)


def _read_from_database(engine: Engine) -> pa.Table:
    """The input columns the events table has, in one query, as Arrow columns of the raw values."""
    from sqlalchemy import text

    from autopack_pipeline.storage.catalog import EngineCatalog

    with EngineCatalog(engine) as catalog:
        if TABLE not in catalog.table_names():
            return pa.table({"event_id": pa.array([], type=pa.int64())})
        present = catalog.column_names(TABLE)
    chosen = ["event_id", *(name for name in INPUT_COLUMNS if name in present)]
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {', '.join(chosen)} FROM {TABLE}")).fetchall()
    columns = list(zip(*rows)) if rows else [()] * len(chosen)
    return pa.table({name: pa.array([_plain(v) for v in values] if name in FEATURE_COLUMNS else list(values),
                                    type=pa.int64() if name == "event_id" else None)
                     for name, values in zip(chosen, columns)})


def _plain(value):
    """A stored feature as what the estimator reads: SQLite keeps booleans as 0/1."""
    return bool(value) if isinstance(value, int) and not isinstance(value, bool) else value
