"""Jobs, named for what they do.

Every job that writes the telemetry database carries the run tag ``autopack/telemetry-db: write`` (run_tags.py);
dagster.yaml lets one such run at a time out of the queue, because SQLite takes one writer at a
time. The drift checks only read, and carry ``read``.
"""

import dagster as dg

from autopack_pipeline.defs.assets import DAILY_ASSETS, PIPELINE_ASSETS
from autopack_pipeline.defs.assets.calibration import calibration_recommendations
from autopack_pipeline.defs.assets.collection import telemetry_collection_run
from autopack_pipeline.defs.assets.events import raw_events
from autopack_pipeline.defs.assets.metrics import tier_metrics
from autopack_pipeline.defs.assets.samples import success_samples
from autopack_pipeline.defs.assets.tasks import generated_tasks
from autopack_pipeline.defs.checks import DRIFT_CHECK_KEYS
from autopack_pipeline.defs.ops import apply_calibration, approve_task_op, complete_task_op, reject_task_op
from autopack_pipeline.defs.run_tags import READS, WRITES

telemetry_pipeline_job = dg.define_asset_job(
    name="telemetry_pipeline_job",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    description="The whole loop: collect telemetry, analyse it, calibrate when the gate allows, generate tasks.",
    tags=WRITES,
)

analysis_job = dg.define_asset_job(
    name="analysis_job",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS[1:]),
    description="Everything after collection, on the events already in the telemetry database.",
    tags=WRITES,
)

calibration_job = dg.define_asset_job(
    name="calibration_job",
    selection=dg.AssetSelection.assets(calibration_recommendations, generated_tasks),
    description=(
        "Calibrate on the latest samples and metrics (no new collection), then turn the result into tasks. "
        "Requested by calibration_gate_sensor once per batch of samples."
    ),
    tags=WRITES,
)

task_generation_job = dg.define_asset_job(
    name="task_generation_job",
    selection=dg.AssetSelection.assets(generated_tasks),
    description="Turn the latest metrics, calibration and drift into improvement tasks. Requested by task_generation_sensor.",
    tags=WRITES,
)

drift_check_job = dg.define_asset_job(
    name="drift_check_job",
    selection=dg.AssetSelection.checks(*DRIFT_CHECK_KEYS),
    description="Only the drift checks (PSI, KS, CUSUM) on the telemetry database; run daily by drift_check_schedule.",
    tags=READS,
)

targeted_collection_job = dg.define_asset_job(
    name="targeted_collection_job",
    selection=dg.AssetSelection.assets(telemetry_collection_run, raw_events, success_samples, tier_metrics),
    description=(
        "Collect samples for one (category, complexity) group (collection config: category, complexity, phases), "
        "then re-read and re-measure, so the gate sensor sees the new batch. Launched by auto_execution_sensor "
        "for collect-samples tasks."
    ),
    tags=WRITES,
)

daily_metrics_job = dg.define_asset_job(
    name="daily_metrics_job",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS),
    description=(
        "Tier 1 and Tier 2 of one UTC day (the run's partition) from the events raw_events last read; a backfill "
        "over a date range fills a series. Requested by metrics_automation_sensor for today and yesterday."
    ),
    tags=READS,
)


@dg.job(
    description=(
        "Apply a reviewed calibration patch (config: patch_path, method, confirm) to the coefficient file, after "
        "showing its diff and backtest; writes only with confirm: true. Launched by a person from the UI: no "
        "sensor or schedule targets it."
    ),
    tags=READS,  # it reads the telemetry database (the backtest); it writes the coefficient file only
)
def apply_calibration_job():
    apply_calibration()


# A person's decisions on generated tasks, launched from the UI with config
# {ops: {<op>: {config: {task_id: TASK-..., reason: ...}}}}; an unknown or closed task fails the run.
_TASK_DECISION = "Launched by a person from the UI (config: task_id, reason); fails on an unknown or closed task."


@dg.job(description=f"Approve a pending generated task. {_TASK_DECISION}", tags=WRITES)
def approve_task_job():
    approve_task_op()


@dg.job(description=f"Reject a pending generated task, with a reason. {_TASK_DECISION}", tags=WRITES)
def reject_task_job():
    reject_task_op()


@dg.job(description=f"Mark a generated task completed once it was carried out. {_TASK_DECISION}", tags=WRITES)
def complete_task_job():
    complete_task_op()
