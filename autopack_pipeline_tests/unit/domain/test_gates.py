"""The calibration gate: each refusal with its numbers, the open case, and --force."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame
from autopack_pipeline_tests.oracle.gates import GateDecision, evaluate_calibration_gate, largest_group

BREACHED = {"underestimation_rate_pct": 8.0, "truncation_rate_pct": 0.0}
WITHIN = {"underestimation_rate_pct": 5.0, "truncation_rate_pct": 2.0}


def samples(*groups: tuple[str, str, int]) -> pd.DataFrame:
    """Clean samples: ``n`` rows for each (category, complexity, n)."""
    rows = [
        {"event_id": 1, "run_id": "r", "phase_id": f"{cat}-{cx}-{i}", "category": cat, "complexity": cx,
         "predicted_output_tokens": 1000, "actual_output_tokens": 1200, "success": True, "truncated": False}
        for cat, cx, n in groups
        for i in range(n)
    ]
    return conform_events_frame(pd.DataFrame(rows)) if rows else empty_events_frame()


def test_gate_opens_when_all_three_conditions_hold():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 15), ("tests", "low", 5)), BREACHED)
    assert decision.open and not decision.forced and decision.reasons == []
    assert decision.observed == {
        "clean_samples": 20,
        "largest_group": {"category": "implementation", "complexity": "low", "n": 15},
        "underestimation_rate_pct": 8.0,
        "truncation_rate_pct": 0.0,
    }
    assert decision.thresholds == {
        "min_clean_samples": 20, "min_group_samples": 5,
        "underestimation_rate_pct": 5.0, "truncation_rate_pct": 2.0,
    }
    assert decision.summary().startswith("Calibration gate open")


def test_too_few_clean_samples_is_refused_with_both_numbers():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 12)), BREACHED)
    assert not decision.open
    assert decision.reasons == ["only 12 clean samples; the gate needs at least 20"]
    assert "only 12 clean samples" in decision.summary()


def test_no_group_large_enough_is_refused_with_the_largest_group():
    five_groups = samples(*((cat, "low", 4) for cat in ("a", "b", "c", "d", "e")))
    decision = evaluate_calibration_gate(five_groups, BREACHED)
    assert not decision.open
    assert decision.reasons == [
        "the largest (category, complexity) group, a/low, has 4 clean samples; "
        "the gate needs one with at least 5"
    ]


def test_min_thresholds_are_parameters():
    decision = evaluate_calibration_gate(samples(("a", "low", 8)), BREACHED, min_total=8, min_samples=8)
    assert decision.open
    decision = evaluate_calibration_gate(samples(("a", "low", 8)), BREACHED, min_total=8, min_samples=9)
    assert not decision.open and "at least 9" in decision.reasons[0]


def test_tier1_within_targets_is_refused_with_rates_and_limits():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 25)), WITHIN)
    assert not decision.open
    (reason,) = decision.reasons
    assert "underestimation 5.0% (limit 5.0%)" in reason
    assert "truncation 2.0% (limit 2.0%)" in reason


def test_truncation_alone_breaches_tier1():
    tier1 = {"underestimation_rate_pct": 0.0, "truncation_rate_pct": 2.5}
    assert evaluate_calibration_gate(samples(("implementation", "low", 25)), tier1).open


def test_empty_samples_fail_every_condition_without_raising():
    decision = evaluate_calibration_gate(empty_events_frame(), {})
    assert not decision.open
    assert len(decision.reasons) == 3
    assert decision.reasons[0] == "only 0 clean samples; the gate needs at least 20"
    assert decision.observed["largest_group"] is None


def test_force_opens_but_keeps_the_reasons_and_says_so():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 3)), WITHIN, force=True)
    assert decision.open and decision.forced
    assert len(decision.reasons) == 3
    assert decision.summary().startswith("Calibration gate forced open (--force) despite: only 3 clean samples")


def test_force_on_an_already_open_gate_still_records_it():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 20)), BREACHED, force=True)
    assert decision.open and decision.forced and decision.reasons == []
    assert "(forced)" in decision.summary()


def test_largest_group_counts_spellings_together_and_breaks_ties_by_name():
    frame = samples(("testing", "low", 3), ("tests", "low", 3), ("implementation", "low", 5))
    assert largest_group(frame) == {"category": "tests", "complexity": "low", "n": 6}
    tie = samples(("zeta", "low", 4), ("alpha", "low", 4))
    assert largest_group(tie) == {"category": "alpha", "complexity": "low", "n": 4}


def test_decision_is_frozen_and_serialisable():
    decision = evaluate_calibration_gate(samples(("a", "low", 2)), WITHIN)
    assert isinstance(decision, GateDecision)
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["open"] is False and data["summary"] == decision.summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.open = True  # type: ignore[misc]


# -- Tier 1 per group: a group whose own breach is certain opens the gate -----------------------------


def group_figures(category: str, complexity: str, *, events: int, underestimated: int = 0,
                  truncated: int = 0) -> dict[tuple[str, str], dict[str, int]]:
    return {(category, complexity): {"total_samples": events, "underestimation_samples": events,
                                     "underestimated_count": underestimated, "truncated_count": truncated}}


def test_a_group_whose_breach_is_certain_opens_the_gate_and_is_named():
    # Overall 4.0% / 1.0%: within targets. implementation/medium has 9 of 86 underestimated (10.5%,
    # Wilson 95% 5.6%-18.7%): the lower bound is above 5%, so its breach is certain.
    figures = group_figures("implementation", "medium", events=86, underestimated=9)
    decision = evaluate_calibration_gate(samples(("implementation", "medium", 80), ("tests", "low", 20)),
                                         {"underestimation_rate_pct": 4.0, "truncation_rate_pct": 1.0},
                                         group_tier1=figures)
    assert decision.open and decision.reasons == []
    (breach,) = decision.observed["group_breaches"]
    assert (breach["category"], breach["complexity"], breach["clean_samples"]) == ("implementation", "medium", 80)
    assert [b["metric"] for b in breach["breaches"]] == ["underestimation"]
    assert breach["breaches"][0]["ci"][0] == pytest.approx(5.6, abs=0.05)
    assert ("Tier 1 certainly breached in implementation/medium (80 clean samples): underestimation 9 of 86 "
            "= 10.5% [5.6-18.7], lower bound above 5.0%") in decision.summary()


def test_a_noisy_group_breach_inside_its_interval_keeps_the_gate_closed():
    # 1 of 12 underestimated and 1 of 12 truncated are 8.3%, above both targets, but their Wilson 95%
    # interval (1.5%-35.4%) still includes them: noise on 12 calls, not a certain breach.
    noisy = group_figures("docs", "low", events=12, underestimated=1, truncated=1)
    decision = evaluate_calibration_gate(samples(("docs", "low", 12), ("tests", "low", 20)), WITHIN, group_tier1=noisy)
    assert not decision.open and decision.observed["group_breaches"] == []
    (reason,) = decision.reasons
    assert "no group's is" in reason and "at least 5 clean samples" in reason


def test_a_certain_group_breach_needs_min_samples_clean_samples():
    # Certain on its events (10 of 40 truncated), but only 4 clean samples to learn from.
    figures = group_figures("docs", "low", events=40, truncated=10)
    decision = evaluate_calibration_gate(samples(("docs", "low", 4), ("tests", "low", 20)), WITHIN,
                                         group_tier1=figures)
    assert not decision.open
    decision = evaluate_calibration_gate(samples(("docs", "low", 5), ("tests", "low", 20)), WITHIN,
                                         group_tier1=figures)
    assert decision.open and "docs/low (5 clean samples): truncation 10 of 40 = 25.0%" in decision.summary()


def test_without_group_figures_the_reason_is_unchanged():
    decision = evaluate_calibration_gate(samples(("implementation", "low", 25)), WITHIN)
    assert "group" not in decision.reasons[0] and "group_breaches" not in decision.observed
