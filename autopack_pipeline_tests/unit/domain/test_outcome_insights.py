"""Autopack's phase-outcome analyser: rankings, window, thresholds, severities, and the tasks they become."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from autopack_pipeline.domain.outcome_insights import (
    OutcomeThresholds,
    analyse_outcomes,
    insights_from_outcomes,
)
from autopack_pipeline.domain.tasks import generate_tasks

NOW = datetime(2025, 3, 10, 12, 0)


def _row(phase_id: str, *, phase_type: str | None = "implementation", outcome: str = "SUCCESS",
         stop_reason: str | None = "end_turn", tokens: int | None = 1000, run_id: str = "run-1",
         age_days: float = 1.0, model: str = "claude-sonnet-4-5") -> dict:
    return {"run_id": run_id, "phase_id": phase_id, "phase_type": phase_type, "phase_outcome": outcome,
            "stop_reason": stop_reason, "tokens_used": tokens, "model_used": model,
            "timestamp": NOW - timedelta(days=age_days)}


def test_cost_sinks_sum_tokens_per_phase_biggest_first_and_skip_unknown_tokens():
    rows = [_row("a", tokens=30_000), _row("a", tokens=40_000), _row("b", tokens=60_000), _row("c", tokens=None)]
    analysis = analyse_outcomes(rows, now=NOW)
    assert [(i.rank, i.phase_id, i.metric_value) for i in analysis.top_cost_sinks] == [(1, "a", 70_000.0),
                                                                                         (2, "b", 60_000.0)]
    assert analysis.top_cost_sinks[0].details == {"avg_tokens": 35_000.0, "count": 2}


def test_the_window_keeps_the_last_seven_days_by_default():
    rows = [_row("recent", age_days=6.9), _row("old", age_days=7.1), _row("future", age_days=-1)]
    assert [i.phase_id for i in analyse_outcomes(rows, now=NOW).top_cost_sinks] == ["recent"]
    assert {i.phase_id for i in analyse_outcomes(rows, now=NOW, window_days=8).top_cost_sinks} == {"recent", "old"}
    aware = NOW.replace(tzinfo=timezone.utc)
    assert analyse_outcomes(rows, now=aware).rows_in_window == 1  # an aware "now" means the same instant


def test_failure_modes_count_non_success_outcomes_by_reason():
    rows = [_row("a", outcome="FAILED", stop_reason="max_tokens")] * 3 + [
        _row("a", outcome="TIMEOUT", stop_reason=None), _row("b")]
    modes = analyse_outcomes(rows, now=NOW).top_failure_modes
    assert [(m.phase_id, m.details["outcome"], m.details["stop_reason"], m.metric_value) for m in modes] == [
        ("a", "FAILED", "max_tokens", 3.0), ("a", "TIMEOUT", None, 1.0)]


def test_retry_causes_are_counted_within_a_run():
    rows = [_row("a", run_id="r1", outcome="FAILED")] * 2 + [_row("a", run_id="r1")] + [
        _row("b", run_id=run) for run in ("r1", "r2", "r3")]  # b ran once in each of three runs: no retry
    (retry,) = analyse_outcomes(rows, now=NOW).top_retry_causes
    assert (retry.phase_id, retry.metric_value) == ("a", 3.0)
    assert retry.details == {"run_id": "r1", "stop_reason": "end_turn", "success_count": 1, "retry_count": 3}


def test_top_n_and_phase_type_statistics():
    rows = [_row(f"p{i}", tokens=1000 * (i + 1)) for i in range(12)] + [
        _row("x", phase_type="docs", outcome="FAILED", tokens=None), _row("y", phase_type="docs", tokens=500)]
    analysis = analyse_outcomes(rows, now=NOW, top_n=10)
    assert len(analysis.top_cost_sinks) == 10 and analysis.top_cost_sinks[0].phase_id == "p11"
    assert analysis.phase_type_stats["docs:claude-sonnet-4-5"] == {"success_rate": 0.5, "avg_tokens": 500.0,
                                                                   "sample_count": 2}
    assert analysis.failure_rate_by_phase_type == {"implementation": 0.0, "docs": 0.5}


def test_a_frames_records_and_an_empty_input_both_work():
    frame = pd.DataFrame([_row("a", tokens=70_000), _row("b", tokens=80_000, phase_type=None),
                          _row("c", tokens=None, stop_reason=None)])
    analysis = analyse_outcomes(frame.to_dict("records"), now=NOW)  # missing values arrive as NaN/NaT
    assert [(i.phase_id, i.phase_type) for i in analysis.top_cost_sinks] == [("b", None), ("a", "implementation")]
    assert analysis.rows_in_window == 3
    empty = analyse_outcomes([], now=NOW)
    assert (empty.top_cost_sinks, empty.top_failure_modes, empty.top_retry_causes) == ([], [], [])
    assert insights_from_outcomes(empty) == []


def test_cost_sink_threshold_and_severity():
    rows = [_row("small", tokens=49_999), _row("edge", tokens=50_000), _row("big", tokens=50_001)]
    insights = insights_from_outcomes(analyse_outcomes(rows, now=NOW))
    assert [(i.evidence["phase_id"], i.severity) for i in insights] == [("big", 6), ("edge", 4)]
    everything = insights_from_outcomes(analyse_outcomes(rows, now=NOW), OutcomeThresholds(cost_sink_tokens=0))
    assert len(everything) == 3
    assert all(i.confidence == 1.0 and i.requires_approval and i.source == "phase_outcome_events" for i in insights)


def test_failure_modes_need_a_phase_type_failing_thirty_percent_and_are_high_above_five():
    failing = [_row("a", outcome="FAILED", stop_reason="max_tokens")] * 6 + [_row("b")] * 4  # implementation 60%
    rare = [_row("d", phase_type="docs", outcome="FAILED")] + [_row("e", phase_type="docs")] * 3  # docs 25%
    insights = [i for i in insights_from_outcomes(analyse_outcomes(failing + rare, now=NOW)) if i.kind == "failure_mode"]
    assert [(i.evidence["phase_id"], i.severity, i.evidence["phase_type_failure_rate"]) for i in insights] == [
        ("a", 6, 0.6)]
    five = [_row("a", outcome="FAILED")] * 5
    (medium,) = [i for i in insights_from_outcomes(analyse_outcomes(five, now=NOW)) if i.kind == "failure_mode"]
    assert medium.severity == 4  # five is not more than five


def test_retry_causes_need_three_runs_and_are_high_above_five():
    rows = [_row("two")] * 2 + [_row("three")] * 3 + [_row("six")] * 6
    insights = [i for i in insights_from_outcomes(analyse_outcomes(rows, now=NOW)) if i.kind == "retry_cause"]
    assert [(i.evidence["phase_id"], i.severity) for i in insights] == [("six", 6), ("three", 4)]


@pytest.mark.parametrize("window_days", [7, 30])
def test_outcome_insights_become_pattern_tasks_with_the_window_in_evidence(window_days):
    rows = [_row(f"p{i}", tokens=120_000, phase_type=t) for i, t in enumerate(["docs", "implementation", "docs"])]
    insights = insights_from_outcomes(analyse_outcomes(rows, now=NOW, window_days=window_days))
    (task,) = generate_tasks(insights, max_tasks=10, min_confidence=0.7)
    assert task.kind == "reduce_token_cost" and task.requires_approval
    assert task.title == "Fix recurring cost_sink issues (docs, implementation phases)"
    # 3 sinks, all high: 3 + 2*3 = 9, +2 for cost sinks, +1 above 100k tokens, capped at 10.
    assert task.priority == "critical" and task.evidence["severity"] == 10
    assert task.evidence["examples"][0]["window_days"] == window_days
    assert task.evidence["source"]["input"] == "phase_outcome_events"
