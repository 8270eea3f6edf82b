"""Budget margins from the pooled tail shape: location and upper spread per group, one pooled bound,
truncated calls as right-censored scores, and each group's own calls able to refuse the pooled margin."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, norm
from scipy.stats import t as t_dist

from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.analysis.retries import RetryOutcomes
from autopack_pipeline.domain.analysis.samples import stable_order
from autopack_pipeline.domain.budget_calibration import pooled_margins
from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.group_shape import CENSORED_HEADROOM, FOLDS, folds_of, group_shape
from autopack_pipeline.domain.pooled_margin import (
    CONFIDENCE,
    PooledScores,
    confident_rank,
    first_call_target,
    kaplan_meier,
    kaplan_meier_point,
    own_tail_contradicts,
    pooled_bound,
    pooled_group_margins,
    retry_cut_chance,
)
from autopack_pipeline.domain.targets import FACTOR_PHASE_TARGET_PCT
from autopack_pipeline_tests.support.group_observations import CoverageGroupSlice, observations

pytestmark = pytest.mark.unit

# One tail shape: 80 evenly spaced quantiles of a standard normal, on the log scale.
SHAPE = norm.ppf((np.arange(80) + 0.5) / 80)



def test_kaplan_meier_is_the_empirical_cdf_without_censoring_and_moves_a_censored_share_to_the_right():
    points, cdf = kaplan_meier(np.array([3.0, 1.0, 2.0, 4.0]), np.zeros(0))
    assert points.tolist() == [1, 2, 3, 4] and cdf.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # 2 is censored: its quarter is shared by 3 and 4 (S = 3/4 x 1/2 after 3, 0 after 4).
    points, cdf = kaplan_meier(np.array([1.0, 3.0, 4.0]), np.array([2.0]))
    assert points.tolist() == [1, 3, 4] and cdf.tolist() == pytest.approx([0.25, 0.625, 1.0])
    # A censored value tied with a clean one counts as still at risk there (clean first).
    _, tied = kaplan_meier(np.array([1.0, 2.0]), np.array([1.0]))
    assert tied.tolist() == pytest.approx([1 / 3, 1.0])


def test_the_rank_covers_the_target_with_the_stated_confidence_and_never_below_the_conformal_one():
    k = confident_rank(1000, 2.0)
    assert binom.cdf(k - 1, 1000, 0.98) >= CONFIDENCE > binom.cdf(k - 2, 1000, 0.98)
    assert k > order_statistic_index(1000, 2.0) == 981
    # 98% with 90% confidence needs at least 114 values (0.98 ** 114 < 0.1): none of 80 reaches it.
    assert confident_rank(80, 2.0) == 81 and confident_rank(114, 2.0) == 114


def test_without_truncations_the_pooled_bound_is_an_order_statistic_of_the_cross_fitted_scores():
    shapes = [group_shape((f"g{i}", "low"), np.exp(0.3 * i + (0.2 + 0.1 * i) * SHAPE), np.zeros(0))
              for i in range(4)]
    q, k, m = pooled_bound(shapes, 2.0)
    scores = np.sort(np.concatenate([s.scores()[0] for s in shapes]))
    assert m == 320 and k == confident_rank(320, 2.0) == 318
    assert q == pytest.approx(scores[k - 1])
    # Same shape, other place and spread: each group's margin is exp(location + scale x q), so the
    # same share of each group lies above it.
    above = {int((shape.log_ratios > math.log(shape.margin(q)) + 1e-9).sum()) for shape in shapes}
    assert len(above) == 1 and above.pop() <= 2
    # Too small a pool for the confidence: no pooled bound (each group keeps its own rule).
    assert pooled_bound(shapes[:1], 2.0) is None


def test_cross_fitted_scores_place_each_call_against_the_others():
    # Calls are dealt into 5 folds by a hash of their rank; a call of fold 0 is scored with the median
    # and the 90th-percentile spread of the calls outside fold 0 (nearest rank), not with its own group's.
    logs = 0.3 * SHAPE[::4]  # 20 calls
    shape = group_shape(("a", "low"), np.exp(logs), np.zeros(0))
    mine = folds_of(shape.log_ratios) == 0
    others = np.sort(shape.log_ratios[~mine])
    n = len(others)
    assert 0 < mine.sum() < 20
    median, upper = others[math.ceil(0.5 * n) - 1], others[math.ceil(0.9 * n) - 1]
    assert shape.scores()[0][mine] == pytest.approx((shape.log_ratios[mine] - median) / (upper - median))
    assert shape.location == pytest.approx(np.sort(logs)[9]) and shape.scale == pytest.approx(
        np.sort(logs)[17] - np.sort(logs)[9])


def test_folds_follow_the_calls_not_their_storage_order():
    # Collection threads store calls in any order; the same calls must give the same bound.
    rng = np.random.default_rng(3)
    logs = [0.1 * i + 0.3 * rng.standard_t(3, 80) for i in range(4)]
    cut = [np.exp(np.sort(g)[-3:] - 0.05) for g in logs]  # three truncated calls per group
    shapes = [group_shape((f"g{i}", "low"), np.exp(g), c) for i, (g, c) in enumerate(zip(logs, cut))]
    shuffled = [group_shape((f"g{i}", "low"), np.exp(rng.permutation(g)), rng.permutation(c))
                for i, (g, c) in enumerate(zip(logs, cut))]
    assert pooled_bound(shapes, 2.0) == pooled_bound(shuffled, 2.0)
    for a, b in zip(shapes, shuffled):
        assert np.sort(a.scores()[0]) == pytest.approx(np.sort(b.scores()[0]))
    # Every fold is used, about evenly, and not in rank order (each fold spans the group's range).
    folds = folds_of(np.concatenate(logs))
    assert np.bincount(folds, minlength=FOLDS).min() > 320 / FOLDS / 2
    assert not np.array_equal(folds[np.argsort(np.concatenate(logs))], np.arange(320) % FOLDS)
    # A constant shift of a group's log ratios (a factor on its predictions) leaves its folds.
    assert np.array_equal(folds_of(logs[0]), folds_of(logs[0] - 0.4))


def test_a_thin_group_gets_the_pooled_point_its_own_calls_are_too_few_to_show():
    # Three groups of 80 and a thin one of 20 drawn from the same shape: alone, the thin group's 98%
    # bound needs 49 calls and its rule takes the largest of 20 ratios, which covers about 95% of
    # new calls; pooled, it gets the shape's 98% point, above that maximum.
    observed = [observations((f"g{i}", "low"), 0.1 * i + 0.3 * SHAPE) for i in range(3)]
    thin = 0.3 * SHAPE[2::4]
    observed.append(observations(("thin", "low"), thin))
    chosen = pooled_margins(observed, {})
    assert set(chosen) == {("g0", "low"), ("g1", "low"), ("g2", "low"), ("thin", "low")}
    assert chosen[("thin", "low")][0] > math.exp(thin.max())
    assert chosen[("g0", "low")][0] < 1.1 * math.exp(0.3 * SHAPE.max())


def test_truncations_beyond_what_the_rank_absorbs_still_leave_a_bound_from_the_clean_calls_above_them():
    # 200 clean scores and 10 calls truncated low in the distribution (M - k = 4 would be absorbed):
    # counted as +infinity no bound exists; as censored, their share goes to the clean calls above.
    shapes = [group_shape(("a", "low"), np.exp(0.3 * np.r_[SHAPE, SHAPE, SHAPE[::2]]), np.full(10, 1.0))]
    q, k, m = pooled_bound(shapes, 2.0)
    assert m - k < 10 and math.isfinite(q)
    clean = np.sort(shapes[0].scores()[0])
    assert clean[-int(0.02 * len(clean)) - 2] <= q <= clean[-1]
    # Too few values for the rank at all: no bound.
    assert pooled_bound([group_shape(("b", "low"), np.exp(0.3 * SHAPE), np.full(5, 1e6))], 2.0) is None


def test_the_bound_is_capped_by_the_truncated_calls_taken_at_their_ceilings_with_headroom():
    # 240 clean calls, one far outlier (x20), and 12 calls truncated near the top of the clean ones:
    # Kaplan-Meier hands their share to the few clean calls above them, and its 98% point lands on
    # the outlier. The cap, every truncated call at 1.25x its ceiling, keeps the bound near them.
    logs = 0.3 * np.r_[SHAPE, SHAPE, SHAPE]
    logs[np.argmax(logs)] = math.log(20.0)
    shape = group_shape(("a", "low"), np.exp(logs), np.full(12, math.exp(0.3 * SHAPE[-3])))
    clean, censored = shape.scores()
    points, cdf = kaplan_meier(clean, censored)
    m = len(clean) + len(censored)
    k = confident_rank(m, 2.0)
    uncapped = points[np.nonzero(cdf >= k / m - 1e-12)[0][0]]
    q, _, _ = pooled_bound([shape], 2.0)
    cap = np.sort(np.r_[clean, shape.scores(math.log(CENSORED_HEADROOM))[1]])[k - 1]
    assert q == pytest.approx(cap) and q < uncapped
    assert uncapped == pytest.approx(clean.max())  # the outlier
    # The cap is also the bound when the estimate never reaches k / M (the truncated calls' share
    # stays above every clean call).
    above_all = group_shape(("b", "low"), np.exp(0.3 * np.r_[SHAPE, SHAPE, SHAPE]), np.full(12, 1e3))
    q, k, _ = pooled_bound([above_all], 2.0)
    assert q == pytest.approx(np.sort(np.r_[above_all.scores()[0],
                                            above_all.scores(math.log(CENSORED_HEADROOM))[1]])[k - 1])


def test_a_group_with_too_many_truncations_has_no_shape():
    # The 80th percentile falls on a truncated call (counted above every clean one): no upper spread.
    # 72nd of 80 for the 90th percentile: 70 clean calls and 10 truncated leave it on a truncated one.
    assert group_shape(("a", "low"), np.exp(SHAPE[:70]), np.full(10, 2.0)) is None
    assert group_shape(("a", "low"), np.exp(SHAPE[:5]), np.zeros(0)) is None  # too few to place
    assert group_shape(("a", "low"), np.exp(SHAPE[:75]), np.full(5, 2.0)) is not None


def test_the_own_check_is_binomial_in_the_groups_size_and_counts_truncated_calls_by_what_is_known():
    shape = group_shape(("a", "low"), np.r_[np.ones(77), np.full(3, 3.0)], np.zeros(0))
    refused, above, p = own_tail_contradicts(shape, 2.0, 2.0)
    assert not refused and above == 3 and p == pytest.approx(0.2165, abs=1e-3)  # P(Bin(80, .02) >= 3)
    heavy = group_shape(("a", "low"), np.r_[np.ones(75), np.full(5, 3.0)], np.zeros(0))
    refused, above, p = own_tail_contradicts(heavy, 2.0, 2.0)
    assert refused and above == 5 and p == pytest.approx(0.0215, abs=1e-3)
    # Truncated calls: one whose ceiling is above the margin counts whole; one cut below it counts
    # the pooled chance of passing the margin given that it passed its ceiling.
    cut = group_shape(("a", "low"), np.ones(78), np.array([2.5, 1.5]))
    _, whole, _ = own_tail_contradicts(cut, 2.0, 2.0)
    assert whole == 2.0  # without a pooled estimate every truncated call counts
    _, partial, _ = own_tail_contradicts(cut, 2.0, 2.0, survival=lambda s: np.exp(-s / 100))
    assert 1.0 < partial < 2.0


def test_a_group_whose_own_tail_is_heavier_than_the_pool_keeps_its_own_bound():
    observed = [observations((f"g{i}", "low"), 0.3 * SHAPE) for i in range(5)]
    heavy = 0.3 * SHAPE.copy()
    heavy[-8:] += 1.5  # 8 of its 80 calls far out in the tail
    observed.append(observations(("heavy", "low"), heavy))
    chosen = pooled_margins(observed, {})
    assert ("heavy", "low") not in chosen and len(chosen) == 5


def test_the_section_marks_pooled_groups_and_measures_margins_against_the_new_prediction():
    from autopack_pipeline.domain.budget_calibration import propose_group_budget

    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    observed = [observations(("implementation", c), 0.3 * SHAPE) for c in ("low", "medium", "high")]
    plain = pooled_margins(observed, {})
    scaled = pooled_margins(observed, {("implementation", "low"): 2.0})
    # The group's predictions x2: its ratios, location and margin halve, the others' stay.
    assert scaled[("implementation", "low")][0] == pytest.approx(plain[("implementation", "low")][0] / 2)
    assert scaled[("implementation", "high")][0] == pytest.approx(plain[("implementation", "high")][0])
    proposal = propose_group_budget(observed[0], seed, pooled=plain[("implementation", "low")])
    assert proposal.status == "pooled"
    assert proposal.budget_margin == math.ceil(plain[("implementation", "low")][0] * 1000) / 1000
    assert "pooled" in proposal.note


def test_the_pooled_survival_is_one_minus_the_kaplan_meier_cdf():
    shape = group_shape(("a", "low"), np.exp(0.3 * SHAPE), np.array([1.2, 1.5]))
    survival = PooledScores.of([shape]).survival
    points, cdf = kaplan_meier(*shape.scores())
    assert survival(points[0] - 1) == 1.0
    assert survival(points[10]) == pytest.approx(1 - cdf[10])
    assert survival(points[-1]) == pytest.approx(1 - cdf[-1])


def test_a_pooled_group_the_coverage_method_left_without_a_factor_still_moves_its_prediction():
    from autopack_pipeline.domain.budget_calibration import propose_group_budget

    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    # 70 clean calls (ratios up to 2.0) and 10 truncated at 1.5x the prediction: more truncations than
    # a 95% bound of 80 absorbs (4), so the coverage method proposes no factor (1.0).
    clean = np.linspace(0.5, 2.0, 70)
    group = observations(("implementation", "high"), np.log(clean), np.full(10, 1.5))
    proposal = propose_group_budget(group, seed, proposed_factor=1.0, pooled=(2.2, "pooled"))
    # Kaplan-Meier puts the truncated calls' share on the clean ratios above 1.5: its point at the
    # factor's phase target (k = 79 of 80, targets.FACTOR_PHASE_TARGET_PCT) is one of them, above the
    # ceilings' order statistic, / 1.1.
    k = order_statistic_index(80, FACTOR_PHASE_TARGET_PCT)
    assert k == 79
    points, cdf = kaplan_meier(clean, np.full(10, 1.5))
    expected = points[np.nonzero(cdf >= k / 80 - 1e-12)[0][0]] / 1.1
    assert proposal.status == "pooled" and proposal.proposed_factor == pytest.approx(expected)
    assert 1.5 / 1.1 < proposal.proposed_factor <= 2.0 / 1.1
    # The budget stays where the pooled margin put it: factor x margin = 2.2 (margin rounded up).
    assert proposal.proposed_factor * proposal.budget_margin == pytest.approx(2.2, abs=2e-3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("zeros", [False, True])  # True: a zero takes the stable sort's way
def test_the_kaplan_meier_point_is_the_first_distinct_point_reaching_the_level(seed, zeros):
    rng = np.random.default_rng(seed)
    clean = rng.integers(1 - zeros, 60, 700).astype(float)  # many ties, among themselves and censored
    censored = rng.integers(1 - zeros, 60, int(rng.integers(0, 300))).astype(float)
    points, cdf = kaplan_meier(clean, censored)
    assert (points.tolist(), cdf.tolist()) == _kaplan_meier_by_loop(clean.tolist(), censored.tolist())
    for level in (0.0, 0.3, 0.9, 0.95, 0.98, 0.999, cdf[-1], 1.0 + 1e-9):
        reached = np.nonzero(cdf >= level)[0]
        want = float(points[reached[0]]) if len(reached) else None
        assert kaplan_meier_point(clean, censored, level) == want
    assert kaplan_meier_point(np.zeros(0), censored, 0.5) is None


def _kaplan_meier_by_loop(clean, censored):
    """The product-limit estimate written as the textbook loop, to hold the array form to."""
    rows = sorted([(v, 0) for v in clean] + [(v, 1) for v in censored])  # clean first at a tie
    at_risk, survival, points, cdf = len(rows), 1.0, [], []
    for value, is_censored in rows:
        if not is_censored:
            survival *= 1 - 1 / at_risk
            if points and points[-1] == value:
                cdf[-1] = 1 - survival
            else:
                points.append(value)
                cdf.append(1 - survival)
        at_risk -= 1
    return points, cdf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kaplan_meier_in_arrays_equals_the_loop_on_tied_and_censored_data(seed):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 40, 500).astype(float)  # many ties
    censored = rng.integers(0, 40, 120).astype(float)  # ties with clean values too
    points, cdf = kaplan_meier(clean, censored)
    want_points, want_cdf = _kaplan_meier_by_loop(clean.tolist(), censored.tolist())
    assert points.tolist() == want_points
    assert cdf.tolist() == want_cdf


def test_kaplan_meier_of_nothing_clean_is_empty():
    points, cdf = kaplan_meier(np.zeros(0), np.array([1.0, 2.0]))
    assert len(points) == 0 and len(cdf) == 0


@pytest.mark.parametrize("m", [0, 1, 5, 19, 20, 59, 60, 200, 1000, 4321])
@pytest.mark.parametrize("target_pct", [2.0, 5.0])
def test_confident_rank_is_the_least_rank_the_binomial_allows(m, target_pct):
    from scipy.stats import binom

    from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index

    ranks = np.arange(1, m + 1)
    reached = np.nonzero(binom.cdf(ranks - 1, m, 1 - target_pct / 100) >= 0.90)[0]
    least = int(ranks[reached[0]]) if len(reached) else m + 1
    assert confident_rank(m, target_pct, 0.90) == max(least, order_statistic_index(m, target_pct))


def test_only_a_thin_group_is_held_to_its_reach():
    # Five groups of 80 from a heavy shape (8 calls a long way out) and a light group (log ratios even
    # over [0, 1], no tail): the pooled margin, set by the heavy tails, lies above 1.25x the light
    # group's largest ratio. With 80 calls the light group keeps it (the rule is unchanged where groups
    # have a bound of their own); cut to 20 calls it is thin and gets its reach instead, the headroom
    # given x its largest ratio.
    heavy = 0.3 * SHAPE.copy()
    heavy[-8:] += 0.8
    light = np.linspace(0.0, 1.0, 80)
    for calls, thin in ((light, False), (light[::4], True)):
        shapes = [group_shape((f"g{i}", "low"), np.exp(heavy), np.zeros(0)) for i in range(5)]
        shapes.append(group_shape(("light", "low"), np.exp(calls), np.zeros(0)))
        q, _, _ = pooled_bound(shapes, 2.0)
        assert shapes[-1].margin(q) > 1.25 * math.exp(calls.max())
        for headroom in (1.25, 2.0):
            margin = pooled_group_margins(shapes, 2.0, thin_below=49, headroom=headroom)[("light", "low")][0]
            expected = min(headroom * math.exp(calls.max()), shapes[-1].margin(q)) if thin else shapes[-1].margin(q)
            assert margin == pytest.approx(expected)


def test_a_groups_largest_ratio_counts_a_truncated_calls_ceiling():
    clean = np.exp(0.3 * SHAPE[::4])
    assert group_shape(("a", "low"), clean, np.zeros(0)).largest_ratio == pytest.approx(clean.max())
    assert group_shape(("a", "low"), clean, np.array([3.0])).largest_ratio == pytest.approx(3.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_pooled_subset_reads_the_same_estimate_as_kaplan_meier_over_its_own_scores(seed):
    """ScorePool.subset (truncated scores only, off one sorted order) against kaplan_meier of the
    subset's scores gathered and sorted afresh: survival anywhere, the first point reaching a level,
    and the k-th smallest with headroom; ties and a truncated score last of all included."""
    from autopack_pipeline.domain.pooled_scores import ScorePool

    rng = np.random.default_rng(seed)
    clean = [rng.integers(0, 30, n).astype(float) for n in (40, 25, 60, 5)]
    censored = [rng.integers(0, 31, n).astype(float) for n in (10, 0, 20, 3)]
    censored[2][0] = 99.0  # after every clean score
    headroom = [c + 0.5 for c in censored]
    pool = ScorePool.of(clean, censored, headroom)
    for groups in ([0, 1, 2, 3], [1, 2, 3], [0, 2], [0, 1, 3], [2]):
        pooled = pool.subset(groups)
        mine_clean = np.concatenate([clean[g] for g in groups])
        mine_cut = np.concatenate([censored[g] for g in groups])
        points, cdf = kaplan_meier(mine_clean, mine_cut)
        at = np.r_[points, points - 0.5, -1.0, 200.0]
        want = np.array([1.0 if (i := np.searchsorted(points, s, side="right")) == 0 else 1 - cdf[i - 1] for s in at])
        assert pooled.survival(at) == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert pooled.size == len(mine_clean) + len(mine_cut)
        for level in (0.1, 0.5, 0.9, cdf[-1], cdf[-1] + 0.01):
            reached = np.nonzero(cdf >= level)[0]
            assert pooled.first_reaching(level) == (float(points[reached[0]]) if len(reached) else None)
        capped = np.sort(np.r_[mine_clean, np.concatenate([headroom[g] for g in groups])])
        for k in (1, len(capped) // 2, len(capped)):
            assert pooled.kth_smallest_capped(k) == capped[k - 1]


@pytest.mark.parametrize("distinct", [2, 50, 10**9])
def test_stable_order_of_floats_is_numpys_stable_argsort(distinct):
    """The folds' and the estimate's sort (unstable, runs of equal keys put back in row order) is
    numpy's own stable permutation: with heavy ties, signed zeros, NaNs and the smallest sizes."""
    rng = np.random.default_rng(distinct)
    for size in (0, 1, 2, 7, 20_000):
        keys = rng.integers(0, distinct, size) / 7.0
        keys[::5] = -0.0
        keys[1::7] = 0.0
        assert np.array_equal(stable_order(keys), np.argsort(keys, kind="stable"))
        # Started from an order that nearly sorts them (of the keys before a factor), or from any order.
        for near in (np.argsort(keys * 1.37 + rng.normal(0, 1e-3, size)), rng.permutation(size)):
            assert np.array_equal(stable_order(keys, near=near), np.argsort(keys, kind="stable"))
    with_nan = np.array([1.0, np.nan, 1.0, np.nan, 0.0, 1.0])
    assert np.array_equal(stable_order(with_nan), np.argsort(with_nan, kind="stable"))


