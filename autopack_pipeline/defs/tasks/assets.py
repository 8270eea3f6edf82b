"""Generated tasks: insights from metrics, calibration and phase outcomes as deduplicated improvement tasks."""

from typing import Any

import dagster as dg

from autopack_pipeline.defs.events.io_manager import EventSnapshotIOManager
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import database_metadata, next_step_metadata, task_todo_table
from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.drift import drift_insights
from autopack_pipeline.services.analysis import SampleSummary, TierMetrics
from autopack_pipeline.services.calibrating import CalibrationOutcome
from autopack_pipeline.services.pipeline import task_stage
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage import tasks as task_store

_INPUTS = ("raw_events", "success_samples", "tier_metrics", "calibration_recommendations")


def _input_materializations(context: dg.AssetExecutionContext) -> dict[str, dict[str, Any]]:
    """Run id and storage id of each input's latest materialisation, which is the one this run loaded.

    Provenance must never fail the asset, so an instance that cannot answer leaves the entry out.
    """
    found: dict[str, dict[str, Any]] = {}
    for name in _INPUTS:
        try:
            records = context.instance.fetch_materializations(dg.AssetKey(name), limit=1).records
        except Exception as exc:  # noqa: BLE001 - best effort, see above
            context.log.warning(f"no provenance for input {name}: {type(exc).__name__}: {exc}")
            continue
        if records:
            found[name] = {"dagster_run_id": records[0].run_id, "storage_id": records[0].storage_id}
    return found


@dg.asset(group_name="tasks", kinds={"python", "sqlite"})
def generated_tasks(
    context: dg.AssetExecutionContext,
    telemetry_db: TelemetryDatabase,
    raw_events: EventArrays,
    success_samples: SampleSummary,
    tier_metrics: TierMetrics,
    calibration_recommendations: CalibrationOutcome,
    event_snapshot_io_manager: dg.ResourceParam[EventSnapshotIOManager],
) -> dg.MaterializeResult:
    """Improvement tasks from Tier-1 breaches and truncation hot spots per group, actionable
    recommendations, groups short of samples, and the cost sinks, failure modes and retry causes in
    phase_outcome_events over the last 7 days; stored in generated_tasks with their evidence and the
    materialisations it came from. A task's id is a fingerprint of its finding, so a finding seen
    again is not stored twice. Only collect-samples tasks may run on their own; coefficient changes
    always wait for a person.
    """
    settings = load_settings()
    source = {"asset": "generated_tasks", "dagster_run_id": context.run.run_id,
              "inputs": _input_materializations(context)}
    # The drift of these events through raw_events' IO manager: the estimator_drift check of the same
    # run (nothing new since raw_events) asks it for the same report, so it is computed once.
    drift = drift_insights(event_snapshot_io_manager.drift_of(raw_events))
    tasks, stored = task_stage(telemetry_db.engine(), settings, raw_events, success_samples, tier_metrics,
                               calibration_recommendations, source=source, extra_insights=drift)
    if not settings.task_generation_enabled:
        context.log.info("task generation is off (AUTOPACK_TASK_GENERATION_ENABLED=false); no tasks generated")
    by_priority = {p: sum(t.priority == p for t in tasks) for p in ("critical", "high", "medium", "low")}
    # The to-do list is every open task in the database, not only this generation's findings.
    todo = [t for t in task_store.list_generated_tasks(telemetry_db.engine()) if t["status"] in task_store.OPEN_STATUSES]
    return dg.MaterializeResult(
        value=[task.as_dict() for task in tasks],
        metadata={
            **next_step_metadata(tasks_next_step(todo)),
            "task_generation_enabled": settings.task_generation_enabled,
            "tasks_generated": len(tasks),
            "tasks_new": len(stored.inserted),
            "tasks_refreshed": len(stored.refreshed) + len(stored.reopened),
            "tasks_superseded": len(stored.superseded),
            "tasks_auto_executable": sum(not t.requires_approval for t in tasks),
            **{f"tasks_{priority}": n for priority, n in by_priority.items()},
            "tasks_open": len(todo),
            "tasks": task_todo_table(todo),
            **database_metadata(telemetry_db.identity()),
        },
    )


def tasks_next_step(todo: list[dict[str, Any]]) -> str:
    """One line over the to-do list: how many open tasks, and how to act on one from the UI."""
    if not todo:
        return "Nothing to do: no open task."
    waiting = sum(t["status"] == "pending" for t in todo)
    return (f"{waiting} task(s) wait for a person: work down `tasks` from the top; each row says its next step. "
            "Launch approve_task_job, reject_task_job or complete_task_job with `task_id` (and `reason` to reject).")
