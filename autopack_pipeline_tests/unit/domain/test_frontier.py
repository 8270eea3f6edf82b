"""The frontier of a group on constructed ratios, every figure computed by hand in the comments."""

import numpy as np
import pytest

from autopack_pipeline.domain.analysis import wilson_interval
from autopack_pipeline.domain.analysis.order_statistics import p90_of
from autopack_pipeline.domain.analysis.rates import wilson_highs
from autopack_pipeline.domain.frontier import frontier_grid, group_frontier, observations_needed

# 49 clean ratios 0.1, 0.2, ..., 4.9 (exactly i / 10) and one truncated call: N = 50.
RATIOS = np.arange(1, 50) / 10


def test_grid_counts_and_wastes_by_hand():
    grid = frontier_grid(RATIOS, 1, multipliers=(1.0, 2.0), margins=(1.0, 1.5))
    # Underestimation: r > 1.1 -> 1.2..4.9 = 38, r > 2.2 -> 2.3..4.9 = 27; plus the censored call.
    assert grid.under_count.tolist() == [39, 28]
    # Truncation: r > 1.0 -> 39, r > 1.5 -> 34, r > 2.0 -> 29, r > 3.0 -> 19; plus the censored call.
    assert grid.truncation_count.tolist() == [[40, 35], [30, 20]]
    # Budget 3x prediction fits r <= 3.0 (30 calls). P90 of 3 / r over 30 values: n + 1 = 31,
    # j = 9 * 31 // 10 = 27, delta = 279 - 270 = 9; ascending values 26 and 27 are 3/0.4 = 7.5 and 3/0.3 = 10:
    # (7.5 * 1 + 10 * 9) / 10 = 9.75.
    assert grid.budget_waste_p90[1, 1] == pytest.approx(9.75)
    assert grid.budget_waste_p90[1, 1] == pytest.approx(p90_of(3.0 / RATIOS[RATIOS <= 3.0]))
    # Prediction waste at m = 2: P90 of 2 / r over 49 values: j = 45, delta 0 -> ascending value 44 = 2 / 0.5.
    assert grid.prediction_waste_p90[1] == pytest.approx(4.0)
    document = grid.to_dict()
    assert document["underestimation_pct"] == [78.0, 56.0]
    assert document["truncation_pct"][1] == [60.0, 40.0]


def test_cheapest_point_and_tier2_conflict_by_hand():
    frontier = group_frontier(RATIOS, 1)
    # Underestimation <= 5% of 50 allows 2 above 1.1 m; the censored call is one, so 1 clean ratio may
    # exceed: 1.1 m >= 4.8 -> m = 4.8 / 1.1 = 4.3636 -> 4.364 (rounded up).
    assert frontier.multiplier == 4.364
    # Truncation <= 2% of 50 allows 1, the censored call: b m >= 4.9 -> b = 4.9 / 4.364 = 1.1228 -> 1.123.
    assert frontier.margin == 1.123
    assert (frontier.underestimation.count, frontier.underestimation.pct) == (2, 4.0)
    assert (frontier.truncation.count, frontier.truncation.pct) == (1, 2.0)
    assert frontier.underestimation.ci == wilson_interval(2, 50)
    # Prediction waste P90 = 4.364 / 0.5; budget waste P90 = 4.364 * 1.123 / 0.5 (all 49 clean calls fit).
    assert frontier.prediction_waste_p90 == pytest.approx(8.728)
    assert frontier.budget_waste_p90 == pytest.approx(4.364 * 1.123 / 0.5)
    assert frontier.tier2_holds is False
    verdict = frontier.verdict()
    assert "Tier 1 needs budget waste P90 9.80x here; Tier 2 asks < 3x; Tier 1 wins" in verdict
    # 2/50 and 1/50 have Wilson upper bounds 13.5% and 10.5%: not certified. With the censored call
    # staying above, 1 of n reaches a 2% upper bound first at n = 280 (and 5% much earlier).
    assert not frontier.certified
    assert frontier.observations_needed == 280
    assert wilson_interval(1, 280)[1] <= 2.0 < wilson_interval(1, 279)[1]
    assert "about 280 observations" in verdict


