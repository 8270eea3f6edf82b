"""Insights, patterns and generated tasks: confidence floor, dedup by fingerprint, priorities, effort, cost."""

import pandas as pd
import pytest

from autopack_pipeline.domain.tasks import (
    MIN_CONFIDENCE_FLOOR,
    Insight,
    breach_level,
    breach_severity,
    detect_patterns,
    effort_for_occurrences,
    estimated_cost,
    fingerprint,
    generate_tasks,
    insights_from_calibration,
    insights_from_group_metrics,
    insights_from_sample_shortfalls,
    insights_from_tier_metrics,
    priority_for,
)
from autopack_pipeline.storage.frames import as_event_arrays


def _tier1(under: float, under_ci: tuple[float, float], trunc: float = 0.0, trunc_ci=(0.0, 10.0), n: int = 40) -> dict:
    return {
        "underestimation_rate_pct": under,
        "underestimation_rate_pct_ci": list(under_ci),
        "truncation_rate_pct": trunc,
        "truncation_rate_pct_ci": list(trunc_ci),
        "success_rate_pct": 90.0,
        "success_rate_pct_ci": [80.0, 95.0],
        "total_samples": n,
    }


def test_a_demonstrated_breach_is_a_confident_insight_and_an_uncertain_one_is_not():
    demonstrated = insights_from_tier_metrics(_tier1(30.0, (18.0, 45.0)))
    uncertain = insights_from_tier_metrics(_tier1(8.0, (2.0, 20.0)))
    assert [i.subject for i in demonstrated] == ["underestimation:overall"]
    assert demonstrated[0].confidence == 0.9 and demonstrated[0].evidence["threshold"] == 5.0
    assert uncertain[0].confidence == 0.6
    assert "collect more events" in uncertain[0].detail


def test_rates_within_targets_give_no_insight():
    assert insights_from_tier_metrics(_tier1(5.0, (1.0, 12.0), trunc=2.0, trunc_ci=(0.5, 8.0))) == []


def test_truncation_breach_is_its_own_insight():
    insights = insights_from_tier_metrics(_tier1(0.0, (0.0, 5.0), trunc=12.0, trunc_ci=(5.0, 25.0)), scope="category=docs")
    assert [(i.subject, i.evidence["observed"]) for i in insights] == [("truncation:category=docs", 12.0)]


def test_only_actionable_recommendations_become_insights_and_they_need_approval():
    groups = [
        {"category": "tests", "complexity": "low", "sample_count": 12, "confidence": 0.85, "proposed_multiplier": 1.3,
         "actionable": True},
        {"category": "docs", "complexity": "low", "sample_count": 5, "confidence": 0.55, "proposed_multiplier": 2.0,
         "actionable": False},
        {"category": "implementation", "complexity": "low", "sample_count": 12, "confidence": 0.9,
         "proposed_multiplier": 1.15, "actionable": True},  # inside the +-20% band: no adjustment needed
    ]
    insights = insights_from_calibration(groups, "autopack-median")
    assert [i.subject for i in insights] == ["tests/low"]
    assert insights[0].requires_approval and insights[0].task_kind == "review_coefficients"
    assert insights[0].severity == 7  # a 30% change


def test_sample_shortfalls_name_how_many_more_are_needed():
    insights = insights_from_sample_shortfalls({("docs", "low"): 3, ("implementation", "medium"): 9}, min_samples=5)
    assert [(i.subject, i.title) for i in insights] == [("docs/low", "Collect 2 more clean samples for docs/low")]
    assert insights[0].requires_approval is False and insights[0].task_kind == "collect_samples"


def test_task_ids_are_stable_across_generation_runs_and_duplicates_collapse():
    insights = insights_from_tier_metrics(_tier1(30.0, (18.0, 45.0))) + insights_from_sample_shortfalls(
        {("docs", "low"): 1}, 5
    )
    first = generate_tasks(insights, max_tasks=10, min_confidence=0.7)
    second = generate_tasks(list(reversed(insights)) + insights, max_tasks=10, min_confidence=0.7)
    assert [t.task_id for t in first] == [t.task_id for t in second]
    assert len(first) == 2
    assert first[0].task_id == "TASK-" + fingerprint("tier1_breach", "underestimation:overall")[:12].upper()


