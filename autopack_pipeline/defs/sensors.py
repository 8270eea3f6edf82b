"""Sensors that decide, from what is already in the instance, when the next run is worth it.

Both read the latest materialisations' metadata (never the data itself), say in every skip which
number stopped them, and key their runs on the storage ids of the materialisations they act on,
so each new batch is handled once however many ticks see it.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from autopack_pipeline.collection.phases import PhaseSetError
from autopack_pipeline.defs.assets.calibration import calibration_recommendations
from autopack_pipeline.defs.assets.events import raw_events
from autopack_pipeline.defs.assets.metrics import tier_metrics
from autopack_pipeline.defs.assets.samples import success_samples
from autopack_pipeline.defs.assets.tasks import generated_tasks
from autopack_pipeline.defs.checks import DATA_QUALITY_CHECK_KEYS
from autopack_pipeline.defs.jobs import calibration_job, targeted_collection_job, task_generation_job
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain.fast_metrics import GateDecision, certain_group_breaches, decide_gate, largest_group
from autopack_pipeline.services.tasks_execution import (
    AUTO_EXECUTE_OFF,
    group_sample_counts,
    phases_for_shortfall,
    template_group_for,
)
from autopack_pipeline.settings import Settings, load_settings
from autopack_pipeline.storage.tasks import claim_task, cleanup_stale_tasks, get_task, mark_task_status, pending_tasks

BATCH_TAG = "autopack/samples-batch"
TASK_TAG = "autopack/task-id"
ATTEMPT_TAG = "autopack/task-attempt"
TASKS_PER_TICK = 5


def latest_materialization(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(asset.key, limit=1).records
    return records[0] if records else None


def _metadata_value(record: dg.EventLogRecord, key: str) -> Any:
    entry = record.asset_materialization.metadata.get(key)
    return entry.value if entry is not None else None


def _unfinished_run(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dg.DagsterRun | None:
    """The run that produced ``record`` while it is still going (a later step may do our job)."""
    if not record.run_id:
        return None  # reported from outside any run
    run = instance.get_run_by_id(record.run_id)
    return run if run is not None and not run.is_finished else None


def data_quality_problems(instance: dg.DagsterInstance, events: dg.EventLogRecord | None) -> list[str]:
    """Why the latest data-quality evaluation of raw_events does not vouch for the data (empty when it does).

    Blocking checks stop only their own run, so a later run, or a sensor, must look for itself.
    """
    problems = []
    for key in DATA_QUALITY_CHECK_KEYS:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is None:
            problems.append(f"data-quality check {key.name} has never been evaluated on raw_events")
            continue
        # No evaluation: planned and still to run, or its step failed or was skipped; either way nothing
        # vouches for the data, whatever the record's status is called.
        if record.evaluation is None:
            problems.append(f"data-quality check {key.name} has no result from run {record.run_id[:8]} yet")
            continue
        evaluation = record.evaluation
        if not evaluation.passed:
            problems.append(f"data-quality check {key.name} failed: {evaluation.description}")
        target = evaluation.target_materialization_data
        if events is not None and target is not None and target.storage_id < events.storage_id:
            problems.append(
                f"data-quality check {key.name} last ran on an older raw_events "
                f"(materialisation {target.storage_id}, latest {events.storage_id})"
            )
    return problems


def gate_from_metadata(samples: dg.EventLogRecord, metrics: dg.EventLogRecord) -> GateDecision | None:
    """The DESIGN §6 gate, by the same rule the calibration asset uses, on materialisation metadata.

    success_samples records every (category, complexity) group size, which is all the gate reads of
    the samples, so the decision is the one the asset will reach on the same data. ``None`` when the
    metadata predates these entries.
    """
    groups = _metadata_value(samples, "group_counts")
    under = _metadata_value(metrics, "underestimation_rate_pct")
    truncation = _metadata_value(metrics, "truncation_rate_pct")
    if groups is None or under is None or truncation is None:
        return None
    sizes = {(g["category"], g["complexity"]): int(g["n"]) for g in groups if int(g["n"]) > 0}
    largest = largest_group(sizes)
    figures = _metadata_value(metrics, "group_tier1")  # None before it was recorded: overall rates alone decide
    breaches = None if figures is None else certain_group_breaches(figures, sizes)
    return decide_gate(sum(sizes.values()), largest, float(under), float(truncation), group_breaches=breaches)


@dg.sensor(
    name="calibration_gate_sensor",
    job=calibration_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests calibration_job once per new batch of clean samples when the calibration gate is open "
        "(>= 20 clean samples, a group with >= 5, Tier 1 breached) and raw_events' data-quality checks passed."
    ),
)
def calibration_gate_sensor(context: dg.SensorEvaluationContext):
    instance = context.instance
    samples = latest_materialization(instance, success_samples)
    if samples is None:
        return dg.SkipReason("success_samples has never been materialised: run telemetry_pipeline_job first")
    batch = f"samples batch {samples.storage_id}"
    if context.cursor == str(samples.storage_id):
        return dg.SkipReason(f"{batch} was already handed to calibration_job; waiting for new samples")
    running = _unfinished_run(instance, samples)
    if running is not None:
        return dg.SkipReason(f"{batch} comes from run {running.run_id[:8]}, still {running.status.value}; waiting for it")
    problems = data_quality_problems(instance, latest_materialization(instance, raw_events))
    if problems:
        return dg.SkipReason(f"{batch}: calibration waits for clean data: " + "; ".join(problems))
    metrics = latest_materialization(instance, tier_metrics)
    if metrics is None or metrics.storage_id < samples.storage_id:
        return dg.SkipReason(f"{batch}: tier_metrics has not been materialised on these samples yet")
    gate = gate_from_metadata(samples, metrics)
    if gate is None:
        return dg.SkipReason(
            f"{batch}: the materialisations lack the gate's metadata (group_counts, Tier-1 rates); "
            "materialise success_samples and tier_metrics again"
        )
    if not gate.open:
        window = _metadata_value(samples, "window")
        return dg.SkipReason(f"{batch}" + (f" ({window})" if window else "") + f": {gate.summary()}")
    done = latest_materialization(instance, calibration_recommendations)
    if done is not None and done.storage_id > samples.storage_id:
        return dg.SkipReason(
            f"{batch}: calibration already ran on it (run {done.run_id[:8]}); {gate.summary()}"
        )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"calibration-samples-{samples.storage_id}",
                tags={BATCH_TAG: str(samples.storage_id)},
            )
        ],
        cursor=str(samples.storage_id),
    )


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
    running = _unfinished_run(instance, newest)
    if running is not None:
        return dg.SkipReason(f"{batch}: run {running.run_id[:8]} is still {running.status.value}; waiting for it")
    tasks = latest_materialization(instance, generated_tasks)
    if tasks is not None and tasks.storage_id > newest.storage_id:
        return dg.SkipReason(f"{batch}: generated_tasks already materialised after them (run {tasks.run_id[:8]})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"tasks-{batch_key}")],
        cursor=batch_key,
    )


def _collection_request(engine, settings: Settings, task: dict[str, Any]) -> tuple[dg.RunRequest | None, str]:
    """A targeted collection run for one pending collect-samples task, or why there is none.

    Mirrors tasks_execution.execute_task up to the collection itself (same phase count, template
    group and attempt id), but hands the collection to a Dagster run; the run-status sensors close
    the task when that run ends.
    """
    task_id = task["task_id"]
    evidence = task.get("evidence") or {}
    category, complexity, threshold = evidence.get("category"), evidence.get("complexity"), evidence.get("threshold")
    if not (category and complexity and isinstance(threshold, int) and threshold > 0):
        message = "evidence lacks category, complexity or a positive threshold; cannot target a collection"
        mark_task_status(engine, task_id, "failed", failure_reason=message)
        return None, f"{task_id} failed: {message}"
    group = f"{category}/{complexity}"
    before, phases_seen = group_sample_counts(engine, category, complexity)
    if before >= threshold:
        mark_task_status(engine, task_id, "completed")
        return None, f"{task_id} completed: {group} already has {before} clean samples (threshold {threshold})"
    try:
        template_category, template_complexity = template_group_for(settings, category, complexity)
    except PhaseSetError as exc:
        mark_task_status(engine, task_id, "failed", failure_reason=f"cannot build phases for {group}: {exc}")
        return None, f"{task_id} failed: cannot build phases for {group}"
    attempt = f"{task_id}-attempt-{int(task.get('retry_count') or 0) + 1}"
    phases = phases_for_shortfall(threshold - before, before, phases_seen)
    if not claim_task(engine, task_id, executed_in_run_id=attempt):
        return None, f"{task_id}: another executor took it first"
    config = {"run_id": attempt, "category": template_category, "complexity": template_complexity, "phases": phases}
    request = dg.RunRequest(
        run_key=attempt,
        run_config={"ops": {"telemetry_collection_run": {"config": config}}},
        tags={TASK_TAG: task_id, ATTEMPT_TAG: attempt},
    )
    return request, f"{task_id}: {phases} phases for {group} ({before} of {threshold} clean samples)"


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
    """Complete or fail the task behind a finished targeted collection run, from the database's count.

    The count decides, not the run status: a run that failed after writing enough samples (say, at a
    blocking data-quality check further on) still fulfilled the task. Short of the threshold is a
    failed attempt, back to pending while retries are left.
    """
    task_id = run.tags.get(TASK_TAG)
    if not task_id:
        return f"run {run.run_id[:8]} was not launched for a task"
    task = get_task(engine, task_id)
    if task is None or task["status"] != "in_progress":
        return f"task {task_id} is {task['status'] if task else 'gone'}; nothing to close"
    evidence = task.get("evidence") or {}
    category, complexity, threshold = evidence["category"], evidence["complexity"], int(evidence["threshold"])
    attempt = run.tags.get(ATTEMPT_TAG) or run.run_id[:50]
    after, _ = group_sample_counts(engine, category, complexity)
    ran = f"collection {attempt} (Dagster run {run.run_id[:8]}, {run.status.value})"
    if after >= threshold:
        mark_task_status(engine, task_id, "completed", executed_in_run_id=attempt)
        return f"task {task_id} completed: {ran}; {category}/{complexity} has {after} clean samples (threshold {threshold})"
    message = f"{ran}: {category}/{complexity} has {after} clean samples, {threshold} needed"
    status = mark_task_status(engine, task_id, "failed", executed_in_run_id=attempt, failure_reason=message,
                              increment_retry=True)
    return f"task {task_id} {'back to pending for a retry' if status == 'retry' else 'failed'}: {message}"


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