@pytest.mark.parametrize("seed", [5, 6])
def test_kaplan_meier_sorted_apart_is_the_loops_estimate(seed):
    """Positive values (no zero, no NaN) are sorted clean and censored apart and merged by count: the
    same estimate, bit for bit, as the loop over one stable order, with heavy ties between the two."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(1, 40, 5_000) / 9.0
    censored = rng.integers(1, 40, 700) / 9.0
    points, cdf = kaplan_meier(clean, censored)
    want_points, want_cdf = _kaplan_meier_by_loop(clean.tolist(), censored.tolist())
    assert points.tolist() == want_points
    assert cdf.tolist() == want_cdf
    shuffled = kaplan_meier(rng.permutation(clean), rng.permutation(censored))
    assert np.array_equal(shuffled[0], points) and np.array_equal(shuffled[1], cdf)


# The length world's noise: 150 evenly spaced quantiles of a log-t with 3 degrees of freedom, spread 0.3.
LOG_T3 = 0.3 * t_dist.ppf((np.arange(150) + 0.5) / 150, 3)


def _calls_cut(margin: float, retry_factor: float = 1.25) -> float:
    """The share of calls cut (%) when lengths are exp(LOG_T3)'s distribution and every cut call is
    retried once at ``retry_factor`` x its budget: Tier 1's count, retries included."""
    first = t_dist.sf(math.log(margin) / 0.3, 3)
    again = t_dist.sf(math.log(retry_factor * margin) / 0.3, 3)
    return 100 * (first + again) / (1 + first)