def test_tight_group_meets_both_tiers_but_is_not_certified_on_20_calls():
    frontier = group_frontier(np.ones(20), 0)
    # m = 1 / 1.1 = 0.909 -> 0.910; b = 1 / 0.91 = 1.0989 -> 1.099; budget 1.00009x prediction.
    assert (frontier.multiplier, frontier.margin) == (0.91, 1.099)
    assert frontier.budget_waste_p90 == pytest.approx(0.91 * 1.099)
    assert frontier.tier2_holds is True
    assert "Tier 2 holds at the same time" in frontier.verdict()
    # 0 of 20: Wilson upper bound 3.84 / 23.84 = 16.1%; 0 of n reaches 2% at n = 189 (5%: 73).
    assert frontier.observations_needed == 189
    assert observations_needed(0, 5.0) == 73


def test_one_outlier_moves_the_budget_not_the_prediction():
    frontier = group_frontier(np.r_[np.full(19, 1.0), 2.0], 0)
    # 5% of 20 lets the outlier (2.0) stay underestimated: m = 1 / 1.1 -> 0.910. 2% of 20 allows no
    # truncation: b m >= 2 -> b = 2 / 0.91 = 2.1978 -> 2.198.
    assert (frontier.multiplier, frontier.margin) == (0.91, 2.198)
    # Budget waste P90 over 20 values is 0.91 * 2.198 / r at ascending 17 and 18 (delta 9): both r = 1.
    assert frontier.budget_waste_p90 == pytest.approx(0.91 * 2.198)


def test_margin_never_below_the_minimum():
    # Tier 1 alone needs b m >= 1 with m = 0.91 (b = 1.099); a minimum margin of 1.5 wins.
    assert group_frontier(np.full(20, 1.0), 0, min_margin=1.5).margin == 1.5


def test_too_many_censored_is_out_of_reach_with_the_count_needed():
    frontier = group_frontier(np.ones(20), 3)
    # 3 of 23 truncated (13%) count above every candidate; 2% of 23 allows none.
    assert not frontier.reachable and frontier.multiplier is None
    assert frontier.observations_needed == observations_needed(3, 2.0, at_least=24)
    assert wilson_interval(3, frontier.observations_needed)[1] <= 2.0
    assert "3 of 23 observations (13.0%) were truncated" in frontier.verdict()
    document = frontier.to_dict()
    assert document["reachable"] is False and document["tier2_holds"] is None


def test_a_group_of_truncated_calls_only_is_out_of_reach_not_an_error():
    # No clean ratio at all (every call hit its budget): nothing to put a frontier through.
    frontier = group_frontier(np.array([]), 4)
    assert not frontier.reachable and frontier.multiplier is None
    assert frontier.observations_needed == observations_needed(4, 2.0, at_least=5)

def test_censored_calls_never_make_a_group_look_better():
    clean = np.linspace(0.5, 2.0, 60)
    without = group_frontier(clean, 0)
    with_one = group_frontier(clean, 1)
    assert with_one.multiplier >= without.multiplier
    assert with_one.budget_multiple >= without.budget_multiple


def test_rejects_non_positive_ratios():
    with pytest.raises(ValueError, match="positive and finite"):
        group_frontier(np.array([1.0, 0.0]), 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_grid_is_each_figure_computed_alone_to_the_bit(seed):
    """Every cell of the grid's wastes and Wilson upper ends is the very float the one-figure functions
    give (``p90_of`` of the fitting calls' wastes, ``wilson_interval`` of each count): the whole-grid
    passes change no bit of the report."""
    rng = np.random.default_rng(seed)
    ratios = np.sort(np.exp(rng.normal(0.0, 0.6, 137)))
    grid = frontier_grid(ratios, 3)
    document = grid.to_dict()
    for i, m in enumerate(grid.multipliers):
        assert grid.prediction_waste_p90[i] == p90_of(m / ratios)
        assert document["underestimation_ci_high"][i] == wilson_interval(int(grid.under_count[i]), 140)[1]
        for j, b in enumerate(grid.margins):
            fitting = ratios[ratios <= m * b]
            waste = grid.budget_waste_p90[i, j]
            assert (np.isnan(waste) and not len(fitting)) or waste == p90_of(m * b / fitting)
            assert document["truncation_ci_high"][i][j] == wilson_interval(int(grid.truncation_count[i, j]), 140)[1]
    counts = np.r_[np.arange(0, 141), 140]
    assert [float(v) for v in wilson_highs(counts, 140)] == [wilson_interval(int(k), 140)[1] for k in counts]
