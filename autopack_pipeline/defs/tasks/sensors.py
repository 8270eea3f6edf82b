"""Task sensors: task generation when new metrics or calibrations land, and the execution of
collect-samples tasks that need no approval (launch a targeted collection, close the task when it ends).

The task's state machine is ``services.tasks_execution`` (``plan_collection`` before the collection,
``close_collection`` after it), the one the CLI's ``tasks execute`` runs; here the collection itself is
a Dagster run of targeted_collection_job.
"""

from __future__ import annotations

import dagster as dg

from autopack_pipeline.defs.calibration.assets import calibration_recommendations
from autopack_pipeline.defs.jobs import targeted_collection_job
from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.instance import latest_materialization, unfinished_run
from autopack_pipeline.defs.tasks.assets import generated_tasks
from autopack_pipeline.defs.tasks.jobs import task_generation_job
from autopack_pipeline.llm.factory import PAID_BACKENDS
from autopack_pipeline.services.tasks_execution import (
    AUTO_EXECUTE_OFF,
    ExecutionResult,
    close_collection,
    paid_backend_refusal,
    plan_collection,
)
from autopack_pipeline.settings import Settings, load_settings
from autopack_pipeline.storage.tasks import cleanup_stale_tasks, get_task, pending_tasks

TASK_TAG = "autopack/task-id"
ATTEMPT_TAG = "autopack/task-attempt"
TASKS_PER_TICK = 5


@dg.sensor(
    name="task_generation_sensor",
    job=task_generation_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests task_generation_job when new tier_metrics or calibration_recommendations land and "
        "AUTOPACK_TASK_GENERATION_ENABLED is true; once per pair of materialisations."
    ),
)
def task_generation_sensor(context: dg.SensorEvaluationContext):
    settings = load_settings()
    if not settings.task_generation_enabled:
        return dg.SkipReason("task generation is off (AUTOPACK_TASK_GENERATION_ENABLED=false)")
    instance = context.instance
    metrics = latest_materialization(instance, tier_metrics)
    recommendations = latest_materialization(instance, calibration_recommendations)
    missing = [name for name, record in (("tier_metrics", metrics), ("calibration_recommendations", recommendations))
               if record is None]
    if missing:
        return dg.SkipReason(f"generated_tasks needs {' and '.join(missing)}, never materialised yet")
    batch_key = f"{metrics.storage_id}-{recommendations.storage_id}"
    batch = f"tier_metrics {metrics.storage_id} / calibration_recommendations {recommendations.storage_id}"
    if context.cursor == batch_key:
        return dg.SkipReason(f"{batch} already handed to task_generation_job; waiting for new ones")
    newest = max((metrics, recommendations), key=lambda record: record.storage_id)
    running = unfinished_run(instance, newest)
    if running is not None:
        return dg.SkipReason(f"{batch}: run {running.run_id[:8]} is still {running.status.value}; waiting for it")
    tasks = latest_materialization(instance, generated_tasks)
    if tasks is not None and tasks.storage_id > newest.storage_id:
        return dg.SkipReason(f"{batch}: generated_tasks already materialised after them (run {tasks.run_id[:8]})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"tasks-{batch_key}")],
        cursor=batch_key,
    )


def _collection_request(engine, settings: Settings, task: dict) -> tuple[dg.RunRequest | None, str]:
    """A targeted collection run for one pending collect-samples task, or why there is none; the run-status
    sensors close the task when that run ends."""
    plan = plan_collection(engine, settings, task)
    if isinstance(plan, ExecutionResult):
        return None, f"{plan.task_id} {plan.outcome}: {plan.message}"
    config = {"run_id": plan.run_id, "category": plan.template_category, "complexity": plan.template_complexity,
              "phases": plan.phases}
    request = dg.RunRequest(
        run_key=plan.run_id,
        run_config={"ops": {"telemetry_collection_run": {"config": config}}},
        tags={TASK_TAG: plan.task["task_id"], ATTEMPT_TAG: plan.run_id},
    )
    return request, (f"{plan.task['task_id']}: {plan.phases} phases for {plan.group} "
                     f"({plan.clean_samples_before} of {plan.threshold} clean samples)")


@dg.sensor(
    name="auto_execution_sensor",
    job=targeted_collection_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches targeted_collection_job for pending collect-samples tasks that need no approval "
        "(AUTOPACK_TASK_GENERATION_AUTO_EXECUTE); coefficient changes always wait for a person."
    ),
)
def auto_execution_sensor(context: dg.SensorEvaluationContext, telemetry_db: TelemetryDatabase):
    settings = load_settings()
    if not settings.task_generation_auto_execute:
        return dg.SkipReason(AUTO_EXECUTE_OFF)
    if settings.llm_backend in PAID_BACKENDS:
        return dg.SkipReason(paid_backend_refusal(settings.llm_backend))
    engine = telemetry_db.engine()
    stale = cleanup_stale_tasks(engine)
    if stale:
        context.log.warning(f"{stale} abandoned in-progress task(s) failed as stale")
    tasks = pending_tasks(engine, kind="collect_samples", auto_executable_only=True, limit=TASKS_PER_TICK)
    if not tasks:
        waiting = len(pending_tasks(engine, limit=1000))
        return dg.SkipReason(
            f"no pending collect-samples task without approval; {waiting} pending task(s) wait for a person"
        )
    requests, notes = [], []
    for task in tasks:
        request, note = _collection_request(engine, settings, task)
        notes.append(note)
        if request is not None:
            requests.append(request)
    context.log.info("; ".join(notes))
    if not requests:
        return dg.SkipReason("no collection needed: " + "; ".join(notes))
    return dg.SensorResult(run_requests=requests)


def close_collection_task(engine, run: dg.DagsterRun) -> str:
    """Complete or fail the task behind a finished targeted collection run (``close_collection``)."""
    task_id = run.tags.get(TASK_TAG)
    if not task_id:
        return f"run {run.run_id[:8]} was not launched for a task"
    task = get_task(engine, task_id)
    if task is None or task["status"] != "in_progress":
        return f"task {task_id} is {task['status'] if task else 'gone'}; nothing to close"
    attempt = run.tags.get(ATTEMPT_TAG) or run.run_id[:50]
    ran = f"collection {attempt} (Dagster run {run.run_id[:8]}, {run.status.value})"
    result = close_collection(engine, task, attempt, ran)
    how = {"completed": "completed", "retry": "back to pending for a retry"}.get(result.outcome, "failed")
    return f"task {task_id} {how}: {result.message}"


@dg.run_status_sensor(
    name="collection_task_success_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[targeted_collection_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Closes the task behind a targeted collection run that succeeded.",
)
def collection_task_success_sensor(context: dg.RunStatusSensorContext, telemetry_db: TelemetryDatabase):
    return dg.SkipReason(close_collection_task(telemetry_db.engine(), context.dagster_run))


@dg.run_failure_sensor(
    name="collection_task_failure_sensor",
    monitored_jobs=[targeted_collection_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Closes (or sends back for a retry) the task behind a targeted collection run that failed.",
)
def collection_task_failure_sensor(context: dg.RunFailureSensorContext, telemetry_db: TelemetryDatabase):
    return dg.SkipReason(close_collection_task(telemetry_db.engine(), context.dagster_run))
