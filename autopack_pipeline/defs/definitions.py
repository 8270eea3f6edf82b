"""The one Definitions object of the project; workspace.yaml loads this module."""

import dagster as dg

from autopack_pipeline.defs.assets import ALL_ASSETS, daily_tier_metrics, success_samples, tier_metrics
from autopack_pipeline.defs.automation import metrics_automation_sensor
from autopack_pipeline.defs.checks import ALL_CHECKS
from autopack_pipeline.defs.jobs import (
    analysis_job,
    apply_calibration_job,
    approve_task_job,
    calibration_job,
    complete_task_job,
    daily_metrics_job,
    drift_check_job,
    reject_task_job,
    targeted_collection_job,
    task_generation_job,
    telemetry_pipeline_job,
)
from autopack_pipeline.defs.resources import build_resources
from autopack_pipeline.defs.schedules import drift_check_schedule
from autopack_pipeline.defs.sensors import (
    auto_execution_sensor,
    calibration_gate_sensor,
    collection_task_failure_sensor,
    collection_task_success_sensor,
    task_generation_sensor,
)

# Steps are light pandas work on one telemetry database: running them in the run's own process
# saves a Python start-up per step (seconds each) and keeps each run a single SQLite writer. A
# deployment that wants steps spread out swaps this line only (README, "Scaling out").
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
    resources=build_resources(),
)
