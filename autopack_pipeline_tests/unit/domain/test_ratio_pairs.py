"""A group's distinct token pairs give the very sorted ratios, and the very pooled margins, of every call's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autopack_pipeline.domain.analysis.coverage_calibration import CoverageGroup
from autopack_pipeline.domain.budget_calibration import _censored_margin, pooled_margins
from autopack_pipeline.domain.group_observations import RatioPairs, observations_in_force, scaled_ratios


def _tokens(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer token counts with repeated pairs and equal ratios of different pairs (100/200 and 50/100)."""
    predicted = rng.integers(1, 60, n).astype(float) * 50
    actual = np.maximum(1.0, np.round(predicted * np.exp(rng.standard_normal(n) * 0.4) / 25) * 25)
    return predicted, actual


@pytest.mark.parametrize("n", [1, 2, 500, 20000])
def test_pairs_give_np_sort_of_every_calls_quotient(n):
    rng = np.random.default_rng(n)
    predicted, actual = _tokens(rng, n)
    predicted[:1] = 0.0  # a zero prediction: an infinite ratio
    pairs = RatioPairs.of(predicted, actual)
    assert pairs is not None and int(pairs.counts.sum()) == n
    with np.errstate(divide="ignore"):
        assert np.array_equal(pairs.ascending_ratios(), np.sort(actual / predicted))
        for factor in (1.0, 0.731, 1.0734, 3.3):
            assert np.array_equal(pairs.ascending_scaled(factor), np.sort(actual / (predicted * factor)))


@pytest.mark.parametrize("change", ["fraction", "nan", "negative", "zero actual", "too large"])
def test_counts_that_are_not_whole_positive_and_small_give_no_pairs(change):
    predicted, actual = _tokens(np.random.default_rng(3), 100)
    if change == "fraction":
        actual[5] += 0.5
    elif change == "nan":
        predicted[7] = np.nan
    elif change == "negative":
        predicted[7] = -100.0
    elif change == "zero actual":
        actual[9] = 0.0
    else:
        actual[9] = 2.0**31
    assert RatioPairs.of(predicted, actual) is None


def test_a_groups_pooled_margins_and_censored_margin_are_those_of_every_calls_quotient():
    """The pooled passes (factor 1 and scaled) and an unidentifiable group's margin read the pairs where the group
    has them: the same figures, to the bit, as from the calls themselves."""
    rng = np.random.default_rng(29)
    groups = []
    for i, (clean, cut) in enumerate([(9000, 60), (5000, 2600), (700, 10), (12000, 300)]):
        predicted, actual = _tokens(rng, clean + cut)
        ceiling = np.round(predicted[clean:] * 1.3)
        groups.append(CoverageGroup(
            key=(f"c{i}", "low"), clean_rows=np.arange(clean), censored_rows=np.arange(clean, clean + cut),
            predicted=predicted[:clean], actual=actual[:clean], budget=np.round(predicted[:clean] * 1.3),
            censored_predicted=predicted[clean:], censored_actual=ceiling,
            ratios=actual[:clean] / predicted[:clean], bounds=ceiling / predicted[clean:]))
    with_pairs = [observations_in_force(g) for g in groups]
    assert [o.ratio_pairs is not None for o in with_pairs] == [True, True, False, True]  # 700 calls: too few
    plain = [dataclasses.replace(o, ratio_pairs=None) for o in with_pairs]
    for factors in ({}, {("c0", "low"): 1.21, ("c1", "low"): 0.87, ("c3", "low"): 1.0434}):
        assert pooled_margins(with_pairs, factors) == pooled_margins(plain, factors)
    for factor in (1.0, 1.37):
        for fast, slow in zip(with_pairs, plain):
            got, ascending = scaled_ratios(fast, factor)
            assert ascending == (fast.ratio_pairs is not None)
            assert np.array_equal(np.sort(got), np.sort(scaled_ratios(slow, factor)[0]))
            assert _censored_margin(fast, factor, 40) == _censored_margin(slow, factor, 40)


@pytest.mark.parametrize("shape", ["few predictions", "wide predictions", "wide actuals", "both wide"])
def test_distinct_pairs_counted_in_a_table_or_sorted_are_np_uniques(shape):
    """The distinct (predicted, actual) keys and their counts, from a table of cells where the values allow it,
    else from np.unique: np.unique's either way."""
    from autopack_pipeline.domain.group_observations import _distinct_pairs

    rng = np.random.default_rng(len(shape))
    n = 30000
    predicted = {"few predictions": rng.choice([3998, 4500, 9000, 22068], n),
                 "wide predictions": rng.integers(0, 2**31 - 1, n),
                 "wide actuals": rng.integers(100, 5000, n),
                 "both wide": rng.integers(0, 2**30, n)}[shape].astype(np.int64)
    actual = (rng.integers(1, 2**31 - 1, n) if shape in ("wide actuals", "both wide")
              else np.maximum(1, predicted // 3 + rng.integers(-200, 200, n))).astype(np.int64)
    actual[: n // 3] = actual[n // 3: 2 * (n // 3)]  # repeated pairs
    predicted[: n // 3] = predicted[n // 3: 2 * (n // 3)]
    want = np.unique((predicted << 32) | actual, return_counts=True)
    got = _distinct_pairs(predicted.astype(np.int32), actual.astype(np.int32))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