def test_the_first_call_target_keeps_all_calls_retries_counted_at_the_target():
    shapes = [group_shape((f"g{i}", "low"), np.exp(LOG_T3 + 0.1 * i), np.zeros(0)) for i in range(7)]
    pooled = PooledScores.of(shapes)
    q = pooled_bound(shapes, 2.0, pooled)[0]
    first = first_call_target(shapes, pooled, q, 2.0, 1.25)
    # The retry's chance of a second cut, from the pooled estimate (one spread here, so one step).
    r = pooled.survival(q + math.log(1.25) / shapes[0].scale) / pooled.survival(q)
    assert 0.3 < r < 0.9  # a heavy tail: past the bound, a retry 25% longer is often cut again
    t = first / 100
    assert (t + t * r) / (1 + t) == pytest.approx(0.02)
    # Without a retry the first call's share is the target; a retry always cut again halves it (nearly).
    assert first_call_target(shapes, pooled, q, 2.0, 1.0) == pytest.approx(2.0 / (2 - 0.02))


def test_truncation_margins_count_the_escalated_retry_of_a_cut_call():
    """Tier 1 counts every call, Autopack retrying a cut one at 1.25x. Margins read at 2% of first calls
    cut 2.6% of calls on the length world's tail (its round-4 average over 13 seeds was 2.6%)."""
    shapes = [group_shape((f"g{i}", "low"), np.exp(LOG_T3 + 0.1 * i), np.zeros(0)) for i in range(7)]
    plain = pooled_group_margins(shapes, 2.0)[("g0", "low")][0]
    counted = pooled_group_margins(shapes, 2.0, retry_factor=1.25)
    margin, why = counted[("g0", "low")]
    assert _calls_cut(plain) > 2.5
    assert margin > plain and _calls_cut(margin) < 2.05  # at 2% up to the retry's chance read one step out
    assert "their retries counted" in why
    # The calibration section's margins are these (the coverage factors' 5% bound counts no retry).
    observed = [observations((f"g{i}", "low"), LOG_T3 + 0.1 * i) for i in range(7)]
    assert pooled_margins(observed, {}, retry_factor=1.25)[("g0", "low")][0] == pytest.approx(margin)
    assert pooled_margins(observed, {})[("g0", "low")][0] == pytest.approx(plain)


