"""Applying a reviewed calibration patch: it writes the coefficient file, which the pipeline reads but
does not own, so it is an op in a job of its own (``apply_calibration_job``) that no sensor or schedule
targets: a person launches it from the UI.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain.backtest import PatchError
from autopack_pipeline.services.calibration_apply import ApplicationRefused, plan_patch_file, write_application
from autopack_pipeline.services.calibration_review import change_lines, diff_text, render_backtest
from autopack_pipeline.settings import load_settings

# The figures of the backtest shown as numbers (the UI plots numeric metadata across runs).
_BACKTEST_FIGURES = ("underestimation_pct", "truncation_pct", "budget_waste_p90")


class ApplyCalibrationConfig(dg.Config):
    patch_path: str = Field(description="The calibration JSON to apply (the calibration_recommendations "
                                        "asset's patch_json), absolute or relative to the code server's directory.")
    # A plain string: Dagster's config cannot hold an optional Literal; the patch names its methods.
    method: str | None = Field(
        default=None, description="coverage or autopack-median: apply this method's proposals from the patch "
                                  "instead of the chosen one.")
    confirm: bool = Field(default=False, description="Write the coefficient file. Without it the run shows the "
                                                     "diff and the backtest, writes nothing, and fails.")


def review_metadata(application) -> dict[str, Any]:
    """What a person reviews: the changes, the YAML diff, the backtest, and its headline figures."""
    backtest = application.backtest
    metadata: dict[str, Any] = {
        "coefficient_file": dg.MetadataValue.path(str(application.path)),
        "previous_version": application.old.version,
        "new_version": application.new.version,
        "changes": dg.MetadataValue.md("\n".join(["```", *change_lines(application), "```"])),
        "diff": dg.MetadataValue.md(f"```diff\n{diff_text(application)}```"),
        "backtest": dg.MetadataValue.md(f"```\n{render_backtest(backtest)}\n```" if backtest else
                                        "_skipped: no stored events (check DATABASE_URL)_"),
    }
    if backtest:
        for side in ("old", "new"):
            for key in _BACKTEST_FIGURES:
                value = backtest[side][key]
                if value is not None:
                    metadata[f"backtest_{side}_{key}"] = float(value)
    return metadata


@dg.op(description="Apply a reviewed calibration patch to the coefficient file: the diff and the backtest on "
                   "the stored events first, then the write, only with confirm: true. The previous file is kept "
                   "under estimator_coefficients.history/.")
def apply_calibration(context: dg.OpExecutionContext, config: ApplyCalibrationConfig,
                      telemetry_db: TelemetryDatabase) -> dg.Output[dict]:
    settings = load_settings()
    try:
        application = plan_patch_file(telemetry_db.engine(), Path(config.patch_path).expanduser(),
                                      coefficients_path=settings.seeds_dir / "estimator_coefficients.yaml",
                                      method=config.method)
    except (PatchError, FileNotFoundError, ApplicationRefused) as exc:
        raise dg.Failure(description=f"Not applied: {exc}", allow_retries=False) from None
    metadata = review_metadata(application)
    if not config.confirm:
        raise dg.Failure(
            description=(f"Not written: confirm is false. Review the diff and the backtest here, then launch "
                         f"again with confirm: true to write {application.new.version} to {application.path}."),
            metadata=metadata, allow_retries=False)
    kept = write_application(application)
    context.log.info(f"wrote {application.path} (version {application.new.version}); previous kept as {kept}")
    metadata["previous_version_kept_as"] = dg.MetadataValue.path(str(kept))
    return dg.Output({"path": str(application.path), "version": application.new.version,
                      "previous_version": application.old.version, "kept": str(kept)}, metadata=metadata)
