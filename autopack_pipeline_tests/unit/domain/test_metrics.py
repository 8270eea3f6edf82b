"""Tier-1/Tier-2 metrics, diagnostics, strata and the ``metrics --json`` document, by hand-computed cases."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame
from autopack_pipeline_tests.oracle.metrics import (
    BUDGET_WASTE_P90_TARGET,
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
    budget_sent,
    budget_waste_within_target,
    compute_metrics,
    diagnostics,
    needs_tuning,
    p90,
    stratify,
    tier1_metrics,
    tier2_metrics,
    wilson_interval,
)


def events(*rows: dict) -> pd.DataFrame:
    base = {
        "run_id": "r", "category": "implementation", "complexity": "low", "deliverable_count": 1,
        "predicted_output_tokens": 100, "actual_output_tokens": 100, "selected_budget": 400,
        "actual_max_tokens": None, "success": True, "truncated": False, "is_truncated_output": False,
    }
    return conform_events_frame(
        pd.DataFrame([{**base, "event_id": i + 1, "phase_id": f"p{i}", **row} for i, row in enumerate(rows)])
    )


def actuals(*values: int, **common) -> pd.DataFrame:
    return events(*({"actual_output_tokens": v, **common} for v in values))


# --- Wilson -----------------------------------------------------------------------------------------

def test_wilson_matches_published_small_sample_figures():
    low, high = wilson_interval(4, 25)
    assert (round(low, 1), round(high, 1)) == (6.4, 34.7)
    low, high = wilson_interval(0, 25)
    assert low == 0.0 and round(high, 1) == 13.3
    low, high = wilson_interval(3, 3)
    assert abs(low - 43.8) < 0.1 and high == 100.0
    assert [round(x, 1) for x in wilson_interval(5, 100)] == [2.2, 11.2]


def test_wilson_without_trials_is_the_whole_range_and_bad_counts_raise():
    assert wilson_interval(0, 0) == (0.0, 100.0)
    for k, n in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_wilson_narrows_with_a_smaller_z():
    wide = wilson_interval(4, 25)
    narrow = wilson_interval(4, 25, z=1.0)
    assert wide[0] < narrow[0] < 16.0 < narrow[1] < wide[1]


# --- Tier 1 -----------------------------------------------------------------------------------------

FIVE = (95, 105, 111, 120, 100)  # predicted 100 each


def test_underestimation_depends_on_the_multiplier():
    frame = actuals(*FIVE)
    strict = tier1_metrics(frame, under_multiplier=1.0)  # 105, 111, 120 exceed 100
    tolerant = tier1_metrics(frame)  # only 111 and 120 exceed 110
    assert strict["underestimated_count"] == 3 and strict["underestimation_rate_pct"] == 60.0
    assert tolerant["underestimated_count"] == 2 and tolerant["underestimation_rate_pct"] == 40.0
    assert tolerant["under_multiplier"] == 1.1 and strict["under_multiplier"] == 1.0
    assert tolerant["underestimation_rate_pct_ci"] == list(wilson_interval(2, 5))


def test_truncation_and_success_rates_with_intervals():
    frame = events(
        {"truncated": True}, {"truncated": False, "is_truncated_output": True}, {"success": False},
        {"success": None}, {},
    )
    tier1 = tier1_metrics(frame)
    assert tier1["total_samples"] == 5
    assert tier1["truncated_count"] == 1 and tier1["truncation_rate_pct"] == 20.0
    assert tier1["success_count"] == 3 and tier1["success_rate_pct"] == 60.0
    assert tier1["truncation_rate_pct_ci"] == list(wilson_interval(1, 5))
    assert tier1["success_rate_pct_ci"] == list(wilson_interval(3, 5))


def test_rows_without_token_counts_do_not_dilute_underestimation():
    frame = events({"actual_output_tokens": 200}, {"actual_output_tokens": None}, {"predicted_output_tokens": None})
    tier1 = tier1_metrics(frame)
    assert tier1["underestimation_samples"] == 1 and tier1["underestimation_rate_pct"] == 100.0
    assert tier1["total_samples"] == 3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_invalid_multiplier_is_refused(bad):
    with pytest.raises(ValueError):
        tier1_metrics(actuals(100), under_multiplier=bad)


def test_needs_tuning_is_strictly_above_the_targets():
    assert (UNDERESTIMATION_TARGET_PCT, TRUNCATION_TARGET_PCT) == (5.0, 2.0)
    assert not needs_tuning({"underestimation_rate_pct": 5.0, "truncation_rate_pct": 2.0})
    assert needs_tuning({"underestimation_rate_pct": 5.01, "truncation_rate_pct": 0.0})
    assert needs_tuning({"underestimation_rate_pct": 0.0, "truncation_rate_pct": 2.01})


# --- Tier 2 -----------------------------------------------------------------------------------------

def test_p90_is_the_maximum_below_ten_values_and_the_exclusive_quantile_from_ten():
    assert p90([]) is None
    assert p90([float(v) for v in range(1, 10)]) == 9.0
    eight = [float(v) for v in range(1, 9)]
    assert statistics.quantiles(eight, n=10)[8] == pytest.approx(8.1)  # the quantile rule overshoots here...
    assert p90(eight) == 8.0  # ...but below ten values the maximum is used
    ten = [float(v) for v in range(1, 11)]
    assert p90(ten) == pytest.approx(9.9)  # position 0.9 * 11 = 9.9, between 9 and 10
    assert p90(ten) == statistics.quantiles(ten, n=10)[8]


def test_waste_ratio_is_predicted_over_actual_and_skips_zero_actuals():
    frame = events(*({"predicted_output_tokens": 100 * v} for v in range(1, 11)), {"actual_output_tokens": 0})
    tier2 = tier2_metrics(frame)
    assert tier2["waste_ratio_median"] == 5.5
    assert tier2["waste_ratio_mean"] == 5.5
    assert tier2["waste_ratio_p90"] == pytest.approx(9.9)
    nine = tier2_metrics(events(*({"predicted_output_tokens": 100 * v} for v in range(1, 10))))
    assert nine["waste_ratio_p90"] == 9.0


def test_budget_prefers_actual_max_tokens_and_falls_back_to_selected_budget():
    frame = events(
        {"actual_max_tokens": 400, "selected_budget": 200},
        {"actual_max_tokens": None, "selected_budget": 300},
        {"actual_max_tokens": 0, "selected_budget": 250},
    )
    assert budget_sent(frame).tolist() == [400.0, 300.0, 250.0]
    only_fallback = events({"actual_max_tokens": None, "selected_budget": 300})
    assert tier2_metrics(only_fallback)["budget_waste_p90"] == 3.0
    assert tier2_metrics(frame)["budget_waste_p90"] == 4.0


def test_unknown_budgets_are_left_out_of_budget_waste():
    frame = events({"selected_budget": 0}, {"selected_budget": None}, {"selected_budget": 250})
    assert tier2_metrics(frame)["budget_waste_p90"] == 2.5


def test_budget_waste_target():
    assert BUDGET_WASTE_P90_TARGET == 3.0
    assert budget_waste_within_target({"budget_waste_p90": 2.99}) is True
    assert budget_waste_within_target({"budget_waste_p90": 3.0}) is False
    assert budget_waste_within_target({"budget_waste_p90": None}) is None


# --- Diagnostics ------------------------------------------------------------------------------------

def test_smape_uses_non_truncated_rows_and_truncated_rows_are_lower_bounds():
    frame = events(
        {"predicted_output_tokens": 1200, "actual_output_tokens": 800},  # SMAPE 40
        {"predicted_output_tokens": 500, "actual_output_tokens": 700},  # SMAPE 33.33
        {"predicted_output_tokens": 1000, "actual_output_tokens": 4096, "truncated": True},
        {"predicted_output_tokens": 3000, "actual_output_tokens": 2000, "truncated": True},
    )
    diag = diagnostics(frame)
    assert diag["smape_mean"] == pytest.approx((40.0 + 200 * 200 / 1200) / 2)
    assert diag["smape_median"] == pytest.approx(diag["smape_mean"])
    assert (diag["non_truncated_count"], diag["truncated_count"]) == (2, 2)
    assert diag["truncated_lower_bound"] == {
        "count": 2, "predicted_mean": 2000.0, "actual_mean": 3048.0, "underestimated_pct": 50.0,
    }


def test_smape_skips_rows_where_both_counts_are_zero():
    diag = diagnostics(events({"predicted_output_tokens": 0, "actual_output_tokens": 0},
                              {"predicted_output_tokens": 250, "actual_output_tokens": 100}))
    assert diag["smape_mean"] == pytest.approx(200 * 150 / 350)


# --- Strata and the whole document --------------------------------------------------------------------

def test_strata_use_canonical_labels_and_deliverable_buckets():
    frame = events(
        {"category": "testing", "deliverable_count": 0},
        {"category": "tests", "deliverable_count": 3, "actual_output_tokens": 200},
        {"category": "docs", "complexity": "high_complexity", "deliverable_count": 6},
    )
    strata = stratify(frame, 1.1)
    assert set(strata) == {"category", "complexity", "deliverables"}
    assert sorted(strata["category"]) == ["docs", "tests"]
    assert strata["category"]["tests"]["total_samples"] == 2
    assert strata["category"]["tests"]["underestimation_rate_pct"] == 50.0
    assert sorted(strata["complexity"]) == ["high", "low"]
    assert {k: v["total_samples"] for k, v in strata["deliverables"].items()} == {"1": 1, "2-5": 1, "6+": 1}


def test_compute_metrics_has_exactly_the_cli_shape():
    frame = actuals(*FIVE)
    plain = compute_metrics(frame)
    assert set(plain) == {"tier1", "tier2", "diagnostics", "needs_tuning"}
    assert set(plain["tier2"]) == {"waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90"}
    for key in ("underestimation_rate_pct", "truncation_rate_pct", "success_rate_pct"):
        assert key in plain["tier1"] and len(plain["tier1"][f"{key}_ci"]) == 2
    assert {"under_multiplier", "total_samples"} <= set(plain["tier1"])
    assert {"smape_mean", "smape_median", "non_truncated_count", "truncated_count"} <= set(plain["diagnostics"])
    assert plain["needs_tuning"] is True  # 40% underestimated
    strict = compute_metrics(frame, under_multiplier=1.0, stratify=True)
    assert set(strict) == {"tier1", "tier2", "diagnostics", "needs_tuning", "strata"}
    assert strict["tier1"]["underestimation_rate_pct"] == 60.0


def _assert_plain(value):
    """Only JSON-native Python types, no numpy scalars, no NaN or infinity."""
    if isinstance(value, dict):
        for item in value.values():
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)
        if isinstance(value, float):
            assert math.isfinite(value)


def test_empty_input_gives_zeros_and_nones():
    document = compute_metrics(empty_events_frame(), stratify=True)
    _assert_plain(document)
    assert document["tier1"]["total_samples"] == 0 and document["tier1"]["underestimation_rate_pct"] == 0.0
    assert all(value is None for value in document["tier2"].values())
    assert document["diagnostics"]["smape_mean"] is None
    assert document["needs_tuning"] is False
    assert document["strata"] == {"category": {}, "complexity": {}, "deliverables": {}}


optional_int = st.one_of(st.none(), st.integers(0, 70000))
optional_bool = st.one_of(st.none(), st.booleans())
row_strategy = st.fixed_dictionaries({
    "category": st.one_of(st.none(), st.sampled_from(["tests", "testing", "docs", "implementation", "x"])),
    "complexity": st.one_of(st.none(), st.sampled_from(["low", "medium", "HIGH", "weird"])),
    "deliverable_count": optional_int,
    "predicted_output_tokens": optional_int,
    "actual_output_tokens": optional_int,
    "selected_budget": optional_int,
    "actual_max_tokens": optional_int,
    "success": optional_bool,
    "truncated": optional_bool,
    "is_truncated_output": optional_bool,
})


@settings(max_examples=60, deadline=None)
@given(st.lists(row_strategy, max_size=30), st.floats(0.5, 2.0))
def test_metrics_never_raise_and_rates_sit_inside_their_intervals(rows, multiplier):
    document = compute_metrics(events(*rows), under_multiplier=multiplier, stratify=True)
    _assert_plain(document)
    json.dumps(document, allow_nan=False)
    blocks = [document["tier1"]] + [b for dim in document["strata"].values() for b in dim.values()]
    for block in blocks:
        for key in ("underestimation_rate_pct", "truncation_rate_pct", "success_rate_pct"):
            low, high = block[f"{key}_ci"]
            assert 0.0 <= low <= block[key] <= high <= 100.0


def test_group_tier1_counted_beside_the_document_is_the_gates_own():
    """The metrics stage's group Tier-1 blocks (handed to the gate) equal ``group_tier1_arrays`` of the
    same events, and the document equals ``tier_metrics_document_arrays``'s; the shared canonical codes
    are the column's own (int8 while the spellings fit)."""
    import numpy as np

    from autopack_pipeline.domain.analysis import (
        EventArrays,
        group_tier1_arrays,
        tier_metrics_document_arrays,
        tier_metrics_with_group_tier1_arrays,
    )
    from autopack_pipeline.domain.categories import normalise_category

    rng = np.random.default_rng(3)
    rows = [{"event_id": i, "category": ["tests", "testing", "docs", None][i % 4],
             "complexity": ["low", "high"][i % 2], "predicted_output_tokens": int(rng.integers(100, 900)),
             "actual_output_tokens": int(rng.integers(50, 1500)), "success": bool(i % 5), "truncated": i % 7 == 0,
             "run_id": f"r{i // 10}", "phase_id": f"p{i}", "attempt": 1} for i in range(200)]
    arrays = EventArrays.from_records(rows)
    document, groups = tier_metrics_with_group_tier1_arrays(arrays, under_multiplier=1.2, clean_samples=7)
    assert groups == group_tier1_arrays(arrays, under_multiplier=1.2)
    assert json.dumps(document, sort_keys=True) == json.dumps(
        tier_metrics_document_arrays(arrays, under_multiplier=1.2, clean_samples=7), sort_keys=True)
    codes, names = arrays.category.canonical(normalise_category)
    shared = arrays.canonical_groups
    assert shared.category.dtype == np.int8 and shared.category_names == names
    assert np.array_equal(shared.category, codes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nested_documents_partitioned_in_place_match_each_partitioned_from_a_copy(seed, monkeypatch):
    """Documents made of nested runs of parts share one array of values, each partitioned in place
    (smaller documents first, means taken before): every figure equals the copy-per-document way's,
    bit for bit; partly overlapping documents are not nested and take the copy way."""
    import numpy as np

    from autopack_pipeline.domain.analysis import EventArrays
    from autopack_pipeline.domain.analysis import metrics as metrics_module

    rng = np.random.default_rng(seed)
    n = 3000
    rows = [{"event_id": i, "category": "tests", "complexity": "low",
             "predicted_output_tokens": int(rng.integers(0, 60)), "actual_output_tokens": int(rng.integers(0, 90)),
             "selected_budget": int(rng.integers(1, 200)), "actual_max_tokens": int(rng.integers(0, 3)) * 100,
             "success": bool(rng.integers(0, 2)), "truncated": bool(rng.integers(0, 4) == 0),
             "run_id": "r", "phase_id": f"p{i}", "attempt": 1} for i in range(n)]
    base = metrics_module._Basics.of(EventArrays.from_records(rows))
    assert base.whole
    part = rng.integers(0, 4, n)
    parts = [part == k for k in range(4)]
    documents = [[0, 1, 2, 3], [0], [1, 2], [2], [3]]
    assert metrics_module._nested(documents)
    assert not metrics_module._nested([[0, 1], [1, 2]])
    in_place = metrics_module._shared_ratio_figures(base, parts, documents)
    monkeypatch.setattr(metrics_module, "_nested", lambda documents: False)
    copied = metrics_module._shared_ratio_figures(base, parts, documents)
    assert json.dumps(in_place) == json.dumps(copied)
    assert all(doc["waste_ratio_median"] is not None for doc in in_place)
