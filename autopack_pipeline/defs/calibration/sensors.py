"""The calibration gate sensor: calibration_job once per new batch of clean samples, when the gate is
open and raw_events' data-quality checks passed.

It reads the latest materialisations' metadata (never the data itself), says in every skip which
number stopped it, and keys its runs on the storage id of the samples batch, so each batch is
handled once however many ticks see it.
"""

import dagster as dg

from autopack_pipeline.defs.calibration.assets import calibration_recommendations
from autopack_pipeline.defs.calibration.jobs import calibration_job
from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.events.checks import DATA_QUALITY_CHECK_KEYS
from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.samples.assets import success_samples
from autopack_pipeline.defs.shared.instance import latest_materialization, metadata_value, unfinished_run
from autopack_pipeline.domain.analysis import GateDecision
from autopack_pipeline.services.analysis import gate_of_counts

BATCH_TAG = "autopack/samples-batch"


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
    groups = metadata_value(samples, "group_counts")
    under = metadata_value(metrics, "underestimation_rate_pct")
    truncation = metadata_value(metrics, "truncation_rate_pct")
    if groups is None or under is None or truncation is None:
        return None
    sizes = {(g["category"], g["complexity"]): int(g["n"]) for g in groups if int(g["n"]) > 0}
    figures = metadata_value(metrics, "group_tier1")  # None before it was recorded: overall rates alone decide
    tier1 = {"underestimation_rate_pct": float(under), "truncation_rate_pct": float(truncation)}
    return gate_of_counts(sizes, tier1, group_tier1=figures)


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
    running = unfinished_run(instance, samples)
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
        window = metadata_value(samples, "window")
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
