"""Calibration patches, the comment-preserving coefficient edit, and the backtest, by hand."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from autopack_pipeline.domain.backtest import PatchError, read_patch, run_backtest
from autopack_pipeline.domain.coefficients import CoefficientTable, calibrated_at, calibrated_version_name
from autopack_pipeline.domain.reprediction import PredictionInputs
from autopack_pipeline.services.calibration_apply import updated_yaml_text
from autopack_pipeline.storage.frames import conform_events_frame, event_arrays_from_frame


@pytest.fixture
def seed_text() -> str:
    from pathlib import Path

    # The repo's file, read only: these tests never write it.
    return (Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml").read_text(encoding="utf-8")


@pytest.fixture
def table(seed_text) -> CoefficientTable:
    return CoefficientTable.from_mapping(yaml.safe_load(seed_text))


AUTOPACK_PATCH = {
    "metadata": {"generated_at": "2025-12-29T10:00:00+00:00", "confidence_threshold": 0.7, "total_samples": 25,
                 "high_confidence_groups": 1},
    "proposed_changes": [{"category": "testing", "complexity": "low", "sample_count": 7, "confidence": 0.81,
                          "median_ratio": 1.4, "proposed_multiplier": 1.4, "action": "...", "reasoning": "..."}],
}


def test_autopack_format_patch_is_read_with_canonical_labels():
    patch = read_patch(AUTOPACK_PATCH)
    assert patch.multipliers() == {("tests", "low"): 1.4}
    assert patch.total_samples == 25 and patch.coefficient_file_version is None


def test_our_patch_can_pick_the_other_methods_proposals():
    ours = {**AUTOPACK_PATCH, "method": "coverage", "provenance": {"coefficient_file_version": "v5-step1"},
            "methods": {"autopack-median": {"proposed_changes": [
                {"category": "implementation", "complexity": "medium", "proposed_multiplier": 1.2}]}}}
    assert read_patch(ours).method == "coverage"
    other = read_patch(ours, method="autopack-median")
    assert other.multipliers() == {("implementation", "medium"): 1.2}
    assert other.coefficient_file_version == "v5-step1"
    with pytest.raises(PatchError, match="no figures for method 'bogus'"):
        read_patch(ours, method="bogus")


SECTION = {"coefficient_file_version": "v5-step1", "target_truncation_pct": 2.0, "groups": [
    {"category": "implementation", "complexity": "medium", "prediction_multiplier": 1.5, "budget_margin": 1.3,
     "budget_floor": 4000}]}


def test_the_chosen_methods_own_calibration_section_is_read():
    median_section = {**SECTION, "groups": [{**SECTION["groups"][0], "prediction_multiplier": 1.2}]}
    ours = {**AUTOPACK_PATCH, "method": "coverage", "calibration": SECTION,
            "methods": {"autopack-median": {"calibration": median_section, "proposed_changes": [
                {"category": "implementation", "complexity": "medium", "proposed_multiplier": 1.2}]}}}
    assert read_patch(ours).settings[("implementation", "medium")].prediction_multiplier == 1.5
    other = read_patch(ours, method="autopack-median")
    assert other.settings[("implementation", "medium")].prediction_multiplier == 1.2
    # A patch whose other method has no section of its own is refused, not applied through PHASE_OVERHEAD.
    older = {**ours, "methods": {"autopack-median": {"proposed_changes": []}}}
    with pytest.raises(PatchError, match="no calibration section for method 'autopack-median'"):
        read_patch(older, method="autopack-median")


@pytest.mark.parametrize("bad, message", [
    ([], "JSON object"),
    ({"metadata": {}}, "no proposed_changes"),
    ({"proposed_changes": [{"category": "docs"}]}, "needs category, complexity"),
    ({"proposed_changes": [{"category": "docs", "complexity": "low", "proposed_multiplier": -1}]}, "positive"),
    ({"proposed_changes": [{"category": "docs", "complexity": "extreme", "proposed_multiplier": 1}]}, "complexity"),
    ({"proposed_changes": [{"category": "docs", "complexity": "low", "proposed_multiplier": 1},
                           {"category": "documentation", "complexity": "low", "proposed_multiplier": 2}]}, "same"),
])
def test_malformed_patches_are_refused_with_the_reason(bad, message):
    with pytest.raises(PatchError, match=message):
        read_patch(bad)


def test_new_version_replaces_an_earlier_calibration_suffix():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert calibrated_version_name("v5-step1", now) == "v5-step1+cal20260102T030405Z"
    assert calibrated_version_name("v5-step1+cal20251231T000000Z", now) == "v5-step1+cal20260102T030405Z"
    assert calibrated_at("v5-step1+cal20260102T030405Z") == now.replace(tzinfo=timezone.utc)
    assert calibrated_at("v5-step1") is None and calibrated_at("v5-step1+calibrated") is None


def test_versions_applied_within_one_second_get_names_of_their_own():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=timezone.utc)
    first = calibrated_version_name("v5-step1", now)
    second = calibrated_version_name(first, now)
    third = calibrated_version_name(second, now.replace(microsecond=900_000))
    assert (first, second, third) == ("v5-step1+cal20260102T030405Z", "v5-step1+cal20260102T030406Z",
                                      "v5-step1+cal20260102T030407Z")
    # Later than the old version's stamp: the clock's own second, as before.
    assert calibrated_version_name(first, now.replace(second=9)) == "v5-step1+cal20260102T030409Z"


def test_yaml_edit_keeps_comments_and_changes_only_what_moved(seed_text, table):
    new = table.with_overhead_multipliers({("implementation", "low"): 2.0, ("tests", "low"): 1.2}, "v6",
                                          calibration_date="2026-01-02", calibration_samples=99, source="a test")
    text = updated_yaml_text(seed_text, table, new)
    assert CoefficientTable.from_mapping(yaml.safe_load(text)) == new
    old_lines, new_lines = seed_text.splitlines(), text.splitlines()
    changed = [line for line in new_lines if line not in old_lines]
    assert "version: v6" in changed and "calibration_date: 2026-01-02" in changed
    assert "calibration_samples: 99" in changed and "source: a test" in changed
    # Rows keep their alignment and their comments; 1098 = 915 * 1.2 lands in the `testing` alias row.
    assert "    implementation: {low: 1268, medium: 1176, high: 5000}   # v5: low 2000->1120->634, medium " \
           "3000->1860->1176" in changed
    assert "    testing:        {low: 1098, medium: 2500, high: 4000}    # v5: low 1500->915" in changed
    assert len(changed) == 6
    comments = [line for line in old_lines if line.lstrip().startswith("#")]
    assert comments and all(line in new_lines for line in comments)


def test_yaml_edit_adds_a_row_for_a_group_that_used_the_fallback(seed_text, table):
    new = table.with_overhead_multipliers({("doc_synthesis", "medium"): 1.5}, "v6")
    text = updated_yaml_text(seed_text, table, new)
    assert CoefficientTable.from_mapping(yaml.safe_load(text)) == new
    assert "    doc_synthesis: {medium: 3000}   # added by apply-calibration" in text.splitlines()


def test_yaml_edit_falls_back_to_a_full_dump_for_an_unusual_layout(table):
    odd = table.to_yaml()  # block style rows: the line edit cannot find them
    new = table.with_overhead_multipliers({("implementation", "low"): 2.0}, "v6")
    text = updated_yaml_text(odd.replace("implementation: {", "implementation:\n      {"), table, new)
    assert CoefficientTable.from_mapping(yaml.safe_load(text)) == new


def events_for_backtest():
    rows = [
        {"event_id": 1, "predicted_output_tokens": 3424, "actual_output_tokens": 4000, "selected_budget": 8192},
        {"event_id": 2, "predicted_output_tokens": 3424, "actual_output_tokens": 3000, "selected_budget": 8192},
        {"event_id": 3, "predicted_output_tokens": 8624, "actual_output_tokens": 10348, "selected_budget": 10348,
         "actual_max_tokens": 10348, "truncated": True, "success": False},
        {"event_id": 4, "predicted_output_tokens": 2000, "actual_output_tokens": 2500, "selected_budget": 8192},
    ]
    base = {"run_id": "r", "category": "implementation", "complexity": "low", "success": True, "truncated": False}
    frame = conform_events_frame(pd.DataFrame([{**base, "phase_id": f"p{r['event_id']}", **r} for r in rows]))
    one, three = ["src/new_module.py (new)"], ["src/a.py (new)", "src/b.py (new)", "src/c.py (new)"]
    return event_arrays_from_frame(frame), PredictionInputs.from_rows([1, 2, 3, 4], [one, one, three, []])


def test_backtest_by_hand(table, tmp_path):
    events, deliverables = events_for_backtest()
    new = table.with_overhead_multipliers({("implementation", "low"): 2.0}, "v6")
    # Old: (634 + 2000) * 1.3 = 3424 and (634 + 3 * 2000) * 1.3 = 8624 (budgets 8192 floor, 10348).
    # New: (1268 + 2000) * 1.3 = 4248 and (1268 + 6000) * 1.3 = 9448 (budgets 8192, 11337).
    result = run_backtest(events, deliverables, table, new, groups=[("implementation", "low")], workspace=tmp_path)
    assert result["events"] == 3 and result["skipped"] == {"no_deliverables": 1, "missing_tokens": 0}
    assert result["rerun_match_pct"] == 100.0
    old, fresh = result["old"], result["new"]
    assert old["underestimation_pct"] == pytest.approx(200 / 3)  # 4000 > 3766.4 and 10348 > 9486.4
    assert fresh["underestimation_pct"] == 0.0                    # 4000 < 4672.8, 10348 < 10392.8
    assert old["truncation_pct"] == pytest.approx(100 / 3) and old["truncation_unresolved"] == 0
    assert fresh["truncation_pct"] == 0.0 and fresh["truncation_unresolved"] == 1  # 11337 > the 10348 it hit
    assert old["budget_waste_p50"] == pytest.approx((8192 / 4000 + 8192 / 3000) / 2)
    assert old["budget_waste_p90"] == pytest.approx(8192 / 3000)  # fewer than 10 values: the maximum
    assert fresh["mean_predicted"] == pytest.approx((4248 * 2 + 9448) / 3)
    (group,) = result["groups"]
    assert group["events"] == 3
    assert group["prediction_scale_median"] == pytest.approx(4248 / 3424)


def test_backtest_with_unchanged_coefficients_changes_nothing(table, tmp_path):
    events, deliverables = events_for_backtest()
    same = table.with_overhead_multipliers({("docs", "high"): 1.0}, "v6")
    result = run_backtest(events, deliverables, table, same, workspace=tmp_path)
    assert result["old"] == result["new"]


def _overhead_multipliers_one_event_at_a_time(arrays, inputs, table, changes):
    """The reference: every event of a group estimated on its own, the median over all of them."""
    import numpy as np

    from autopack_pipeline.domain.backtest import MIN_OVERHEAD_MULTIPLIER, _groups_of
    from autopack_pipeline.domain.estimator import TokenEstimator

    items = [inputs.deliverables_at(p) for p in inputs.positions(arrays.event_id).tolist()]
    categories, complexities = _groups_of(arrays)
    estimator, out = TokenEstimator(table), {}
    for (category, complexity), multiplier in changes.items():
        totals = [estimator.estimate(found, category, complexity) for found, c, x in
                  zip(items, categories, complexities) if (c, x) == (category, complexity) and found]
        totals = [e.estimated_tokens / table.safety_margin for e in totals if e.category == category]
        out[(category, complexity)] = None if not totals else round(max(
            MIN_OVERHEAD_MULTIPLIER, 1.0 + (multiplier - 1.0) * float(np.median(totals)) / table.overhead(category,
                                                                                                       complexity)), 4)
    return out


def test_the_overhead_conversion_estimates_each_distinct_deliverables_list_once_with_the_same_median(table):
    """Lists repeated across events (in uneven numbers, so the median is a weighted one), events without
    stored inputs, with an empty list, a group priced by a doc model and a group without events."""
    import numpy as np

    from autopack_pipeline.domain.backtest import overhead_multipliers_for_prediction_scale

    rng = np.random.default_rng(5)
    lists = [["src/a.py"], ["src/a.py", "src/b.py (new)"], ["src/c.py"] * 4, ["docs/guide.md"], [],
             ["src/d.py", "tests/test_d.py", "src/e.py"]]
    n = 600
    groups = [("implementation", "low"), ("implementation", "medium"), ("tests", "low"), ("docs", "low")]
    chosen = rng.integers(0, len(groups), n)
    frame = conform_events_frame(pd.DataFrame({
        "event_id": range(1, n + 1), "run_id": "r", "phase_id": [f"p{i}" for i in range(n)],
        "category": [groups[g][0] for g in chosen], "complexity": [groups[g][1] for g in chosen],
        "predicted_output_tokens": 3000, "actual_output_tokens": 4000, "selected_budget": 8192,
        "success": True, "truncated": False}))
    arrays = event_arrays_from_frame(frame)
    stored = [i for i in range(1, n + 1) if i % 7]  # every seventh event kept no inputs
    inputs = PredictionInputs.from_rows(stored, [lists[int(rng.choice(len(lists), p=[.4, .2, .15, .1, .1, .05]))]
                                                 for _ in stored])
    changes = {("implementation", "low"): 1.5, ("implementation", "medium"): 0.8, ("tests", "low"): 1.3,
               ("docs", "low"): 1.2, ("tests", "high"): 1.7}
    got = overhead_multipliers_for_prediction_scale(arrays, inputs, table, changes)
    assert got == _overhead_multipliers_one_event_at_a_time(arrays, inputs, table, changes)
    assert got[("tests", "high")] is None and sum(v is not None for v in got.values()) >= 3
