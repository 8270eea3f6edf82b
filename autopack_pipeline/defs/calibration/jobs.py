"""Calibration's jobs: calibrate on the latest samples (the gate sensor's), and apply a reviewed patch (a person's)."""

import dagster as dg

from autopack_pipeline.defs.calibration.assets import calibration_recommendations
from autopack_pipeline.defs.calibration.ops import apply_calibration
from autopack_pipeline.defs.shared.run_tags import READS, WRITES
from autopack_pipeline.defs.tasks.assets import generated_tasks

calibration_job = dg.define_asset_job(
    name="calibration_job",
    selection=dg.AssetSelection.assets(calibration_recommendations, generated_tasks),
    description=(
        "Calibrate on the latest samples and metrics (no new collection), then turn the result into tasks. "
        "Requested by calibration_gate_sensor once per batch of samples."
    ),
    tags=WRITES,
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