def test_confidence_filter_never_goes_below_the_floor_and_max_tasks_keeps_the_most_severe():
    uncertain = insights_from_tier_metrics(_tier1(8.0, (2.0, 20.0)))  # confidence 0.6
    assert generate_tasks(uncertain, max_tasks=10, min_confidence=0.7) == []
    assert len(generate_tasks(uncertain, max_tasks=10, min_confidence=0.0)) == 1
    low = [i for i in insights_from_sample_shortfalls({("a", "low"): 0}, 5)]
    low[0] = low[0].__class__(**{**low[0].__dict__, "confidence": MIN_CONFIDENCE_FLOOR - 0.01})
    assert generate_tasks(low, max_tasks=10, min_confidence=0.0) == []
    mixed = insights_from_tier_metrics(_tier1(30.0, (18.0, 45.0))) + insights_from_sample_shortfalls({("docs", "low"): 1}, 5)
    only = generate_tasks(mixed, max_tasks=1, min_confidence=0.5)
    assert [t.kind for t in only] == ["investigate_estimator"]
    assert only[0].priority == "high"  # the interval's lower end, 18%, is 3.6x the 5% target


def test_priority_bands():
    assert [priority_for(s) for s in (9, 8, 7, 6, 5, 4, 3)] == ["critical", "critical", "high", "high", "medium", "medium", "low"]


# --- patterns (spec §7.3), effort, cost, provenance -------------------------------------------------

def _outcome(kind: str, n: int, *, phase_type: str = "docs", severity: int = 4, tokens: int = 0) -> Insight:
    return Insight(kind=kind, subject=f"{phase_type}/p{n}", title=f"{kind} #{n}", detail="", confidence=1.0,
                   severity=severity, task_kind={"cost_sink": "reduce_token_cost", "failure_mode": "fix_failure_mode",
                                                 "retry_cause": "reduce_retries"}[kind],
                   requires_approval=True, evidence={"phase_type": phase_type, "total_tokens": tokens},
                   source="phase_outcome_events")


def test_a_single_outcome_insight_is_not_a_pattern_but_two_are():
    assert detect_patterns([_outcome("failure_mode", 1)]) == []
    (pattern,) = detect_patterns([_outcome("failure_mode", 1), _outcome("failure_mode", 2)])
    assert pattern.occurrences == 2
    # base confidence min(1, 2/5) = 0.4, +0.2 for failure modes; base severity 2 + 0 high, +3.
    assert pattern.confidence == 0.6 and pattern.severity == 5


def test_pattern_boosts_per_outcome_type():
    def three(kind: str, **kw) -> list[Insight]:
        return [_outcome(kind, i, **kw) for i in range(3)]

    cost, = detect_patterns(three("cost_sink"))
    retry, = detect_patterns(three("retry_cause"))
    failure, = detect_patterns(three("failure_mode"))
    assert (cost.confidence, cost.severity) == (0.75, 5)  # 0.6+0.15, 3+2
    assert (retry.confidence, retry.severity) == (0.7, 4)  # 0.6+0.1, 3+1
    assert (failure.confidence, failure.severity) == (0.8, 6)  # 0.6+0.2, 3+3
    high, = detect_patterns(three("cost_sink", severity=6))
    assert high.severity == 10  # 3 + 2*3 high, +2, capped at 10
    big, = detect_patterns(three("cost_sink", tokens=150_000)[:2])
    small, = detect_patterns(three("cost_sink", tokens=90_000)[:2])
    assert big.severity == small.severity + 1  # the extra point for a sink above 100k tokens
    assert detect_patterns([_outcome("cost_sink", i) for i in range(7)])[0].confidence == 1.0  # capped


def test_measured_insights_are_patterns_of_one_judged_on_their_own_figures():
    insight = insights_from_sample_shortfalls({("docs", "low"): 1}, 5)[0]
    (pattern,) = detect_patterns([insight])
    assert (pattern.occurrences, pattern.confidence, pattern.severity, pattern.effort) == (1, 0.8, 4, "S")


def test_patterns_are_ordered_by_severity_then_occurrences():
    failures = [_outcome("failure_mode", i) for i in range(2)]  # severity 5
    retries = [_outcome("retry_cause", i) for i in range(4)]  # severity 5, more occurrences
    breach = insights_from_tier_metrics(_tier1(30.0, (18.0, 45.0)))  # severity 8
    assert [p.kind for p in detect_patterns(failures + retries + breach)] == ["tier1_breach", "retry_cause",
                                                                             "failure_mode"]


