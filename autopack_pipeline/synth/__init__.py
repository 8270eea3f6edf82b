"""Synthetic telemetry in bulk: runs, tiers, phases and estimation events, millions at a time.

What a team gathers over months of Autopack runs, generated in seconds, for benchmarks and for trying
the analysis at scale. The rows are what our own collection would have written:

* a phase's deliverables come from a pool of archetypes per (category, complexity, deliverable
  count), priced once each by the real :class:`~autopack_pipeline.domain.estimator.TokenEstimator`
  and ``select_budget`` with the coefficient file in ``seeds/``;
* the output a phase "wants" follows the simulated backend (``seeds/simulated_llm_profile.yaml``):
  a log-normal body per (category, complexity), a Pareto tail, malformed answers (a file missing,
  so no success) and degenerate near-empty answers (below 50 tokens, which the writer never stores);
* the Builder's own escalation rule (:mod:`autopack_pipeline.domain.escalation`) decides each
  attempt: the first call runs under the selected budget, a call that ran out of room escalates once
  to ``min(int(base * 1.25), 64000)``, a second truncation fails;
* columns derived by the writer (SMAPE, waste ratio, underestimated, ``is_truncated_output``) are
  computed the way :func:`~autopack_pipeline.storage.events.estimation_metrics` computes them.

A small share of events carries Autopack's legacy category spellings (``testing``,
``documentation``, ``IMPLEMENT_FEATURE``), as a database that Autopack itself wrote for a while does,
so the analysis has to normalise them. Phase outcomes and escalation rows are not synthesised.

Everything is drawn from numpy generators seeded by ``(seed, chunk number)``, so a seed gives the
same rows on SQLite and PostgreSQL, whatever the progress reporting. Timestamps continue after the
newest event already stored, so appending a second batch to a database looks like more months of use.

The modules: ``archetypes`` (the priced phase pool), ``generate`` (the chunks), ``load``
(:func:`bulk_load`: generation handed to the loaders of :mod:`autopack_pipeline.storage.bulk`).
"""

from autopack_pipeline.synth.archetypes import (
    ARCHETYPE_VARIANTS,
    CATEGORY_WEIGHTS,
    COMPLEXITY_WEIGHTS,
    DEFAULT_LEGACY_FRACTION,
    DELIVERABLE_WEIGHTS,
    LEGACY_SPELLINGS,
    Archetypes,
    load_archetypes,
)
from autopack_pipeline.synth.generate import (
    DEFAULT_START,
    EVENTS_PER_RUN,
    PHASE_GAP_SECONDS,
    PHASE_ID_SCHEMES,
    PHASES_PER_CHUNK,
    RETRY_DELAY_SECONDS,
    generate_chunks,
)
from autopack_pipeline.synth.load import RunsAlreadyPresent, SynthSummary, bulk_load, default_run_count

__all__ = [
    "ARCHETYPE_VARIANTS",
    "CATEGORY_WEIGHTS",
    "COMPLEXITY_WEIGHTS",
    "DEFAULT_LEGACY_FRACTION",
    "DEFAULT_START",
    "DELIVERABLE_WEIGHTS",
    "EVENTS_PER_RUN",
    "LEGACY_SPELLINGS",
    "PHASES_PER_CHUNK",
    "PHASE_GAP_SECONDS",
    "PHASE_ID_SCHEMES",
    "RETRY_DELAY_SECONDS",
    "Archetypes",
    "RunsAlreadyPresent",
    "SynthSummary",
    "bulk_load",
    "default_run_count",
    "generate_chunks",
    "load_archetypes",
]
