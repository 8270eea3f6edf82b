"""The oracle a loop round is judged against, on constructed examples."""

from __future__ import annotations

import numpy as np
import pytest

from autopack_pipeline.domain.oracle import (
    budget_waste_with,
    carried_oracle,
    oracle_budget_waste,
    oracle_multiplier,
    oracle_multipliers,
)


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


def test_the_previous_rounds_oracle_applied_to_this_round():
    # Previous round, predictions already in this round's coefficients. a: 50 calls predicted 100, actuals
    # 100, 102, ..., 198, the first truncated at its cut (ratio 1.00, counted above every multiplier): the
    # 49th smallest of 1.02 .. 1.98 and +inf is 1.98. b: 10 calls predicted 200, actual 100: 0.5.
    previous = (np.array(["a"] * 50 + ["b"] * 10, dtype=object), np.r_[np.full(50, 100.0), np.full(10, 200.0)],
                np.r_[100.0 + 2 * np.arange(50), np.full(10, 100.0)], np.r_[True, np.zeros(59, dtype=bool)])
    # This round: a predicted 50, actuals 50, 55, ..., 95 (the last truncated); b predicted 100, actual 60;
    # c, a group the previous round did not have.
    groups = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 2, dtype=object)
    predicted = np.r_[np.full(10, 50.0), np.full(10, 100.0), np.full(2, 10.0)]
    actual = np.r_[50.0 + 5 * np.arange(10), np.full(10, 60.0), np.full(2, 10.0)]
    truncated = np.zeros(22, dtype=bool)
    truncated[9] = True
    own = oracle_budget_waste(groups, predicted, actual, truncated)
    carried = carried_oracle(previous, groups, predicted, actual, truncated, own)
    assert carried.groups["a"].multiplier == pytest.approx(1.98) and carried.groups["b"].multiplier == pytest.approx(0.5)
    # Budgets 1.98 x 50 = 99 and 0.5 x 100 = 50; c has none and stays out of the P90.
    assert carried.budgets[:20].tolist() == [99.0] * 10 + [50.0] * 10 and np.isnan(carried.budgets[20:]).all()
    import statistics
    waste = np.r_[99.0 / actual[:10], np.full(10, 50.0 / 60.0)]
    assert carried.budget_waste_p90 == pytest.approx(statistics.quantiles(waste.tolist(), n=10)[8]) == pytest.approx(1.785)
    # This round's own oracle: a x1.9 (censored: the rank falls on the truncated call), b x0.6, c x1.0.
    assert own.budget_waste_p90 == pytest.approx(1.6840909, rel=1e-6)
    assert carried.ratio == pytest.approx(1.785 / 1.6840909, rel=1e-6)
    assert (carried.budgeted, carried.without_multiplier) == (20, 2)
    # Over budget: every b call (60 > 50) and a's truncated call (95 < 99, but its length is unknown).
    assert carried.over_budget == 11


def test_the_oracle_is_its_own_rounds_multipliers_applied_with_the_same_rule():
    rng = np.random.default_rng(5)
    groups = rng.choice(np.array(["x", "y", "z"], dtype=object), 300)
    predicted = rng.uniform(50, 500, 300)
    actual = predicted * rng.lognormal(0, 0.4, 300)
    truncated = rng.random(300) < 0.03
    own = oracle_budget_waste(groups, predicted, actual, truncated)
    assert own.groups == oracle_multipliers(groups, predicted, actual, truncated)
    budgets, waste_p90 = budget_waste_with(own.groups, groups, predicted, actual)
    assert np.array_equal(budgets, own.budgets, equal_nan=True) and waste_p90 == own.budget_waste_p90
    # A round carried onto itself is its own oracle.
    itself = carried_oracle((groups, predicted, actual, truncated), groups, predicted, actual, truncated, own)
    assert itself.budget_waste_p90 == own.budget_waste_p90 and itself.ratio == 1.0
