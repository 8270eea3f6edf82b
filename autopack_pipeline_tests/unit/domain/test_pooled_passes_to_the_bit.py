"""The pooled passes' shortcuts give the very figures of the plain computations they replace, bit for bit."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

from autopack_pipeline.domain.analysis.coverage_calibration import CoverageGroup
from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.binomial import Binomial
from autopack_pipeline.domain.budget_calibration import pooled_margins
from autopack_pipeline.domain.coverage_factor import ceiling_order_statistic, factor_lower_bound, own_coverage_factor
from autopack_pipeline.domain.frontier import group_frontier
from autopack_pipeline.domain.group_observations import GroupObservationsInForce, observations_in_force
from autopack_pipeline.domain.group_shape import CENSORED_HEADROOM, group_shape
from autopack_pipeline.domain.pooled_margin import CHECK_ALPHA, own_tail_contradicts
from autopack_pipeline.domain.pooled_scores import PooledScores, _running_total, _upto_each


def test_a_running_total_is_zero_then_numpys_cumsum():
    rng = np.random.default_rng(5)
    # Magnitudes far apart: a sum in any other order rounds differently.
    floats = rng.standard_normal(5000) * 10.0 ** rng.integers(-8, 9, 5000)
    assert np.array_equal(_running_total(floats, np.float64), np.r_[0.0, np.cumsum(floats)])
    flags = rng.random(3000) < 0.3
    assert np.array_equal(_running_total(flags, np.int64), np.r_[0, np.cumsum(flags)])
    assert np.array_equal(_running_total(np.zeros(0), np.float64), np.zeros(1))


@pytest.mark.parametrize("length", [0, 1, 40, 99, 100, 101, 150, 299, 300, 2000])
def test_counts_up_to_sorted_values_are_a_search_per_value_on_either_path(length):
    """_upto_each places a run much shorter than the values among them (below a third of their number)
    and searches each value in a longer one: both give every count a search of each value would."""
    rng = np.random.default_rng(length)
    values = np.sort(rng.integers(0, 60, 300).astype(float))  # ties, and runs sharing values
    runs = [np.sort(rng.integers(-5, 66, length).astype(float)), np.sort(rng.integers(0, 60, 7).astype(float))]
    want = sum(np.searchsorted(run, values, side="right") for run in runs)
    assert np.array_equal(_upto_each(runs, values), want)


def _own_tail_by_two_lookups(shape, margin, target_pct, survival):
    """own_tail_contradicts as it was: the ceilings' scores and the margin's asked of the estimate apart."""
    line = math.log(margin)
    above = float(shape.clean_above(line))
    bounds = shape.censored_logs
    below = survival((bounds - shape.location) / shape.scale)
    beyond = survival(np.array([(line - shape.location) / shape.scale]))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        chance = np.where(below <= 0, 1.0, np.minimum(1.0, beyond / below))
    passed = np.where(bounds >= line, 1.0, chance)
    above = float(np.add.accumulate(np.r_[above, passed])[-1])
    n = len(shape.log_ratios) + shape.censored
    count = math.ceil(above - 1e-9)
    p = Binomial(n, target_pct / 100).sf(count - 1) if count else 1.0
    return p < CHECK_ALPHA, above, p


@pytest.mark.parametrize("truncated", [3, 1023, 1024, 1500])
def test_the_own_tail_check_reads_the_estimate_as_two_lookups_did(truncated):
    """One look-up of the ceilings' and the margin's scores together: the same calls above and the same p,
    to the bit, on either side of the estimate's sorted look-up (1024 points)."""
    rng = np.random.default_rng(truncated)
    shapes = [group_shape((f"g{i}", "low"), np.exp(rng.standard_t(4, 20000 if i == 0 else 3000) * 0.3),
                          np.exp(rng.standard_normal(truncated if i == 0 else 40) * 0.3 + 0.2)) for i in range(3)]
    survival = PooledScores.of(shapes).survival
    for margin in (1.05, 1.4, 2.2):
        got = own_tail_contradicts(shapes[0], margin, 2.0, survival)
        assert got == _own_tail_by_two_lookups(shapes[0], margin, 2.0, survival)


def test_the_order_statistic_index_is_the_exact_rank_for_every_target():
    # 2.3 as a float is below 2.3: (999 + 1) x its fraction passes 977, where the exact rank is 977.
    for target in (5, 5.0, 2.0, 2.3, 1.3, 3.061224489795918, 0.1, 10.0, 5.0):  # 5.0 again: a kept fraction
        for n in (0, 1, 18, 19, 99, 100, 999, 474416, 10**7):
            assert order_statistic_index(n, target) == math.ceil((n + 1) * (1 - Fraction(str(target)) / 100))


