"""The coverage calibration: hand-computed figures, censoring, shrinkage, and its promises as properties."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.storage.frames import conform_events_frame
from autopack_pipeline_tests.oracle.calibration import calibrate_autopack_median
from autopack_pipeline_tests.oracle.coverage import (
    COVERAGE,
    calibrate_coverage,
    order_statistic_index,
    projected_budgets,
    upper_bound,
    weight,
)
from autopack_pipeline_tests.oracle.samples import clean_samples

TOL = 1.1


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"run_id": "r", "predicted_output_tokens": 1000, "selected_budget": 8192, "actual_max_tokens": None,
            "success": True, "truncated": False, "category": "implementation", "complexity": "low"}
    return conform_events_frame(pd.DataFrame(
        [{**base, "event_id": i + 1, "phase_id": f"p{i + 1}", **row} for i, row in enumerate(rows)]
    ))


def clean(ratios, **kw) -> list[dict]:
    return [{"actual_output_tokens": round(1000 * r), **kw} for r in ratios]


def truncated(count: int, ceiling: int = 4000, **kw) -> list[dict]:
    return [{"actual_output_tokens": ceiling, "actual_max_tokens": ceiling, "truncated": True, "success": False,
             "stop_reason": "max_tokens", **kw} for _ in range(count)]


def groups_of(result) -> dict[tuple[str, str], object]:
    return {(g.category, g.complexity): g for g in result.groups}


def calibrate(events, **kw):
    return calibrate_coverage(events, provenance={}, **kw)


# -- hand-computed figures ---------------------------------------------------------------------


def test_order_statistic_is_the_finite_sample_rank():
    # ceil((n + 1) * 0.95): 19 needs all 19; 40 observations allow one above the bound.
    assert [order_statistic_index(n, 5.0) for n in (18, 19, 20, 39, 40, 41, 100)] == [19, 19, 20, 38, 39, 40, 96]


def test_forty_clean_samples_give_the_39th_ratio_over_the_tolerance():
    ratios = [0.05 * i for i in range(1, 41)]  # 0.05 .. 2.00
    (group,) = calibrate(frame(clean(ratios))).groups
    d = group.method_details
    assert d["status"] == "identifiable" and d["order_statistic_k"] == 39
    assert d["upper_ratio_bound"] == pytest.approx(1.95)
    assert group.proposed_multiplier == pytest.approx(1.95 / TOL)
    assert group.confidence == pytest.approx(40 / 48)
    assert group.actionable
    # In-sample: ratios above 1.1 now (1.15 .. 2.00 = 18 of 40); above 1.95 afterwards (1 of 40).
    assert d["underestimation_pct_now"] == pytest.approx(100 * 18 / 40)
    assert d["underestimation_pct_projected"] == pytest.approx(100 * 1 / 40)


def test_a_truncated_event_counts_above_every_candidate_and_pushes_the_rank_up():
    ratios = [0.05 * i for i in range(1, 41)]
    one = groups_of(calibrate(frame(clean(ratios) + truncated(1))))[("implementation", "low")]
    assert one.method_details["order_statistic_k"] == 40  # N = 41
    assert one.method_details["upper_ratio_bound"] == pytest.approx(2.0)  # the largest clean ratio
    assert one.method_details["censored_samples"] == 1
    two = groups_of(calibrate(frame(clean(ratios) + truncated(2))))[("implementation", "low")]
    # N = 42, k = 41: the 41st value is a truncated one, so no finite bound exists.
    assert two.method_details["status"] == "unidentifiable"
    assert two.method_details["upper_ratio_bound"] is None
    assert not two.actionable
    assert "Raise this group's budget floor" in two.action
    assert two.method_details["multiplier_is_lower_bound"]
    assert two.proposed_multiplier == pytest.approx(4.0 / TOL)  # the ceiling it hit, 4000 / 1000


def test_any_truncation_makes_a_small_group_unidentifiable():
    result = calibrate(frame(clean([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]) + truncated(1)))
    (group,) = result.groups
    assert group.method_details["status"] == "unidentifiable"
    assert "1 of 7 observations were truncated" in group.action


def test_thin_group_borrows_from_its_category_which_borrows_from_the_global_bound():
    impl = clean([0.05 * i for i in range(1, 41)])
    tests = clean([1.0, 1.2, 1.4, 1.6, 1.8], category="tests", complexity="low")
    result = calibrate(frame(impl + tests))
    by_key = groups_of(result)
    # Global: 45 observations, k = 44, the second largest of all ratios.
    global_bound = 1.95
    w = 5 / 13
    category = max(1.8, 1.8 ** w * global_bound ** (1 - w))
    expected = max(1.8, 1.8 ** w * category ** (1 - w))
    group = by_key[("tests", "low")]
    assert group.method_details["status"] == "thin"
    assert group.method_details["parent_bound"] == pytest.approx(category)
    assert group.method_details["upper_ratio_bound"] == pytest.approx(expected)
    assert group.confidence == pytest.approx(w)
    assert not group.actionable  # 0.38 < 0.7: advisory only
    assert "advisory" in group.action
    # The large group keeps its own bound; borrowing never applies to it.
    assert by_key[("implementation", "low")].method_details["upper_ratio_bound"] == pytest.approx(1.95)


def test_borrowing_never_lowers_a_thin_groups_own_maximum():
    impl = clean([0.5] * 40)  # a low global bound
    tests = clean([1.0, 1.2, 3.0, 1.1, 1.3], category="tests", complexity="low")
    group = groups_of(calibrate(frame(impl + tests)))[("tests", "low")]
    assert group.method_details["upper_ratio_bound"] == pytest.approx(3.0)


def test_dedup_keeps_a_phase_clean_retry_and_one_truncated_attempt_of_a_phase_without_one():
    rows = clean([1.0] * 30)
    rows += [{**truncated(1)[0], "phase_id": "retry", "attempt": 1},
             {"actual_output_tokens": 1500, "phase_id": "retry", "attempt": 2},
             {**truncated(1)[0], "phase_id": "stuck", "attempt": 1},
             {**truncated(1)[0], "phase_id": "stuck", "attempt": 2}]
    events = frame(rows)
    (group,) = calibrate(events).groups
    assert group.method_details["clean_samples"] == 31
    assert group.method_details["censored_samples"] == 1
    (every,) = calibrate(events, dedup=False).groups
    assert every.method_details["censored_samples"] == 3


def test_provenance_counts_censored_events_as_kept_and_adds_up():
    rows = clean([1.0] * 25) + truncated(2) + [{"actual_output_tokens": 900, "success": False}]
    result = calibrate(frame(rows))
    prov = result.provenance
    assert prov.samples_kept == 27
    assert prov.samples_excluded == 1 and prov.exclusions["failed"] == 1
    assert prov.samples_kept + prov.samples_excluded == len(rows)
    assert result.method == COVERAGE and result.parameters["censored_observations"] == 2


def test_small_groups_are_listed_below_threshold_but_still_inform_their_category():
    rows = clean([1.0] * 30) + clean([2.0, 2.1], category="implementation", complexity="medium")
    result = calibrate(frame(rows), min_samples=5)
    assert [(g.category, g.complexity, g.needed) for g in result.below_threshold] == [("implementation", "medium", 3)]


def test_projected_budget_waste_respects_floors_when_the_table_is_given():
    table = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")  # read only
    floor = table.budget_floor("implementation", "low")
    rows = frame(clean([1.0] * 3, selected_budget=floor))
    assert list(projected_budgets(rows, 2.0, None, ("implementation", "low"))) == [2 * floor] * 3
    # 1000 * 2 * 1.2 is far below the floor, so the budget stays where it was.
    assert list(projected_budgets(rows, 2.0, table, ("implementation", "low"))) == [floor] * 3


def test_upper_bound_without_enough_observations_returns_the_maximum():
    assert upper_bound(np.array([1.0, 3.0, 2.0]), 0, 5.0) == (3.0, 4, False)
    assert upper_bound(np.array([1.0, 3.0]), 1, 5.0)[0] == math.inf


# -- properties --------------------------------------------------------------------------------


def synthetic(rng: np.random.Generator, n: int, mu: float, sigma: float, category="implementation",
              complexity="low", start=0, ceiling_ratio: float | None = None) -> list[dict]:
    """Events whose actual/predicted is lognormal(mu, sigma); above ``ceiling_ratio`` they truncate."""
    predicted = rng.integers(500, 5000, n)
    ratios = np.exp(rng.normal(mu, sigma, n))
    rows = []
    for i, (p, r) in enumerate(zip(predicted, ratios)):
        row = {"event_id": start + i + 1, "phase_id": f"{category}-{complexity}-{start + i}", "category": category,
               "complexity": complexity, "predicted_output_tokens": int(p), "actual_output_tokens": max(50, int(p * r))}
        if ceiling_ratio is not None and r > ceiling_ratio:
            ceiling = int(p * ceiling_ratio)
            row.update(actual_output_tokens=ceiling, actual_max_tokens=ceiling, truncated=True, success=False)
        rows.append(row)
    return rows


def miss_rate(multiplier: float, mu: float, sigma: float, rng: np.random.Generator, draws: int = 40_000) -> float:
    """Fraction of fresh calls, predictions scaled by ``multiplier``, with actual > 1.1 x prediction."""
    ratios = np.exp(rng.normal(mu, sigma, draws))
    return float((ratios > TOL * multiplier).mean())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), mu=st.floats(-0.5, 0.8), sigma=st.floats(0.1, 0.9))
def test_events_drawn_after_scaling_meet_the_target_within_sampling_error(seed, mu, sigma):
    rng = np.random.default_rng(seed)
    n = 300
    (group,) = calibrate(frame(synthetic(rng, n, mu, sigma))).groups
    observed = miss_rate(group.proposed_multiplier, mu, sigma, rng)
    # Conformal: the miss rate is Beta(n + 1 - k, k) distributed around <= 5%; 4 sd of it plus
    # Monte-Carlo noise bounds a single calibration.
    sd = math.sqrt(0.05 * 0.95 / n) + math.sqrt(0.05 * 0.95 / 40_000)
    assert observed <= 0.05 + 4 * sd


def test_on_average_the_miss_rate_is_at_most_the_target_and_the_median_method_is_far_off():
    rng = np.random.default_rng(7)
    misses, median_misses = [], []
    for _ in range(40):
        events = frame(synthetic(rng, 200, 0.2, 0.5))
        (group,) = calibrate(events).groups
        misses.append(miss_rate(group.proposed_multiplier, 0.2, 0.5, rng, 20_000))
        (median,) = calibrate_autopack_median(clean_samples(events), provenance={}).groups
        median_misses.append(miss_rate(median.proposed_multiplier, 0.2, 0.5, rng, 20_000))
    # Mean of 40 calibrations: sd about 0.015 / sqrt(40) = 0.0024.
    assert np.mean(misses) <= 0.05 + 3 * 0.0024
    assert np.mean(median_misses) > 0.3  # aims at the middle: about half of the calls still miss


def test_with_rare_truncation_the_target_still_holds():
    rng = np.random.default_rng(11)
    misses = []
    for _ in range(20):
        # P(lognormal(0, 0.4) > 2.2) is about 2.5%: a few censored events per group of 400.
        (group,) = calibrate(frame(synthetic(rng, 400, 0.0, 0.4, ceiling_ratio=2.2))).groups
        assert group.method_details["status"] == "identifiable"
        misses.append(miss_rate(group.proposed_multiplier, 0.0, 0.4, rng, 20_000))
    assert np.mean(misses) <= 0.05 + 3 * 0.011 / math.sqrt(20)


def bound(group) -> float:
    value = group.method_details["upper_ratio_bound"]
    return math.inf if value is None else value


row_strategy = st.tuples(st.sampled_from(["implementation", "tests"]), st.sampled_from(["low", "medium"]),
                         st.floats(0.2, 5.0), st.booleans())


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row_strategy, min_size=5, max_size=70), flips=st.lists(st.integers(0, 69), max_size=6),
       extra=st.lists(st.tuples(st.sampled_from(["implementation", "tests"]), st.sampled_from(["low", "medium"])),
                      max_size=4))
def test_more_truncation_never_lowers_a_multiplier(rows, flips, extra):
    def build(flipped: set[int], added) -> pd.DataFrame:
        out = []
        for i, (category, complexity, ratio, was_truncated) in enumerate(rows):
            row = {"category": category, "complexity": complexity, "actual_output_tokens": max(50, round(1000 * ratio))}
            if was_truncated or i in flipped:
                row.update(truncated=True, success=False)
            out.append(row)
        out += [{"category": c, "complexity": x, "actual_output_tokens": 3000, "truncated": True, "success": False}
                for c, x in added]
        return frame(out)

    before = groups_of(calibrate(build(set(), [])))
    after = groups_of(calibrate(build(set(flips), extra)))
    for key, group in before.items():
        assert key in after
        assert bound(after[key]) >= bound(group) - 1e-12, key


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 500), more=st.integers(1, 500))
def test_weight_grows_with_sample_size(n, more):
    assert 0 < weight(n) < weight(n + more) < 1


def test_confidence_grows_with_the_groups_sample_size():
    rng = np.random.default_rng(3)
    rows = synthetic(rng, 120, 0.1, 0.6)
    confidences = [calibrate(frame(rows[:n])).groups[0].confidence for n in (5, 10, 19, 40, 120)]
    assert confidences == sorted(confidences) and len(set(confidences)) == 5
    assert confidences[2] >= 0.7 > confidences[1]  # 19 clean samples reach the default threshold