def test_the_calibration_section_sets_margins_with_the_retry_counted():
    from autopack_pipeline.domain.budget_calibration import calibration_section
    from autopack_pipeline.domain.escalation import ESCALATION_FACTOR

    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    observed = [observations(("implementation", c), LOG_T3 + 0.1 * i) for i, c in enumerate(("low", "medium"))]
    observed += [observations(("tests", c), LOG_T3 - 0.1 * i) for i, c in enumerate(("low", "medium", "high"))]
    section = calibration_section([CoverageGroupSlice(g) for g in observed], seed, {})
    counted = pooled_margins(observed, {}, retry_factor=ESCALATION_FACTOR)
    plain = pooled_margins(observed, {})
    for group in section["groups"]:
        key = (group["category"], group["complexity"])
        assert group["status"] == "pooled"
        assert group["budget_margin"] == pytest.approx(math.ceil(counted[key][0] * 1000) / 1000)
        assert group["budget_margin"] > math.ceil(plain[key][0] * 1000) / 1000  # the 2% of phases' margin, as written


def test_the_retrys_chance_is_the_windows_own_retries_where_the_pooled_tail_is_flat():
    """After a drift the pool's largest calls are often truncated: past its last clean score the
    estimate is flat, reads a retry 25% longer as cut again for sure (r = 1), and the first-call share
    halves, margins x9.8 where the tail needs ~x4 (length world 31 read r = 0.92 this way, 1.81x the
    oracle's waste). The window's stored retries measure r directly."""
    shapes = []
    for i in range(7):  # the largest two calls of each group cut just short of their length
        logs = LOG_T3 + 0.1 * i
        shapes.append(group_shape((f"g{i}", "low"), np.exp(logs[:-2]), 0.95 * np.exp(logs[-2:])))
    pooled = PooledScores.of(shapes)
    q = pooled_bound(shapes, 2.0, pooled)[0]
    assert retry_cut_chance(shapes, pooled, q, 1.25) == 1.0
    # The tail's own chance near the 1.3% point: a log-t(3) past its 98.7% quantile passes +log(1.25) too.
    x = t_dist.isf(0.013, 3)
    truth = t_dist.sf(x + math.log(1.25) / 0.3, 3) / 0.013
    assert 0.6 < truth < 0.7
    retries = RetryOutcomes(retried=100, cut_again=round(100 * truth))
    # A Beta prior worth one retry, centred on the pooled reading; no retry leaves that reading.
    assert retry_cut_chance(shapes, pooled, q, 1.25, retries) == pytest.approx((retries.cut_again + 1) / 101)
    assert retry_cut_chance(shapes, pooled, q, 1.25, RetryOutcomes(0, 0)) == 1.0
    flat = pooled_group_margins(shapes, 2.0, retry_factor=1.25)[("g0", "low")][0]
    margin, why = pooled_group_margins(shapes, 2.0, retry_factor=1.25, retries=retries)[("g0", "low")]
    assert _calls_cut(flat) < 0.5  # five times the margin's share held back: waste, not Tier 1
    assert 1.0 < _calls_cut(margin) <= 2.0
    assert f"{retries.cut_again} of the window's 100 retries cut again" in why


