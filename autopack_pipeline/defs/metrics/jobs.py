"""The per-day metrics of one UTC day (the run's partition); a backfill over a date range fills a series."""

import dagster as dg

from autopack_pipeline.defs.metrics.daily import daily_tier_metrics
from autopack_pipeline.defs.shared.run_tags import READS

daily_metrics_job = dg.define_asset_job(
    name="daily_metrics_job",
    selection=dg.AssetSelection.assets(daily_tier_metrics),
    description=(
        "Tier 1 and Tier 2 of one UTC day (the run's partition) from the events raw_events last read; a backfill "
        "over a date range fills a series. Requested by metrics_automation_sensor for today and yesterday."
    ),
    tags=READS,
)
