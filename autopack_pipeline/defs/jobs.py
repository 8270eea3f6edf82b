"""The jobs that span stages: the whole loop, the analysis alone, and a targeted collection re-measured.

Each stage's own jobs sit in its folder (events/, metrics/, calibration/, tasks/).
"""

import dagster as dg

from autopack_pipeline.defs.asset_graph import PIPELINE_ASSETS
from autopack_pipeline.defs.collection.assets import telemetry_collection_run
from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.samples.assets import success_samples
from autopack_pipeline.defs.shared.run_tags import WRITES

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
