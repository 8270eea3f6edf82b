"""The asset graph: the six software-defined assets in pipeline order, the per-day metrics, and the checks.

The per-day metrics are partitioned by day, so they are not in the unpartitioned pipeline jobs:
declarative automation keeps them current, and daily_metrics_job (or a backfill) fills any day.
"""

from autopack_pipeline.defs.calibration.assets import calibration_recommendations
from autopack_pipeline.defs.collection.assets import telemetry_collection_run
from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.events.checks import DATA_QUALITY_CHECKS
from autopack_pipeline.defs.events.drift_checks import estimator_drift
from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.metrics.checks import TIER_CHECKS
from autopack_pipeline.defs.metrics.daily import daily_tier_metrics
from autopack_pipeline.defs.samples.assets import success_samples
from autopack_pipeline.defs.tasks.assets import generated_tasks

PIPELINE_ASSETS = [
    telemetry_collection_run,
    raw_events,
    success_samples,
    tier_metrics,
    calibration_recommendations,
    generated_tasks,
]

DAILY_ASSETS = [daily_tier_metrics]
ALL_ASSETS = [*PIPELINE_ASSETS, *DAILY_ASSETS]

ALL_CHECKS = [*DATA_QUALITY_CHECKS, *TIER_CHECKS, estimator_drift]