def test_effort_bands_and_estimated_cost():
    assert [effort_for_occurrences(n) for n in (1, 2, 3, 5, 6, 10, 11)] == ["S", "S", "M", "M", "L", "L", "XL"]
    assert estimated_cost("M", "cost_sink", 3) == round(30_000 * 1.5 * 1.15)
    assert estimated_cost("XL", "failure_mode", 25) == round(150_000 * 1.3 * 1.5)  # occurrences capped at 10
    assert estimated_cost("S", "sample_shortfall", 1) == 10_500
    assert estimated_cost("S", "something_new", 1) == 10_500  # unknown types cost x1.0


def test_an_outcome_pattern_becomes_one_task_with_examples_and_approval():
    insights = [_outcome("failure_mode", i, phase_type=t) for i, t in enumerate(["docs", "tests", "docs", "tests"])]
    (task,) = generate_tasks(insights, max_tasks=10, min_confidence=0.7)
    assert task.title == "Fix recurring failure_mode issues (docs, tests phases)"
    assert task.kind == "fix_failure_mode" and task.requires_approval
    assert task.estimated_effort == "M" and task.priority == "high"  # 4 occurrences; severity 4 + 3
    assert len(task.evidence["examples"]) == 3 and task.evidence["occurrences"] == 4
    assert task.source_insights == ["failure_mode:docs/p0", "failure_mode:tests/p1", "failure_mode:docs/p2"]
    assert "## Examples" in task.description and "## Suggested Fix" in task.description
    # The id follows the phase types, not the phase ids, so next week's run of the same phases is the same task.
    again = [_outcome("failure_mode", i + 10, phase_type=t) for i, t in enumerate(["tests", "docs"])]
    assert generate_tasks(again, max_tasks=10, min_confidence=0.5)[0].task_id == task.task_id


def test_a_pattern_below_the_confidence_threshold_is_not_a_task():
    two = [_outcome("retry_cause", i) for i in range(2)]  # 0.4 + 0.1 = 0.5
    assert generate_tasks(two, max_tasks=10, min_confidence=0.7) == []
    assert len(generate_tasks(two, max_tasks=10, min_confidence=0.5)) == 1


def test_max_tasks_zero_gives_nothing():
    assert generate_tasks(insights_from_sample_shortfalls({("docs", "low"): 1}, 5), max_tasks=0,
                          min_confidence=0.5) == []


def test_evidence_records_the_input_and_the_materialisation_it_came_from():
    insights = insights_from_sample_shortfalls({("docs", "low"): 1}, 5)
    source = {"asset": "generated_tasks", "dagster_run_id": "run-9",
              "inputs": {"success_samples": {"dagster_run_id": "run-8", "storage_id": 41}}}
    (task,) = generate_tasks(insights, max_tasks=10, min_confidence=0.7, source=source)
    assert task.evidence["source"] == {"input": "success_samples", "asset": "generated_tasks",
                                       "dagster_run_id": "run-9",
                                       "input_materialization": {"dagster_run_id": "run-8", "storage_id": 41}}
    assert task.evidence["category"] == "docs" and task.evidence["threshold"] == 5  # figures stay at the top
    assert not task.requires_approval and task.estimated_cost == 10_500


def test_group_metrics_find_breaches_and_truncation_hot_spots_per_group():
    rows = []
    for i in range(20):  # docs/low: every call truncated; implementation/medium: on target
        rows.append({"event_id": i, "run_id": "r", "phase_id": f"d{i}", "category": "documentation",
                     "complexity": "low", "predicted_output_tokens": 1000, "actual_output_tokens": 1000,
                     "success": True, "truncated": True})
        rows.append({"event_id": 100 + i, "run_id": "r", "phase_id": f"i{i}", "category": "implementation",
                     "complexity": "medium", "predicted_output_tokens": 1000, "actual_output_tokens": 900,
                     "success": True, "truncated": False})
    insights = insights_from_group_metrics(as_event_arrays(pd.DataFrame(rows)))
    assert [(i.kind, i.subject) for i in insights] == [("truncation_hotspot", "truncation:group=docs/low")]
    assert insights[0].confidence == 0.9 and insights[0].source == "tier_metrics"


def _recommendation(category: str, complexity: str, multiplier: float = 1.6) -> Insight:
    return insights_from_calibration([{"category": category, "complexity": complexity, "sample_count": 30,
                                       "confidence": 0.8, "proposed_multiplier": multiplier, "actionable": True}],
                                     "coverage")[0]


