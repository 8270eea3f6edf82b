"""The whole graph materialised in-process against a temporary database and Dagster instance."""

import json

import dagster as dg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from autopack_pipeline.defs.asset_graph import PIPELINE_ASSETS
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.models import GeneratedTask, Phase, TokenEstimationV2Event


def _materialize(instance, url, run_config=None):
    return dg.materialize(
        PIPELINE_ASSETS,
        instance=instance,
        resources={"telemetry_db": TelemetryDatabase(database_url=url), "llm": LLMBackendResource(), **event_io_resources()},
        run_config=run_config,
    )


def test_whole_pipeline_on_embedded_defaults(sqlite_url, tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sqlite_url)
        assert result.success
        collection = result.output_for_node("telemetry_collection_run")
        engine = make_engine(sqlite_url)
        with Session(engine) as session:
            events = session.scalar(select(func.count()).select_from(TokenEstimationV2Event))
            phases = session.scalar(select(func.count()).select_from(Phase))
            stored_tasks = session.scalars(select(GeneratedTask.task_id)).all()
        assert collection["backend"] == "simulated"
        assert collection["events_written"] == events > 0
        assert phases == collection["phases_total"]
        assert collection["phases_completed"] + collection["phases_failed"] == phases

        raw = result.output_for_node("raw_events")
        samples = result.output_for_node("success_samples")
        assert raw.rows == len(raw.arrays()) == events
        assert raw.store_directory is not None  # the events travel through the columnar copy
        assert 0 < samples.count < raw.rows
        assert samples.count == sum(samples.group_counts.values())
        assert samples.count + sum(samples.exclusions.values()) == raw.rows

        metrics = result.output_for_node("tier_metrics")
        assert metrics.tier1["total_samples"] == events
        assert metrics.clean_samples == samples.count

        calibration = result.output_for_node("calibration_recommendations").as_dict()
        assert calibration["gate"]["open"], calibration["gate"]["summary"]
        report = json.loads(open(calibration["reports"]["json"]).read())
        assert set(report["metadata"]) == {"generated_at", "confidence_threshold", "total_samples", "high_confidence_groups"}
        assert report["provenance"]["dagster_run_id"] == result.run_id
        assert calibration["reports"]["json"].startswith(str(tmp_path / "reports"))
        # The frontier and cost per group: in the report, in the asset's value and as a metadata table.
        assert report["frontier_and_cost"] and calibration["frontier_and_cost"] == report["frontier_and_cost"]
        recommendations = instance.get_latest_materialization_event(
            dg.AssetKey("calibration_recommendations")).asset_materialization.metadata
        assert "| category | complexity | N | truncated | m | b |" in recommendations["frontier_and_cost"].value

        tasks = result.output_for_node("generated_tasks")
        assert tasks and sorted(t["task_id"] for t in tasks) == sorted(stored_tasks)
        kinds = {t["kind"] for t in tasks}
        assert "investigate_estimator" in kinds  # Tier 1 is breached by the simulator's profile

        # Materialisations carry the headline numbers as numbers, so the UI can plot them.
        event = instance.get_latest_materialization_event(dg.AssetKey("tier_metrics"))
        metadata = event.asset_materialization.metadata
        assert metadata["underestimation_rate_pct"].value == round(
            metrics.tier1["underestimation_rate_pct"], 1)  # a tenth of a percent, as it means


def test_second_run_generates_no_duplicate_tasks(sqlite_url):
    with dg.instance_for_test() as instance:
        first = _materialize(instance, sqlite_url)
        second = _materialize(instance, sqlite_url)
        assert first.success and second.success
        engine = make_engine(sqlite_url)
        with Session(engine) as session:
            ids = session.scalars(select(GeneratedTask.task_id)).all()
        assert len(ids) == len(set(ids))
        second_meta = instance.get_latest_materialization_event(dg.AssetKey("generated_tasks")).asset_materialization.metadata
        first_ids = {t["task_id"] for t in first.output_for_node("generated_tasks")}
        second_ids = {t["task_id"] for t in second.output_for_node("generated_tasks")}
        assert second_meta["tasks_new"].value == len(second_ids - first_ids)


def test_closed_gate_writes_no_report_and_says_why(sqlite_url, tmp_path):
    config = {"ops": {"telemetry_collection_run": {"config": {"template_phases_per_group": 0}}}}
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sqlite_url, run_config=config)
        assert result.success
        calibration = result.output_for_node("calibration_recommendations").as_dict()
        assert not calibration["gate"]["open"]
        assert "the gate needs at least 20" in calibration["gate"]["summary"]
        assert calibration["reports"] is None
        assert not (tmp_path / "reports").exists()
        tasks = result.output_for_node("generated_tasks")
        assert any(t["kind"] == "collect_samples" for t in tasks)


def test_collection_asset_takes_a_targeted_run_as_config(sqlite_url):
    config = {"ops": {"telemetry_collection_run": {"config": {
        "run_id": "targeted", "category": "tests", "complexity": "low", "phases": 3, "concurrency": 2}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [PIPELINE_ASSETS[0]],
            instance=instance,
            resources={"telemetry_db": TelemetryDatabase(database_url=sqlite_url), "llm": LLMBackendResource(), **event_io_resources()},
            run_config=config,
        )
        assert result.success
        summary = result.output_for_node("telemetry_collection_run")
        assert (summary["run_id"], summary["phases_total"]) == ("targeted", 3)
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("telemetry_collection_run")).asset_materialization.metadata
        assert metadata["backend"].value == "simulated"
        assert metadata["phases_completed"].value + metadata["phases_failed"].value == 3
        assert metadata["events_written"].value == summary["events_written"] > 0