@pytest.mark.parametrize("truncated", [0, 1, 7, 300])
def test_truncated_calls_scores_are_each_folds_place_applied_by_mask(truncated):
    """The truncated calls' scores (plain, at the headroom, rescaled) gather each call's fold's place: the
    figures of a mask per fold, ``(log bound + shift - fold's location) / fold's scale``."""
    rng = np.random.default_rng(truncated)
    shape = group_shape(("a", "low"), np.exp(rng.standard_t(4, 4000) * 0.3), np.exp(rng.standard_normal(truncated) * 0.3))
    for current in (shape, shape.rescaled(1.37)):
        for shift, got in ((0.0, current.plain_censored_scores), (math.log(CENSORED_HEADROOM), current.headroom_scores)):
            want = np.empty(truncated)
            for fold, (location, scale) in enumerate(current._fold_places):
                mine = current._censored_folds == fold
                want[mine] = (current.censored_logs[mine] + shift - location) / scale
            assert np.array_equal(got, want)
            assert np.array_equal(current.scores(shift)[1], want)


def _coverage_group(rng, key, clean: int, cut: int) -> CoverageGroup:
    """A coverage group of integer token counts, with ties among its ratios (as stored counts have)."""
    predicted = rng.integers(200, 4000, clean + cut).astype(float)
    actual = np.maximum(1.0, np.round(predicted * np.exp(rng.standard_t(5, clean + cut) * 0.35)))
    ceiling = np.round(predicted[clean:] * 1.3)
    return CoverageGroup(key=key, clean_rows=np.arange(clean), censored_rows=np.arange(clean, clean + cut),
                         predicted=predicted[:clean], actual=actual[:clean], budget=np.round(predicted[:clean] * 1.3),
                         censored_predicted=predicted[clean:], censored_actual=ceiling,
                         ratios=actual[:clean] / predicted[:clean], bounds=ceiling / predicted[clean:])


def test_a_groups_ratios_sorted_once_give_each_reader_the_figures_of_its_own_sort():
    """The frontier, the own coverage factor and a pooled pass at factor 1 read CoverageGroup.ratios_ascending
    instead of sorting the ratios themselves: the very figures, to the bit."""
    rng = np.random.default_rng(17)
    groups = [_coverage_group(rng, (f"c{i}", "low"), clean, cut)
              for i, (clean, cut) in enumerate([(3000, 40), (800, 0), (150, 9), (40, 2), (20000, 900)])]
    shared = [observations_in_force(g) for g in groups]
    assert all(o.ratios_ascending is not None for o in shared)
    plain = [dataclasses.replace(o, ratios_ascending=None) for o in shared]
    assert [own_coverage_factor(o) for o in shared] == [own_coverage_factor(o) for o in plain]
    for factors in ({}, {("c2", "low"): 1.2}):  # a group at factor 1 reads the sorted ratios, one scaled does not
        margins = pooled_margins(shared, factors)
        assert ("c2", "low") in margins and margins == pooled_margins(plain, factors)
    for g in groups:
        assert (group_frontier(g.ratios_ascending, len(g.censored_rows), ascending=True).to_dict()
                == group_frontier(g.ratios, len(g.censored_rows)).to_dict())


@pytest.mark.parametrize("cut_share", [0.0, 0.05, 0.3, 0.9])
def test_the_ceiling_order_statistic_of_sorted_ratios_is_the_partitions(cut_share):
    """The k-th of the clean ratios and the ceilings, merged from the sorted ratios, is the partition's, whether
    it falls on a clean ratio or on a ceiling (ties between the two included); the largest ratio too."""
    rng = np.random.default_rng(int(cut_share * 100))
    for size in (1, 7, 60, 2500):
        cut = int(size * cut_share)
        # Ratios of 0.1 to 2.9 and ceilings of 0.5 to 3.9 predictions, in tenths: ties within and between.
        predicted = rng.integers(1, 40, size).astype(float) * 100
        actual = predicted * rng.integers(1, 30, size) / 10
        ceilings = rng.integers(5, 40, cut) * 200.0
        group = GroupObservationsInForce("c", "low", predicted, actual, np.full(cut, 2000.0), ceilings,
                                         np.sort(actual / predicted))
        plain = dataclasses.replace(group, ratios_ascending=None)
        assert ceiling_order_statistic(group) == ceiling_order_statistic(plain)
        assert factor_lower_bound(group) == factor_lower_bound(plain)


def test_the_folds_of_ranks_are_those_hashed_for_each_size_whatever_sizes_came_before(monkeypatch):
    """Every group size reads views of one list of each fold's ranks (computed for the largest size asked):
    the ranks and bounds a stable sort of that size's own hashed folds gives, whichever sizes were asked first."""
    from autopack_pipeline.domain import group_shape as module

    monkeypatch.setattr(module, "_FOLD_RANKS", [(0, ())])
    monkeypatch.setattr(module, "_FOLD_REACH_FROM", 64)
    for n in (0, 1, 5, 63, 64, 65, 1000, 7, 70000, 129, 70001):
        folds = module._hashed_folds(np.arange(n, dtype=np.uint64), 0)
        want = np.argsort(folds, kind="stable")
        got = module._rank_folds(n)
        assert np.array_equal(np.concatenate(got.per_fold), want)
        assert np.array_equal(got.bounds, np.r_[0, np.cumsum(np.bincount(folds, minlength=module.FOLDS))])
        assert all(np.array_equal(got.ranks_in(f), want[got.bounds[f]:got.bounds[f + 1]]) for f in range(module.FOLDS))
