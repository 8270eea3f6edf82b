"""The calibration asset calibrates against the coefficients in force and shows the patch; a person
applies it with apply_calibration_job, which writes only with confirm: true."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from autopack_pipeline.defs.definitions import defs
from autopack_pipeline_tests.integration.dagster_layer.conftest import materialize_slice
from autopack_pipeline_tests.support.calibration_cli_support import REPO_SEEDS, populate

UP_TO_CALIBRATION = "key:raw_events or key:success_samples or key:tier_metrics or key:calibration_recommendations"


@pytest.fixture
def seeds(tmp_path, monkeypatch):
    """A private copy of seeds/: the job writes its coefficient file, never the repository's."""
    directory = tmp_path / "seeds"
    shutil.copytree(REPO_SEEDS, directory)
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", str(directory))
    return directory / "estimator_coefficients.yaml"


def _recommendations(instance, url):
    result = materialize_slice(instance, url, UP_TO_CALIBRATION)
    assert result.success
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("calibration_recommendations")).asset_materialization.metadata
    return result.output_for_node("calibration_recommendations").as_dict(), metadata


def _apply(instance, config: dict) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("apply_calibration_job")
    return job.execute_in_process(run_config={"ops": {"apply_calibration": {"config": config}}}, instance=instance,
                                  raise_on_error=False)


def test_patch_shown_then_applied_by_a_confirmed_job_and_not_compounded(sqlite_url, seeds, instance):
    populate(sqlite_url, [4200 + 150 * i for i in range(24)])  # implementation/low, well above its estimate
    value, metadata = _recommendations(instance, sqlite_url)
    (group,) = [g for g in value["calibration"]["groups"] if g["category"] == "implementation"]
    assert group["prediction_multiplier"] > 1.5
    patch_path = metadata["patch_json"].value
    assert patch_path == value["reports"]["json"]
    assert f"| implementation | low | {group['status']} |" in metadata["patch"].value
    assert group["note"].split(";")[0] in metadata["patch"].value  # the why
    assert f"apply-calibration {patch_path} --dry-run" in metadata["apply"].value
    assert "apply_calibration_job" in metadata["apply"].value
    assert "| category | complexity | N | truncated | m | b |" in metadata["frontier_and_cost"].value

    before = seeds.read_text()
    refused = _apply(instance, {"patch_path": patch_path})
    assert not refused.success and seeds.read_text() == before
    (failure,) = [e for e in refused.all_events if e.is_step_failure]
    user_failure = failure.step_failure_data.user_failure_data
    assert "confirm" in user_failure.description
    assert "+cal" in user_failure.metadata["new_version"].value  # the preview: what would be written
    assert "prediction_multiplier" in user_failure.metadata["diff"].value

    applied = _apply(instance, {"patch_path": patch_path, "confirm": True})
    assert applied.success
    written = yaml.safe_load(seeds.read_text())
    assert written["calibration"]["implementation"]["low"]["prediction_multiplier"] == group["prediction_multiplier"]
    output = applied.output_for_node("apply_calibration")
    assert output["version"] == written["version"] and output["previous_version"] == "v5-step1"
    step_metadata = [e for e in applied.all_events if e.is_successful_output][0].step_output_data.metadata
    assert step_metadata["new_version"].value == written["version"]
    assert step_metadata["backtest_new_underestimation_pct"].value < step_metadata[
        "backtest_old_underestimation_pct"].value

    # Calibrating again against the estimator now in force proposes about x1, not the factor again.
    again, _ = _recommendations(instance, sqlite_url)
    (group,) = [g for g in again["calibration"]["groups"] if g["category"] == "implementation"]
    assert abs(group["prediction_multiplier"] / group["current_prediction_multiplier"] - 1) < 0.05


def test_a_bad_patch_path_fails_with_a_clear_message(sqlite_url, seeds, instance, tmp_path):
    result = _apply(instance, {"patch_path": str(tmp_path / "missing.json"), "confirm": True})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "patch file not found" in failure.step_failure_data.user_failure_data.description


def test_nothing_applies_a_patch_by_itself():
    job = "apply_calibration_job"
    assert all(job not in {j.name for j in sensor.jobs} for sensor in defs.sensors if sensor.has_jobs)
    assert all(schedule.job_name != job for schedule in defs.schedules)
