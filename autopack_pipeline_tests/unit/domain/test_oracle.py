"""The oracle a loop round is judged against, on constructed examples."""

from __future__ import annotations

import numpy as np
import pytest

from autopack_pipeline.domain.oracle import oracle_budget_waste, oracle_multiplier


def test_the_multiplier_is_the_nearest_rank_98th_percentile_of_actual_over_predicted():
    # 50 calls with ratios 0.02, 0.04, ..., 1.00: ceil(0.98 * 50) = 49 -> the 49th smallest, 0.98.
    ratios = np.arange(1, 51) / 50
    group = oracle_multiplier(ratios, np.zeros(50, dtype=bool))
    assert group.multiplier == pytest.approx(0.98) and not group.censored


def test_truncated_calls_count_above_every_multiplier():
    ratios = np.arange(1, 51) / 50
    truncated = np.zeros(50, dtype=bool)
    truncated[0] = True  # the smallest ratio was a truncated call: it moves to the top
    assert oracle_multiplier(ratios, truncated).multiplier == pytest.approx(1.0)
    truncated[:2] = True  # two of 50 above every multiplier: the rank falls on one, no finite multiplier covers it
    group = oracle_multiplier(ratios, truncated)
    # The percentile is only bounded below: with the two truncated calls at their ceilings (0.02, 0.04),
    # the 49th smallest of all 50 is 0.98, and their real lengths can only raise it.
    assert group.censored and group.multiplier == pytest.approx(0.98)


def test_a_censored_group_is_not_given_less_than_the_ceilings_its_truncated_calls_passed():
    # 48 clean calls at 0.02 .. 0.96 and two truncated at ceilings 1.5 and 2.0 (their output at the cut /
    # predicted). The rank, ceil(0.98 * 50) = 49, falls on a truncated call. The largest clean ratio, 0.96,
    # would budget the first truncated call below the 1.5 it is known to have passed; the 49th smallest of
    # the clean and ceiling ratios together is 1.5, a lower bound of the real percentile.
    ratios = np.r_[np.arange(1, 49) / 50, 1.5, 2.0]
    truncated = np.r_[np.zeros(48, dtype=bool), True, True]
    group = oracle_multiplier(ratios, truncated)
    assert group.censored and group.observations == 50
    assert group.multiplier == pytest.approx(sorted(ratios.tolist())[48]) == pytest.approx(1.5)
    assert group.multiplier > ratios[~truncated].max()
    # Stored in another order, the same answer.
    order = np.random.default_rng(3).permutation(50)
    assert oracle_multiplier(ratios[order], truncated[order]).multiplier == pytest.approx(1.5)


def test_budgets_are_proportional_to_the_predictions_and_the_waste_p90_is_over_the_round():
    # Two groups of 10 calls. a: predictions 100, actuals 100..190 -> multiplier 1.9 (10th of 10);
    # b: predictions 1000, actuals 500 each -> multiplier 0.5, waste 1.0 for every call.
    groups = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    predicted = np.r_[np.full(10, 100.0), np.full(10, 1000.0)]
    actual = np.r_[100.0 + 10 * np.arange(10), np.full(10, 500.0)]
    oracle = oracle_budget_waste(groups, predicted, actual, np.zeros(20, dtype=bool))
    assert oracle.groups["a"].multiplier == pytest.approx(1.9) and oracle.groups["b"].multiplier == pytest.approx(0.5)
    assert oracle.budgets[0] == pytest.approx(190.0) and oracle.budgets[10] == pytest.approx(500.0)
    waste = np.r_[190.0 / actual[:10], np.ones(10)]
    import statistics
    assert oracle.budget_waste_p90 == pytest.approx(statistics.quantiles(waste.tolist(), n=10)[8])
