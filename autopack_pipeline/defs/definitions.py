"""The one Definitions object of the project; workspace.yaml loads this module.

Each stage's folder (collection/, events/, samples/, metrics/, calibration/, tasks/) holds its assets
with their checks, sensors, schedules, ops and jobs; shared/ holds what several stages use.
"""

import dagster as dg

from autopack_pipeline.defs.asset_graph import ALL_ASSETS, ALL_CHECKS
from autopack_pipeline.defs.calibration.jobs import apply_calibration_job, calibration_job
from autopack_pipeline.defs.calibration.sensors import calibration_gate_sensor
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.events.jobs import drift_check_job
from autopack_pipeline.defs.events.schedules import drift_check_schedule
from autopack_pipeline.defs.jobs import analysis_job, targeted_collection_job, telemetry_pipeline_job
from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.metrics.daily import daily_tier_metrics
from autopack_pipeline.defs.metrics.jobs import daily_metrics_job
from autopack_pipeline.defs.resources import build_resources
from autopack_pipeline.defs.samples.assets import success_samples
from autopack_pipeline.defs.shared.automation import metrics_automation_sensor
from autopack_pipeline.defs.tasks.jobs import approve_task_job, complete_task_job, reject_task_job, task_generation_job
from autopack_pipeline.defs.tasks.sensors import (
    auto_execution_sensor,
    collection_task_failure_sensor,
    collection_task_success_sensor,
    task_generation_sensor,
)

# Steps are light numpy work on one telemetry database: running them in the run's own process
# saves a Python start-up per step (seconds each) and keeps each run a single SQLite writer. A
# deployment that wants steps spread out swaps this line only (README, "Scaling out"): raw_events'
# IO manager hands the events to steps in other processes too.
defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[
        telemetry_pipeline_job,
        analysis_job,
        calibration_job,
        daily_metrics_job,
        task_generation_job,
        drift_check_job,
        targeted_collection_job,
        apply_calibration_job,
        approve_task_job,
        reject_task_job,
        complete_task_job,
    ],
    sensors=[
        calibration_gate_sensor,
        task_generation_sensor,
        auto_execution_sensor,
        collection_task_success_sensor,
        collection_task_failure_sensor,
        metrics_automation_sensor(dg.AssetSelection.assets(success_samples, tier_metrics, daily_tier_metrics)),
    ],
    schedules=[drift_check_schedule],
    executor=dg.in_process_executor,
    resources=build_resources() | event_io_resources(),
)
