"""The one Definitions object of the project; workspace.yaml loads this module."""

import dagster as dg

from autopack_pipeline.assets import PIPELINE_ASSETS
from autopack_pipeline.jobs import analysis_job, telemetry_pipeline_job
from autopack_pipeline.resources import LLMBackendResource, TelemetryDatabase

defs = dg.Definitions(
    assets=PIPELINE_ASSETS,
    jobs=[telemetry_pipeline_job, analysis_job],
    resources={
        "telemetry_db": TelemetryDatabase(),
        "llm": LLMBackendResource(),
    },
)
