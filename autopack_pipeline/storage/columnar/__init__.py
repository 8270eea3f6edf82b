"""A columnar copy of the events table, extracted incrementally by event id.

Reading ten million rows out of SQLite costs a minute; grouping them there costs more (peers.md §5).
So the analysis reads a copy: Parquet files in a directory, one ``manifest.json`` naming the files and
the high-water ``event_id`` already copied. A refresh asks the database only for rows above that
mark and appends them as one new file, so its cost follows the new rows, not the history.

Why Parquet files and not a DuckDB file: the store is append-only and immutable per file, so a
refresh writes one new file and swaps the manifest atomically while readers (the Dagster webserver,
a CLI) keep reading the old one; a DuckDB file takes a single writer lock across processes, and its
on-disk format is tied to the DuckDB version. Parquet is read here with pyarrow, and any engine
(DuckDB, polars, pandas) can read it too.

Layout (default: ``.autopack/columnar/<file name>/`` next to a SQLite file; for PostgreSQL
``./.autopack/columnar/<backend>-<host>-<port>-<database>/``; ``AUTOPACK_COLUMNAR_DIR`` overrides
both)::

    manifest.json           format, source database, high-water event id, parts, pending id gaps,
                            the next free run and phase codes
    part-000001.parquet     ~1M rows each from a cold extraction; one file per refresh after that
    inputs-000001.parquet   the prediction inputs of part-000001's events (deliverables, coefficient
                            version, doc features), written the first time calibration asks for them

Compact types: labels (run, category, complexity, stop reason, model) are dictionary-encoded, token
counts and flags int32/bool (integers delta-packed), timestamps µs UTC, phase ids plain strings. Each
part also carries its rows' run and phase codes (``run_code``, ``phase_code``: one per run id and one
per phase over the whole store, given as the part is written, ``phases.py``), so loading the analysis
arrays reads integers, not 8.5M distinct phase ids at ten million events.

Only the re-prediction of ``calibrate``/``backtest``/``apply-calibration`` reads the prediction
inputs, so a refresh leaves them out (the deliverables text made a cold extraction of 10M events
60 % longer); ``ColumnarStore.inputs_table`` reads them for the parts that lack them, by each part's
id range, so after the first call only new parts are read again. Compaction merges them with their
parts once they are in use.

Safety: the manifest names the database it copies, and the row at the high-water mark is checked
on every refresh; a different database, a replaced file or a deleted row there rebuilds the store.
Rows are immutable in Autopack's table, so nothing below the mark is re-read, except on PostgreSQL,
where a transaction can commit an id below one already seen: ids missing below the mark are asked
for again for ten minutes. ``refresh(full=True)`` rebuilds from scratch.

The modules: ``encoding`` (columns, Arrow types, sizes), ``layout`` (where a store lives),
``batches`` (rows out of the database), ``store`` (:class:`ColumnarStore`: manifest, refresh,
reading), ``gaps`` (PostgreSQL's id gaps), ``phases`` and ``part_codes`` (run and phase codes),
``arrays`` (parts into the analysis arrays), ``prefetch`` (helper threads ahead), ``sqlite_children``
(a cold SQLite extraction read by two child processes through ADBC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autopack_pipeline.storage.columnar.encoding import (
    BATCH_IDS,
    GAP_RETENTION_SECONDS,
    INPUT_KINDS,
    MANIFEST,
    MAX_GAP_RANGES,
    MAX_SMALL_PARTS,
    PART_ROWS,
    SMALL_PART_ROWS,
    STORE_FORMAT,
    TABLE,
    ColumnarStoreError,
    Progress,
    RefreshResult,
    input_schema,
    store_schema,
)
from autopack_pipeline.storage.columnar.layout import COLUMNAR_DIR_VARIABLE, store_directory_for
from autopack_pipeline.storage.columnar.prefetch import prefetch
from autopack_pipeline.storage.columnar.store import ColumnarStore, refresh_store

if TYPE_CHECKING:
    from autopack_pipeline.storage.columnar.batches import _BatchReader


def __getattr__(name: str) -> Any:
    """The database reader on first use (PEP 562): it loads SQLAlchemy, which reading the store never needs."""
    if name == "_BatchReader":
        from autopack_pipeline.storage.columnar.batches import _BatchReader

        return _BatchReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BATCH_IDS",
    "COLUMNAR_DIR_VARIABLE",
    "GAP_RETENTION_SECONDS",
    "INPUT_KINDS",
    "input_schema",
    "MANIFEST",
    "MAX_GAP_RANGES",
    "MAX_SMALL_PARTS",
    "PART_ROWS",
    "SMALL_PART_ROWS",
    "STORE_FORMAT",
    "store_schema",
    "TABLE",
    "ColumnarStore",
    "ColumnarStoreError",
    "Progress",
    "RefreshResult",
    "_BatchReader",
    "prefetch",
    "refresh_store",
    "store_directory_for",
]
