"""Collection: one run of phases drained through the Builder, as the CLI's ``collect`` and the
``telemetry_collection_run`` asset both start it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import (
    RunSpec,
    check_template_phase_count,
    default_phase_set,
    load_phase_file,
    phases_from_templates,
)
from autopack_pipeline.collection.run import CollectionSummary, default_run_id, run_collection
from autopack_pipeline.domain.estimator import TokenEstimator
from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.builder import Builder
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services.seed_files import load_coefficients_for
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.events import MIN_VALID_OUTPUT_TOKENS
from autopack_pipeline.storage.retry import DatabaseUnavailable
from autopack_pipeline.storage.run_lease import RunBusy

# What a front end needs around a collection, named here so it calls this layer only: the backend it
# builds from the settings and its options (make_backend), the check of a targeted run's phase count,
# the shortest answer the writer records, and the two ways a run is refused before it starts.
COLLECTION_REFUSALS = (RunBusy, DatabaseUnavailable)
__all__ = ["COLLECTION_REFUSALS", "DEFAULT_TEMPLATE_PHASES_PER_GROUP", "MIN_VALID_OUTPUT_TOKENS",
           "check_template_phase_count", "collect", "make_backend"]

# Enough template phases per group that the default collection gives several groups the 19 clean
# samples a 95% coverage bound needs (with the simulated LLM: four of seven), so the README's first
# command ends with an actionable proposal; a collection run costs about a second of CPU.
DEFAULT_TEMPLATE_PHASES_PER_GROUP = 24


def collect(
    engine: Engine,
    settings: Settings,
    backend: LLMBackend,
    *,
    run_id: str | None = None,
    concurrency: int = 4,
    template_phases_per_group: int = DEFAULT_TEMPLATE_PHASES_PER_GROUP,
    category: str | None = None,
    complexity: str | None = None,
    phases: int | None = None,
    phases_file: Path | None = None,
    progress: Callable[..., None] | None = None,
) -> CollectionSummary:
    """One collection run over one of three phase sets.

    ``phases_file``: the phases of a YAML file; ``category`` and ``complexity``: ``phases`` template
    phases for that one group (a targeted run); otherwise Autopack's ten seed phases plus
    ``template_phases_per_group`` template phases for every group.
    """
    if phases_file is not None:
        run, phase_list = load_phase_file(Path(phases_file))
        run_id = run_id or run.run_id  # a phases file names its own run
    elif category or complexity:
        if not (category and complexity):
            raise ValueError("a targeted collection needs both a category and a complexity")
        run = RunSpec(run_id=run_id or default_run_id())
        phase_list = phases_from_templates(settings.seeds_dir, category, complexity, phases or 5)
    else:
        run, phase_list = default_phase_set(settings.seeds_dir, template_phases_per_group)
    run = run.model_copy(update={"run_id": run_id or default_run_id()})
    builder = Builder(TokenEstimator(load_coefficients_for(settings)), backend, settings.model)
    return run_collection(engine, run, phase_list, builder, concurrency=concurrency, progress=progress,
                          db_retry_seconds=settings.db_retry_seconds, lease_seconds=settings.run_lease_seconds)
