"""Insights and generated tasks: confidence floor, dedup by fingerprint, priorities."""

from autopack_pipeline.domain.tasks import (
    MIN_CONFIDENCE_FLOOR,
    fingerprint,
    generate_tasks,
    insights_from_calibration,
    insights_from_sample_shortfalls,
    insights_from_tier_metrics,
    priority_for,
)


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
    assert only[0].priority == "critical"


def test_priority_bands():
    assert [priority_for(s) for s in (9, 8, 7, 6, 5, 4, 3)] == ["critical", "critical", "high", "high", "medium", "medium", "low"]