def test_the_calibration_section_reads_the_retrys_chance_from_the_retries_it_is_given():
    from autopack_pipeline.domain.budget_calibration import calibration_section
    from autopack_pipeline.domain.escalation import ESCALATION_FACTOR

    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    observed = [observations((f"g{i}", "low"), LOG_T3 + 0.1 * i) for i in range(7)]
    pooled_only = pooled_margins(observed, {}, retry_factor=ESCALATION_FACTOR)  # the pooled reading, ~0.5
    # Retries that nearly always fit leave first calls more of the target; retries cut again, less.
    for retries, wider in ((RetryOutcomes(retried=60, cut_again=3), False), (RetryOutcomes(60, 50), True)):
        section = calibration_section([CoverageGroupSlice(g) for g in observed], seed, {}, retries=retries)
        counted = pooled_margins(observed, {}, retry_factor=ESCALATION_FACTOR, retries=retries)
        for group in section["groups"]:
            key = (group["category"], group["complexity"])
            assert group["budget_margin"] == pytest.approx(math.ceil(counted[key][0] * 1000) / 1000)
            assert (counted[key][0] > pooled_only[key][0]) is wider
            assert (counted[key][0] < pooled_only[key][0]) is not wider


def test_pooled_clean_scores_are_each_folds_scores_ascending_bit_for_bit():
    """The pool's clean scores (gathered fold by fold from the cached rank order) are, fold after fold,
    that fold's cross-fitted scores in ascending order, the very bits ``scores()`` gives."""
    rng = np.random.default_rng(7)
    shape = group_shape(("g", "h"), np.exp(rng.normal(0, 0.3, 997)), np.exp(rng.normal(0.4, 0.1, 23)))
    clean, _cut = shape.scores()
    folds = shape._folds[0]
    expected = np.concatenate([np.sort(clean[folds == fold]) for fold in range(FOLDS)])
    assert np.array_equal(shape.pooled_clean_scores, expected)


