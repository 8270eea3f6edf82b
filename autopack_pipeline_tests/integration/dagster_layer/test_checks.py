"""Asset checks: observed value and threshold on every result; data quality blocks, Tier 1 does not."""

import dagster as dg
import pandas as pd

from autopack_pipeline.defs.events.checks import events_exist, not_all_failures, token_counts_plausible
from autopack_pipeline.defs.metrics.checks import (
    tier1_truncation_within_target,
    tier1_underestimation_within_target,
    tier2_budget_waste_p90_below_3x,
)
from autopack_pipeline.domain import drift
from autopack_pipeline.services.analysis import TierMetrics
from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame
from autopack_pipeline.storage.snapshot import EventHistory, EventSnapshot

from .conftest import check_evaluations, materialize_slice


def _events(**columns) -> EventHistory:
    """What the data-quality checks read: the figures over every event of these rows."""
    n = len(next(iter(columns.values())))
    base = {"event_id": range(1, n + 1), "run_id": ["r"] * n, "phase_id": [f"p{i}" for i in range(n)]}
    return EventSnapshot.from_frame(conform_events_frame(pd.DataFrame(base | columns))).history


def _metrics(under=0.0, truncation=0.0, waste=None, n=100):
    tier1 = {
        "underestimation_rate_pct": under,
        "underestimation_rate_pct_ci": [max(0.0, under - 3), under + 3],
        "truncation_rate_pct": truncation,
        "truncation_rate_pct_ci": [max(0.0, truncation - 1), truncation + 1],
        "total_samples": n,
    }
    return TierMetrics({"all_events": {"tier1": tier1, "tier2": {"budget_waste_p90": waste}}})


def test_whole_graph_runs_with_its_checks_and_tier1_breaches_do_not_block(instance, sqlite_url, monkeypatch):
    drift_runs = []
    detect = drift.detect_drift

    def counted(events, **options):
        drift_runs.append(len(events))
        return detect(events, **options)

    monkeypatch.setattr(drift, "detect_drift", counted)  # what services.pipeline.drift_report imports when it runs
    result = materialize_slice(instance, sqlite_url)
    assert result.success
    # The drift checks and generated_tasks both report drift, computed once on raw_events' events: the
    # IO manager that handed both the same arrays keeps the report for the run.
    assert len(drift_runs) == 1 and drift_runs[0] > 0
    evaluations = check_evaluations(result)
    for name in ("events_exist", "not_all_failures", "token_counts_plausible"):
        assert evaluations[name].passed, evaluations[name].description
        assert evaluations[name].blocking
    under = evaluations["tier1_underestimation_within_target"]
    # The simulator's profile breaches Tier 1, and the run still reaches calibration.
    assert not under.passed and under.severity == dg.AssetCheckSeverity.WARN and not under.blocking
    assert under.metadata["threshold_pct"].value == 5.0
    assert under.metadata["observed_pct"].value > 5.0
    assert "breaches the Tier-1 target of at most 5%" in under.description
    assert under.metadata["ci95_low_pct"].value <= under.metadata["observed_pct"].value <= under.metadata["ci95_high_pct"].value
    # No check in the catalog is red for a Tier-1 breach: only data quality is an ERROR.
    assert all(e.severity == dg.AssetCheckSeverity.WARN for name, e in evaluations.items()
               if name not in ("events_exist", "not_all_failures", "token_counts_plausible"))
    # On one fresh collection no group has events both this week and before: the drift checks say so, not "passed".
    psi = evaluations["log_ratio_psi_drift"]
    assert psi.metadata["groups_compared"].value == 0
    assert not psi.passed and psi.description.startswith("could not evaluate")
    waste = evaluations["tier2_budget_waste_p90_below_3x"]
    assert waste.severity == dg.AssetCheckSeverity.WARN and waste.metadata["threshold_ratio"].value == 3.0
    assert {"log_ratio_psi_drift", "log_ratio_ks_drift", "underestimation_cusum_drift"} <= set(evaluations)
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    assert {"calibration_recommendations", "generated_tasks"} <= materialized


