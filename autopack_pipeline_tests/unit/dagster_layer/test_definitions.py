"""The Definitions object loads, and holds what the product promises."""

import subprocess
import sys

import dagster as dg
import pytest
import yaml

from autopack_pipeline.defs.definitions import defs
from autopack_pipeline.settings import REPO_ROOT

PIPELINE_ORDER = [
    "telemetry_collection_run",
    "raw_events",
    "success_samples",
    "tier_metrics",
    "calibration_recommendations",
    "generated_tasks",
]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_six_assets_in_lineage_order_each_with_docstring_group_and_kinds():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {*PIPELINE_ORDER, "daily_tier_metrics"}
    for upstream, downstream in zip(PIPELINE_ORDER, PIPELINE_ORDER[1:]):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{downstream} should depend on {upstream}"
    for name in PIPELINE_ORDER:
        spec = graph.get(dg.AssetKey(name))
        assert spec.group_name in {"telemetry", "metrics", "calibration", "tasks"}
        assert spec.kinds, f"{name} has no kinds"
        assert spec.description and len(spec.description) > 40, f"{name} needs a docstring"


def test_jobs_are_named_for_what_they_do():
    assert defs.resolve_job_def("telemetry_pipeline_job") is not None
    assert defs.resolve_job_def("analysis_job") is not None


def test_jobs_sensors_and_schedule_of_the_orchestration_layer():
    jobs = {
        "calibration_job": {"calibration_recommendations", "generated_tasks"},
        "task_generation_job": {"generated_tasks"},
        "drift_check_job": {"estimator_drift"},
        "targeted_collection_job": {"telemetry_collection_run", "raw_events", "success_samples", "tier_metrics"},
    }
    for name, steps in jobs.items():
        assert steps <= {node.name for node in defs.resolve_job_def(name).nodes}, name
    repository = defs.get_repository_def()
    sensors = {s.name: s for s in repository.sensor_defs}
    assert set(sensors) == {
        "calibration_gate_sensor",
        "task_generation_sensor",
        "auto_execution_sensor",
        "collection_task_success_sensor",
        "collection_task_failure_sensor",
        "metrics_automation_sensor",
    }
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert [s.name for s in repository.schedule_defs] == ["drift_check_schedule"]
    # Every job that writes the telemetry database is held to one run at a time by dagster.yaml.
    limits = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "autopack/telemetry-db", "value": "write", "limit": 1} in limits
    for name in ("telemetry_pipeline_job", "analysis_job", "calibration_job", "task_generation_job",
                 "targeted_collection_job"):
        assert defs.resolve_job_def(name).tags["autopack/telemetry-db"] == "write", name


@pytest.mark.integration  # runs the dagster CLI as a subprocess
def test_dagster_cli_validates_the_workspace():
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_assets_are_partitioned_by_day_and_automated():
    graph = defs.resolve_asset_graph()
    daily = graph.get(dg.AssetKey("daily_tier_metrics"))
    assert isinstance(daily.partitions_def, dg.DailyPartitionsDefinition)
    for name in ("daily_tier_metrics", "success_samples", "tier_metrics"):
        assert graph.get(dg.AssetKey(name)).automation_condition is not None, name
    # The paid collection is never started by automation.
    assert graph.get(dg.AssetKey("telemetry_collection_run")).automation_condition is None
    sensor = defs.resolve_sensor_def("metrics_automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_no_private_dagster_api():
    offenders = [str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "autopack_pipeline").rglob("*.py")
                 if "dagster._" in path.read_text()]
    assert offenders == []



def test_the_instance_files_open_the_ui_without_the_community_dialog(tmp_path):
    """Both instance files turn Dagster's first-visit dialog off (the webserver asks the instance's
    ``nux_enabled`` before drawing it): a fresh instance's first page is the one the user opened."""
    for name in ("dagster.yaml", "deploy/dagster.postgres.yaml"):
        assert yaml.safe_load((REPO_ROOT / name).read_text())["nux"] == {"enabled": False}, name
    # The repository's own file, as Dagster reads it (its storage moved into a temporary home).
    document = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    document["local_artifact_storage"]["config"]["base_dir"] = str(tmp_path)
    document["storage"]["sqlite"]["base_dir"] = str(tmp_path / "storage")
    document["compute_logs"]["config"]["base_dir"] = str(tmp_path / "logs")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(document))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.nux_enabled is False
