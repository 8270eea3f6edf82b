"""The drift checks alone, on the telemetry database as it is (run daily by drift_check_schedule)."""

import dagster as dg

from autopack_pipeline.defs.events.drift_checks import DRIFT_CHECK_KEYS
from autopack_pipeline.defs.shared.run_tags import READS

drift_check_job = dg.define_asset_job(
    name="drift_check_job",
    selection=dg.AssetSelection.checks(*DRIFT_CHECK_KEYS),
    description="Only the drift checks (PSI, KS, CUSUM) on the telemetry database; run daily by drift_check_schedule.",
    tags=READS,
)