@pytest.mark.parametrize("largest", [0, 200, 255, 256, 40_000, 65_535, 65_536, 2**40])
def test_stable_order_of_integers_is_numpys_stable_argsort(largest):
    # One byte per key up to 255, two up to 65,535, the keys themselves beyond: the same order each way.
    keys = np.random.default_rng(largest % 97).integers(0, largest + 1, 5000).astype(np.int64)
    keys[:3] = largest
    assert np.array_equal(stable_order(keys), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_bisections_scalar_estimate_is_the_arrays_to_the_bit(seed):
    """first_reaching bisects with the estimate of one count at a time (``_survival_after_one``): it must
    be the very float the whole-array estimate gives, or a level the pool reaches exactly could be missed;
    every count of clean and truncated scores passed, nothing clean passed and cuts past the cap included."""
    from autopack_pipeline.domain.pooled_scores import ScorePool, _count, _count_one

    rng = np.random.default_rng(seed)
    clean = [rng.integers(0, 40, n).astype(float) for n in (70, 30, 5)]
    censored = [rng.integers(0, 41, n).astype(float) for n in (25, 4, 2)]
    pooled = ScorePool.of(clean, censored, [c + 0.5 for c in censored]).subset([0, 2])
    cleans = np.repeat(np.arange(pooled.size + 1), pooled.cut_cap + 3)
    cuts = np.tile(np.arange(pooled.cut_cap + 3), pooled.size + 1)
    whole = pooled._survival_after(cleans, cuts)
    one = [pooled._survival_after_one(int(c), int(k)) for c, k in zip(cleans, cuts)]
    assert np.array_equal(np.array(one), whole, equal_nan=True)
    for value in (-1.0, 0.0, 3.0, 17.5, 40.0, 99.0):
        for side in ("left", "right"):
            assert _count_one(pooled.out_clean, value, side) == int(_count(pooled.out_clean, np.array([value]), side)[0])
