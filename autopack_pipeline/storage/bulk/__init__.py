"""Bulk loaders: generated chunks of runs, tiers, phases and estimation events written in bulk.

The rows come from :mod:`autopack_pipeline.synth` (the generator) as :class:`SynthChunk` columns; this
package only writes them. Event ids are the database's own (autoincrement / sequence).

SQLite through ADBC's SQLite driver in one transaction (into an empty table, Arrow tables bound to
prepared INSERTs in C; appends, staged in in-memory tables by a helper thread and copied by
``INSERT ... SELECT``), with ``synchronous=OFF`` and foreign-key enforcement off for the load (the
generator produces the runs, tiers and phases every event refers to, and the tests check the keys);
PostgreSQL through ADBC's PostgreSQL driver, whose ``adbc_ingest`` writes Arrow tables by binary
``COPY``. A PostgreSQL append, where every index is maintained row by row, copies the events on a
second connection while the first copies the phases (two backends, two cores); that needs the
foreign-key triggers off for the load (``session_replication_role``, superuser or granted), otherwise
it runs on one connection with the keys checked by the server.

The modules: ``chunk`` (what a loader takes), ``rows`` (chunks as table rows), ``loader`` (what the
loaders share), ``sqlite`` and ``postgresql`` (the loaders; ``postgresql_open``: the PostgreSQL load's
connections and what it asks on them, opened while the caller asks its own questions;
``postgresql_steps``: its index drops and rebuilds and its undo after a failure), ``loading``
(:func:`make_loader`, :func:`load_chunks` and the questions a load asks the database first).
"""

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import Progress
from autopack_pipeline.storage.bulk.loading import (
    check_bulk_backend,
    latest_event_time,
    load_chunks,
    stored_run_ids,
    text_timestamp,
)
from autopack_pipeline.storage.bulk.postgresql import PG_PIECE_PHASES, PG_TRANSACTION_EVENTS
from autopack_pipeline.storage.bulk.postgresql_steps import (
    LoadInProgress,
    remove_interrupted_loads,
    unfinished_synthetic_runs,
)
from autopack_pipeline.storage.bulk.rows import SYNTH_MODEL, phase_ids_for, run_id_for
from autopack_pipeline.storage.bulk.sqlite import SQLITE_INDEX_SORT_KIB, SQLITE_LOAD_PRAGMAS

__all__ = [
    "LoadInProgress",
    "PG_PIECE_PHASES",
    "PG_TRANSACTION_EVENTS",
    "SQLITE_INDEX_SORT_KIB",
    "SQLITE_LOAD_PRAGMAS",
    "SYNTH_MODEL",
    "Progress",
    "SynthChunk",
    "check_bulk_backend",
    "latest_event_time",
    "load_chunks",
    "phase_ids_for",
    "remove_interrupted_loads",
    "run_id_for",
    "stored_run_ids",
    "text_timestamp",
    "unfinished_synthetic_runs",
]
