"""The telemetry collection run: phases from ``seeds/`` drained through the Builder."""

from pathlib import Path

import dagster as dg

from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import database_metadata, next_step_metadata
from autopack_pipeline.llm.factory import PAID_BACKENDS
from autopack_pipeline.services.collecting import DEFAULT_TEMPLATE_PHASES_PER_GROUP, collect
from autopack_pipeline.settings import load_settings


class CollectionConfig(dg.Config):
    """Every field has a default, so the asset materialises from the UI with no run config."""

    run_id: str | None = None
    backend: str | None = None
    concurrency: int = 4
    template_phases_per_group: int = DEFAULT_TEMPLATE_PHASES_PER_GROUP
    seed: int | None = None
    # A targeted run: `phases` template phases for one (category, complexity) group.
    category: str | None = None
    complexity: str | None = None
    phases: int | None = None
    # A phases YAML file instead of the default set (relative paths resolve against the cwd).
    phases_file: str | None = None
    # A paid backend (anthropic) spends money: "Materialize all" must not, so only this says it may.
    allow_paid_backend: bool = False


@dg.asset(
    group_name="telemetry",
    kinds={"python", "sqlite"},
    pool="anthropic",
)
def telemetry_collection_run(
    context: dg.AssetExecutionContext,
    config: CollectionConfig,
    telemetry_db: TelemetryDatabase,
    llm: LLMBackendResource,
) -> dg.MaterializeResult:
    """A telemetry collection run: Autopack's ten seed phases plus template phases for every group,
    each asked of the LLM with the estimator's budget, one event recorded per Builder call.

    Fails (as `collect` exits 1) when the run did not do what was asked: it stopped (refused API
    key, database unavailable), every phase failed, no event was written, or events were lost or are
    still spooled.

    The default backend is the offline simulator; set AUTOPACK_LLM_BACKEND=anthropic and
    ANTHROPIC_API_KEY for the real API. A paid backend collects only with `allow_paid_backend: true`
    in the run config; otherwise the run records a skipped collection, with the reason, before any
    call, and the assets downstream analyse the events already stored.
    """
    settings = load_settings()
    name = config.backend or llm.backend or settings.llm_backend
    if name in PAID_BACKENDS and not config.allow_paid_backend:
        return skipped_collection(name, telemetry_db, context)
    backend = llm.build(config.backend, config.seed)
    context.log.info("collecting with the %s backend", backend.name)
    summary = collect(
        telemetry_db.engine(),
        settings,
        backend,
        run_id=config.run_id,
        concurrency=config.concurrency,
        template_phases_per_group=config.template_phases_per_group,
        category=config.category,
        complexity=config.complexity,
        phases=config.phases,
        phases_file=Path(config.phases_file) if config.phases_file else None,
    )
    metadata = {
        "collection": "ran",
        "run_id": summary.run_id,
        "backend": summary.backend,
        "model": summary.model,
        "phases_total": summary.phases_total,
        "phases_completed": summary.phases_completed,
        "phases_failed": summary.phases_failed,
        "phases_skipped_complete": summary.phases_skipped_complete,
        "events_written": summary.events_written,
        "short_answers_not_recorded": summary.short_answers_not_recorded,
        "escalations": summary.escalations,
        "phases_pending": summary.phases_pending,
        "events_spooled": summary.events_spooled,
        "events_not_stored": summary.events_not_stored,
        "outcomes_not_stored": summary.outcomes_not_stored,
        **database_metadata(telemetry_db.identity()),
    }
    if not summary.ok:
        # As `collect` exits 1: a run that did not do what was asked is not a materialisation.
        raise dg.Failure(description="; ".join(summary.problems()), metadata=metadata)
    return dg.MaterializeResult(value=summary.as_dict(), metadata=metadata)


def skipped_collection(backend: str, telemetry_db: TelemetryDatabase,
                       context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """A collection on a paid backend that its run config did not allow: nothing asked, and said why."""
    reason = (f"the {backend} backend is paid and this run's config does not say `allow_paid_backend: true`; "
              "no call was made")
    context.log.warning(f"collection skipped: {reason}")
    return dg.MaterializeResult(
        value={"skipped": True, "reason": reason, "backend": backend, "run_id": None, "events_written": 0},
        metadata={
            **next_step_metadata(
                f"To collect with {backend} (billed), launch again with run config `ops: {{telemetry_collection_run: "
                "{config: {allow_paid_backend: true}}}`; the assets downstream analysed the events already stored."),
            "collection": "skipped",
            "skipped_reason": dg.MetadataValue.text(reason),
            "backend": backend,
            "events_written": 0,
            **database_metadata(telemetry_db.identity()),
        },
    )