def test_an_empty_database_blocks_the_calibration_path_but_raw_events_is_still_materialised(instance, sqlite_url):
    result = materialize_slice(instance, sqlite_url, selection="key:raw_events+")
    assert not result.success
    evaluation = check_evaluations(result)["events_exist"]
    assert not evaluation.passed
    assert evaluation.metadata["observed_events"].value == 0
    assert evaluation.metadata["threshold_min_events"].value == 1
    failed_steps = {event.step_key for event in result.all_events if event.is_step_failure}
    assert "raw_events_events_exist" in failed_steps
    executed = {event.step_key for event in result.all_events if event.is_step_start}
    assert executed.isdisjoint({"success_samples", "tier_metrics", "calibration_recommendations", "generated_tasks"})
    assert instance.get_latest_materialization_event(dg.AssetKey("raw_events")) is not None
    assert instance.get_latest_materialization_event(dg.AssetKey("success_samples")) is None


def test_events_exist_states_the_count():
    assert events_exist(raw_events=_events(success=[True])).passed
    empty = events_exist(raw_events=EventSnapshot.from_frame(empty_events_frame()).history)
    assert not empty.passed and "no events" in empty.description


def test_all_failures_fail_with_the_observed_rate():
    result = not_all_failures(raw_events=_events(success=[False, False, None]))
    assert not result.passed
    assert result.metadata["observed_successes"].value == 0
    assert result.metadata["threshold_min_successes"].value == 1
    assert "0 of 3 events succeeded" in result.description
    assert not_all_failures(raw_events=_events(success=[False, True])).passed


def test_negative_and_absurd_counts_are_named_by_column():
    frame = _events(
        predicted_output_tokens=[1000, -5, 2000],
        actual_output_tokens=[900, 800, 5_000_000],
        deliverable_count=[1, 2, 3],
    )
    result = token_counts_plausible(raw_events=frame)
    assert not result.passed
    assert result.metadata["observed_negative_values"].value == 1
    assert result.metadata["observed_absurd_values"].value == 1
    assert result.metadata["threshold_max_tokens"].value == 1_000_000
    assert "predicted_output_tokens: 1 negative" in result.description
    assert "actual_output_tokens: 0 negative, 1 > 1,000,000" in result.description
    assert token_counts_plausible(raw_events=_events(predicted_output_tokens=[10], actual_output_tokens=[20])).passed


def test_tier1_checks_compare_with_the_targets():
    within = tier1_underestimation_within_target(tier_metrics=_metrics(under=4.0))
    assert within.passed and "within the Tier-1 target of at most 5%" in within.description
    breach = tier1_truncation_within_target(tier_metrics=_metrics(truncation=2.5))
    assert not breach.passed
    assert breach.metadata["observed_pct"].value == 2.5 and breach.metadata["threshold_pct"].value == 2.0
    assert "not blocked" in breach.description


def test_tier2_waste_is_a_warning_with_its_threshold():
    high = tier2_budget_waste_p90_below_3x(tier_metrics=_metrics(waste=4.2))
    assert not high.passed and high.severity == dg.AssetCheckSeverity.WARN
    assert "4.20x" in high.description
    assert tier2_budget_waste_p90_below_3x(tier_metrics=_metrics(waste=2.0)).passed
    unmeasured = tier2_budget_waste_p90_below_3x(tier_metrics=_metrics(waste=None))
    assert not unmeasured.passed and unmeasured.description.startswith("could not evaluate")


def test_tier1_on_no_events_could_not_evaluate_and_does_not_pass():
    result = tier1_underestimation_within_target(tier_metrics=_metrics(n=0))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["evaluated"].value is False
    assert "could not evaluate: no Builder calls in the window" in result.description


def test_drift_that_compared_no_group_does_not_pass():
    from datetime import datetime, timezone

    from autopack_pipeline.defs.events.drift_checks import drift_check_results
    from autopack_pipeline.domain.drift import DriftReport, DriftThresholds

    report = DriftReport(thresholds=DriftThresholds(), now=datetime(2026, 11, 25, tzinfo=timezone.utc),
                         recent_start=datetime(2026, 11, 18, tzinfo=timezone.utc),
                         events_considered=40, groups=[], skipped={"tests/low": (0, 40)})
    results = drift_check_results(report)
    assert len(results) == 3
    for result in results:
        assert not result.passed and result.metadata["groups_compared"].value == 0
        assert "could not evaluate: no group had 30 events" in result.description
