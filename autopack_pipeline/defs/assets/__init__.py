"""The six software-defined assets, one module per stage, in pipeline order, and the per-day metrics.

The per-day metrics are partitioned by day, so they are not in the unpartitioned pipeline jobs:
declarative automation keeps them current, and daily_metrics_job (or a backfill) fills any day.
"""

from autopack_pipeline.defs.assets.calibration import calibration_recommendations
from autopack_pipeline.defs.assets.collection import telemetry_collection_run
from autopack_pipeline.defs.assets.daily_metrics import daily_tier_metrics
from autopack_pipeline.defs.assets.events import raw_events
from autopack_pipeline.defs.assets.metrics import tier_metrics
from autopack_pipeline.defs.assets.samples import success_samples
from autopack_pipeline.defs.assets.tasks import generated_tasks

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
