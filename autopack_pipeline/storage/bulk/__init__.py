"""Synthetic telemetry in bulk: runs, tiers, phases and estimation events, millions at a time.

What a team gathers over months of Autopack runs, generated in seconds, for benchmarks and for trying
the analysis at scale. The rows are what our own collection would have written:

* a phase's deliverables come from a pool of archetypes per (category, complexity, deliverable
  count), priced once each by the real :class:`~autopack_pipeline.domain.estimator.TokenEstimator`
  and ``select_budget`` with the coefficient file in ``seeds/``;
* the output a phase "wants" follows the simulated backend (``seeds/simulated_llm_profile.yaml``):
  a log-normal body per (category, complexity), a Pareto tail, malformed answers (a file missing,
  so no success) and degenerate near-empty answers (below 50 tokens, which the writer never stores);
* the Builder's rules decide each attempt: the first call runs under the selected budget, a
  truncated call escalates once to ``min(int(base * 1.25), 64000)``, a second truncation fails;
* columns derived by the writer (SMAPE, waste ratio, underestimated, ``is_truncated_output``) are
  computed the way :func:`~autopack_pipeline.storage.events.estimation_metrics` computes them.

A small share of events carries Autopack's legacy category spellings (``testing``,
``documentation``, ``IMPLEMENT_FEATURE``), as a database that Autopack itself wrote for a while does,
so the analysis has to normalise them. Phase outcomes and escalation rows are not synthesised.

Everything is drawn from numpy generators seeded by ``(seed, chunk number)``, so a seed gives the
same rows on SQLite and PostgreSQL, whatever the progress reporting. Event ids are the database's
own (autoincrement / sequence). Timestamps continue after the newest event already stored, so
appending a second batch to a database looks like more months of use.

Loading: SQLite through ADBC's SQLite driver (Arrow tables bound column by column in C) in large transactions,
with ``synchronous=OFF`` and foreign-key enforcement off for the load (the generator produces the
runs, tiers and phases every event refers to, and the tests check the keys); PostgreSQL through
``COPY ... FROM STDIN`` (CSV written by pyarrow) on the psycopg connection. A PostgreSQL append,
where every index is maintained row by row, copies the events on a second connection while the first
copies the phases (two backends, two cores); that needs the foreign-key triggers off for the load
(``session_replication_role``, superuser or granted), otherwise it runs on one connection with the
keys checked by the server.

The modules: ``archetypes`` (the priced phase pool), ``generate`` (the chunks), ``rows`` (chunks as table
rows), ``loader`` (what the loaders share), ``sqlite`` and ``postgresql`` (the loaders), ``load``
(:func:`bulk_load`).
"""

from autopack_pipeline.storage.bulk.archetypes import (
    ARCHETYPE_VARIANTS,
    CATEGORY_WEIGHTS,
    COMPLEXITY_WEIGHTS,
    DEFAULT_LEGACY_FRACTION,
    DELIVERABLE_WEIGHTS,
    LEGACY_SPELLINGS,
    Archetypes,
    load_archetypes,
)
from autopack_pipeline.storage.bulk.generate import (
    DEFAULT_START,
    EVENTS_PER_RUN,
    PHASE_GAP_SECONDS,
    PHASE_ID_SCHEMES,
    PHASES_PER_CHUNK,
    RETRY_DELAY_SECONDS,
    SynthChunk,
    generate_chunks,
)
from autopack_pipeline.storage.bulk.load import RunsAlreadyPresent, SynthSummary, bulk_load, default_run_count
from autopack_pipeline.storage.bulk.loader import Progress
from autopack_pipeline.storage.bulk.postgresql import PG_PIECE_PHASES, PG_TRANSACTION_EVENTS
from autopack_pipeline.storage.bulk.rows import SYNTH_MODEL, phase_ids_for, run_id_for
from autopack_pipeline.storage.bulk.sqlite import SQLITE_INDEX_SORT_KIB, SQLITE_LOAD_PRAGMAS, SQLITE_TRANSACTION_EVENTS

__all__ = [
    "ARCHETYPE_VARIANTS",
    "CATEGORY_WEIGHTS",
    "COMPLEXITY_WEIGHTS",
    "DEFAULT_LEGACY_FRACTION",
    "DEFAULT_START",
    "EVENTS_PER_RUN",
    "DELIVERABLE_WEIGHTS",
    "LEGACY_SPELLINGS",
    "PG_PIECE_PHASES",
    "PG_TRANSACTION_EVENTS",
    "PHASES_PER_CHUNK",
    "PHASE_GAP_SECONDS",
    "PHASE_ID_SCHEMES",
    "RETRY_DELAY_SECONDS",
    "SQLITE_INDEX_SORT_KIB",
    "SQLITE_LOAD_PRAGMAS",
    "SQLITE_TRANSACTION_EVENTS",
    "SYNTH_MODEL",
    "Archetypes",
    "Progress",
    "RunsAlreadyPresent",
    "SynthChunk",
    "SynthSummary",
    "bulk_load",
    "default_run_count",
    "generate_chunks",
    "load_archetypes",
    "phase_ids_for",
    "run_id_for",
]
