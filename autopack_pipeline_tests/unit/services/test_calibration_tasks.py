"""Calibration's per-group findings become generated tasks: an unidentifiable group gets a collect-samples task."""

from __future__ import annotations

from autopack_pipeline.services import analysis, calibrating, task_generation
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline_tests.support.calibration_cli_support import populate


def test_an_unidentifiable_group_gets_a_collect_samples_task_with_its_floor_raise(sqlite_url):
    # implementation/low opens the gate; tests/low has 6 observations, 2 of them truncated at 8192.
    populate(sqlite_url, [4200 + 150 * i for i in range(24)])
    populate(sqlite_url, [3000, 3100, 3200, 3300], truncated=2, run_id="run-2", category="tests", complexity="low")
    engine = make_engine(sqlite_url)
    settings = load_settings()
    events = read_events(engine)
    outcome = calibrating.calibrate(events, settings, write_reports=False)
    (group,) = [g for g in outcome.calibration_section["groups"]
                if (g["category"], g["complexity"]) == ("tests", "low")]
    assert group["status"] == "unidentifiable" and group["budget_floor"] > group["previous_budget_floor"]

    summary = analysis.summarise_samples(events)
    metrics = {"all_events": analysis.tier_metrics_document(events, summary.count)["all_events"]}
    tasks, _ = task_generation.improvement_tasks(engine, settings, metrics, summary.group_counts, outcome)
    collect = [t for t in tasks if t.kind == "collect_samples" and t.evidence.get("category") == "tests"]
    assert len(collect) == 1, [t.title for t in tasks]
    assert collect[0].evidence["complexity"] == "low"
    assert collect[0].evidence["proposed_budget_floor"] == group["budget_floor"]
    assert not collect[0].requires_approval
    engine.dispose()
