"""Jobs, named for what they do."""

import dagster as dg

from autopack_pipeline.assets import PIPELINE_ASSETS

telemetry_pipeline_job = dg.define_asset_job(
    name="telemetry_pipeline_job",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    description="The whole loop: collect telemetry, analyse it, calibrate when the gate allows, generate tasks.",
)

analysis_job = dg.define_asset_job(
    name="analysis_job",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS[1:]),
    description="Everything after collection, on the events already in the telemetry database.",
)