def test_a_group_gets_one_task_its_recommendation_carrying_its_breaches():
    overall = insights_from_tier_metrics(_tier1(30.0, (18.0, 45.0)))
    docs = insights_from_tier_metrics(_tier1(40.0, (12.0, 55.0), trunc=12.0, trunc_ci=(4.5, 25.0)),
                                      scope="group=docs/low")
    tests = insights_from_tier_metrics(_tier1(40.0, (12.0, 55.0), trunc=12.0, trunc_ci=(4.5, 25.0)),
                                       scope="group=tests/high")
    fix = _recommendation("docs", "low", multiplier=1.3)  # severity 7 on its own
    tasks = generate_tasks([*overall, *docs, *tests, fix], max_tasks=10, min_confidence=0.7)

    assert len(tasks) == 3  # four symptoms and a fix in two groups: one task per group, plus the overall one
    assert tasks[0].title.endswith("(overall)")  # at equal severity, the finding over every event comes first
    [review] = [t for t in tasks if t.kind == "review_coefficients"]
    assert review.evidence["method"] == "coverage" and review.priority == "high"  # both breaches surely >= 2x the target
    assert [s["metric"] for s in review.evidence["symptoms"]] == ["underestimation_rate_pct", "truncation_rate_pct"]
    assert "underestimation 40.0% (target 5%); truncation 12.0% (target 2%)" in review.description
    [combined] = [t for t in tasks[1:] if t.kind == "investigate_estimator"]
    assert combined.title == ("Tier-1 targets breached in tests/high: underestimation 40.0% (target 5%), "
                              "truncation 12.0% (target 2%)")
    assert combined.evidence["scope"] == "group=tests/high" and len(combined.evidence["symptoms"]) == 2


def test_a_groups_investigation_keeps_its_task_id_as_its_symptoms_change_and_an_uncertain_one_does_not_raise_the_fix():
    one = insights_from_tier_metrics(_tier1(0.0, (0.0, 5.0), trunc=12.0, trunc_ci=(5.0, 25.0)),
                                     scope="group=docs/low")
    two = insights_from_tier_metrics(_tier1(40.0, (25.0, 55.0), trunc=12.0, trunc_ci=(5.0, 25.0)),
                                     scope="group=docs/low")
    [alone] = generate_tasks(one, max_tasks=10, min_confidence=0.7)
    [both] = generate_tasks(two, max_tasks=10, min_confidence=0.7)
    assert alone.task_id == both.task_id  # one open investigation per group, whichever symptoms it has
    assert alone.title == one[0].title and "docs/low" in both.title

    uncertain = insights_from_tier_metrics(_tier1(8.0, (2.0, 20.0)), scope="group=tests/low")  # confidence 0.6
    fix = _recommendation("tests", "low", multiplier=1.1 * 1.2)
    [task] = generate_tasks([*uncertain, fix], max_tasks=10, min_confidence=0.7)
    assert task.kind == "review_coefficients" and "symptoms" not in task.evidence and task.priority == "high"


@pytest.mark.parametrize(("ci_low", "target", "level"), [
    (30.0, 5.0, "critical"),  # even the pessimistic end is 6x the target
    (25.0, 5.0, "critical"),  # exactly 5x
    (24.9, 5.0, "high"),
    (10.0, 5.0, "high"),  # 2x
    (9.9, 5.0, "medium"),
    (5.1, 5.0, "medium"),  # demonstrated, but not by much
    (5.0, 5.0, "low"),  # the interval still includes the target
    (0.5, 2.0, "low"),
    (4.0, 2.0, "high"),
    (10.0, 2.0, "critical"),
])
def test_breach_severity_follows_the_lower_end_of_the_interval_in_multiples_of_the_target(ci_low, target, level):
    assert breach_level(ci_low, target) == level
    assert priority_for(breach_severity(ci_low, target)) == level


def test_breaches_of_different_sizes_get_different_priorities():
    """Constructed figures: the same observed 12% truncation is critical on 2,000 events and low on
    25; 60% underestimation on 200 events outranks 8% on 2,000."""
    tier1s = {
        "big-sure": _tier1(60.0, (53.1, 66.6), trunc=12.0, trunc_ci=(10.7, 13.5)),
        "small-sure": _tier1(8.0, (6.9, 9.3)),
        "uncertain": _tier1(0.0, (0.0, 5.0), trunc=12.0, trunc_ci=(1.5, 30.0)),
    }
    levels = {scope: [priority_for(i.severity) for i in insights_from_tier_metrics(t, scope=f"group=g/{scope}")]
              for scope, t in tier1s.items()}
    assert levels == {"big-sure": ["critical", "critical"], "small-sure": ["medium"], "uncertain": ["low"]}
