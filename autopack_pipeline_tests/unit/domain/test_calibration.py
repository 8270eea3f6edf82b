"""The autopack-median calibration, figure by figure, and its provenance."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from pydantic import ValidationError

from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame
from autopack_pipeline_tests.oracle.calibration import (
    AUTOPACK_MEDIAN,
    CalibrationResult,
    action_text,
    calibrate_autopack_median,
    median_confidence,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
PROVENANCE = {"exclusions": {"failed": 3, "truncated": 1}, "coefficient_file_version": "v5"}


def samples(*rows: dict, category: str = "implementation", complexity: str = "low", start_id: int = 1) -> pd.DataFrame:
    base = {
        "run_id": "r", "category": category, "complexity": complexity, "predicted_output_tokens": 1000,
        "actual_output_tokens": 1000, "selected_budget": 4096, "actual_max_tokens": None,
        "success": True, "truncated": False,
    }
    full = [
        {**base, "event_id": start_id + i, "phase_id": f"p{start_id + i}", "timestamp": T0 + timedelta(hours=i), **row}
        for i, row in enumerate(rows)
    ]
    return conform_events_frame(pd.DataFrame(full))


def with_actuals(*values: int, **kw) -> pd.DataFrame:
    return samples(*({"actual_output_tokens": v} for v in values), **kw)


def only_group(frame: pd.DataFrame, **kw):
    result = calibrate_autopack_median(frame, provenance=PROVENANCE, **kw)
    assert len(result.groups) == 1
    return result.groups[0]


def test_median_is_the_upper_middle_ratio_and_confidence_follows_the_formula():
    # predicted 1000 each, so the ratios are 1.0, 1.2, ..., 2.0; the interpolated median would be 1.5.
    group = only_group(with_actuals(2000, 1000, 1800, 1200, 1600, 1400))
    assert group.median_ratio == pytest.approx(1.6)
    assert group.proposed_multiplier == group.median_ratio
    assert (group.min_ratio, group.max_ratio) == (1.0, 2.0)
    assert group.avg_ratio == pytest.approx(1.5)
    assert (group.avg_actual, group.avg_estimated) == (1500.0, 1000.0)
    # Population variance: squared deviations 0.25, 0.09, 0.01 twice each, over 6.
    std = math.sqrt(0.7 / 6)
    assert group.ratio_std == pytest.approx(std)
    assert group.confidence == pytest.approx(0.6 * 0.5 + 0.4 / (1 + std))
    assert group.confidence == pytest.approx(0.59816, abs=1e-5)
    assert group.action == "Increase coefficients by 60%"


def test_odd_sample_count_takes_the_middle_ratio():
    group = only_group(with_actuals(500, 3000, 900, 1100, 700))
    assert group.median_ratio == pytest.approx(0.9)


def test_confidence_saturates_at_twelve_samples_and_rewards_steady_ratios():
    assert median_confidence([1.3] * 12) == pytest.approx(1.0)
    assert median_confidence([1.3] * 24) == pytest.approx(1.0)
    assert median_confidence([1.0, 3.0] * 3) == pytest.approx(0.6 * 0.5 + 0.4 / 2)


def test_actionable_means_confidence_at_or_above_the_threshold():
    frame = with_actuals(2000, 1000, 1800, 1200, 1600, 1400)  # confidence ~0.598
    assert only_group(frame).actionable is False
    assert only_group(frame, confidence_threshold=0.598).actionable is True
    steady = with_actuals(*[1300] * 12)  # confidence exactly 1.0
    assert only_group(steady, confidence_threshold=1.0).actionable is True


@pytest.mark.parametrize(
    ("ratio", "text"),
    [
        (1.5, "Increase coefficients by 50%"),
        (1.2, "No adjustment needed (within ±20% tolerance)"),
        (0.8, "No adjustment needed (within ±20% tolerance)"),
        (0.5, "Decrease coefficients by 50%"),
        (0.75, "Decrease coefficients by 25%"),
    ],
)
def test_action_text_bands(ratio, text):
    assert action_text(ratio) == text


def test_zero_prediction_gives_a_zero_ratio():
    group = only_group(samples(*({"predicted_output_tokens": 0} for _ in range(5))))
    assert group.median_ratio == 0.0 and group.max_ratio == 0.0


def test_budget_waste_uses_the_ceiling_sent_with_selected_budget_fallback():
    # Actual 100 each; the budgets make waste 1..11. Rows 3 and 5 must fall back to selected_budget.
    rows = [{"actual_output_tokens": 100, "predicted_output_tokens": 100,
             "actual_max_tokens": 100 * k, "selected_budget": 99_999} for k in range(1, 12)]
    rows[2] = {**rows[2], "actual_max_tokens": None, "selected_budget": 300}
    rows[4] = {**rows[4], "actual_max_tokens": 0, "selected_budget": 500}
    group = only_group(samples(*rows))
    assert group.median_budget_waste == 6.0  # sorted[11 // 2]
    assert group.p90_budget_waste == 10.0  # sorted[int(9.9)], one below the maximum
    assert group.avg_selected_budget == pytest.approx((9 * 99_999 + 800) / 11)
    assert group.confidence == pytest.approx(0.6 * 11 / 12 + 0.4)


def test_p90_budget_waste_is_the_maximum_for_five_samples():
    rows = [{"actual_output_tokens": 1000, "actual_max_tokens": 1000 * k} for k in (3, 1, 5, 2, 4)]
    assert only_group(samples(*rows)).p90_budget_waste == 5.0


def test_small_groups_are_listed_with_how_many_more_they_need():
    frame = pd.concat([
        with_actuals(*[1200] * 6, category="implementation"),
        with_actuals(1500, 1600, 1700, category="documentation", start_id=100),
    ])
    result = calibrate_autopack_median(frame, provenance=PROVENANCE)
    assert [(g.category, g.sample_count) for g in result.groups] == [("implementation", 6)]
    (below,) = result.below_threshold
    assert (below.category, below.complexity, below.sample_count, below.needed) == ("docs", "low", 3, 2)
    assert below.note == "3 samples (need 2 more)"
    assert result.total_samples == 6
    strict = calibrate_autopack_median(frame, min_samples=7, provenance=PROVENANCE)
    assert strict.groups == [] and [b.needed for b in strict.below_threshold] == [1, 4]


def test_groups_use_canonical_labels_and_sort_by_size_then_name():
    frame = pd.concat([
        with_actuals(*[1100] * 3, category="testing"),
        with_actuals(*[1100] * 3, category="tests", start_id=10),
        with_actuals(*[1100] * 5, category="docs", start_id=20),
        with_actuals(*[1100] * 5, category="api", start_id=30),
    ])
    result = calibrate_autopack_median(frame, provenance=PROVENANCE)
    assert [(g.category, g.sample_count) for g in result.groups] == [("tests", 6), ("api", 5), ("docs", 5)]


def test_provenance_records_ids_window_counts_and_caller_facts():
    frame = with_actuals(*[1200] * 5, start_id=40)
    result = calibrate_autopack_median(
        frame, provenance={**PROVENANCE, "dagster_run_id": "abc", "forced": True, "dedup": True},
    )
    prov = result.provenance
    assert (prov.event_id_min, prov.event_id_max) == (40, 44)
    assert (prov.time_window_start, prov.time_window_end) == (T0, T0 + timedelta(hours=4))
    assert (prov.samples_kept, prov.samples_excluded) == (5, 4)
    assert prov.exclusions == {"failed": 3, "truncated": 1}
    assert (prov.coefficient_file_version, prov.dagster_run_id, prov.forced) == ("v5", "abc", True)
    assert result.method == AUTOPACK_MEDIAN == "autopack-median"
    assert result.parameters == {"min_samples": 5, "confidence_threshold": 0.7}


def test_unknown_provenance_keys_are_refused():
    with pytest.raises(ValidationError):
        calibrate_autopack_median(with_actuals(1000), provenance={"coefficent_file_version": "typo"})


def test_empty_samples_give_an_empty_result_with_provenance():
    result = calibrate_autopack_median(empty_events_frame(), provenance={})
    assert isinstance(result, CalibrationResult)
    assert result.groups == [] and result.below_threshold == []
    assert result.provenance.event_id_min is None and result.provenance.samples_kept == 0


def test_bad_min_samples_is_refused():
    with pytest.raises(ValueError):
        calibrate_autopack_median(with_actuals(1000), min_samples=0, provenance={})


def test_result_is_json_ready():
    result = calibrate_autopack_median(with_actuals(*[1300] * 12), provenance=PROVENANCE)
    data = json.loads(json.dumps(result.model_dump(mode="json"), allow_nan=False))
    assert data["groups"][0]["median_ratio"] == pytest.approx(1.3)
    assert data["provenance"]["time_window_start"].startswith("2025-03-01T12:00:00")
    assert [g.category for g in result.actionable_groups] == ["implementation"]
