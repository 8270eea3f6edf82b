"""Coverage factors raised to the group's own and the pooled bound at the phase target (3.06% of phases,
so that retried truncations leave 5% of calls): a group whose own few largest ratios happen to be short
no longer gets a factor that covers only on average; budgets do not move, predictions do; a thin group
is raised no further than its reach."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.budget_calibration import (
    CENSORED_HEADROOM,
    THIN_MARGIN_HEADROOM,
    calibration_section,
    pooled_margins,
    raise_to_pooled_coverage,
)
from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.group_observations import GroupObservationsInForce
from autopack_pipeline.domain.group_shape import group_shape
from autopack_pipeline.domain.pooled_margin import pooled_bound, pooled_group_margins
from autopack_pipeline.domain.targets import (
    FACTOR_PHASE_TARGET_PCT,
    TRUNCATION_TARGET_PCT,
    UNDER_TOLERANCE,
    UNDERESTIMATION_TARGET_PCT,
)
from autopack_pipeline_tests.support.group_observations import CoverageGroupSlice, observations

pytestmark = pytest.mark.unit

# One tail shape: 80 evenly spaced quantiles of a standard normal, on the log scale, spread 0.3.
SHAPE = 0.3 * norm.ppf((np.arange(80) + 0.5) / 80)



def _own_coverage_factor(group: GroupObservationsInForce) -> float:
    """What the coverage method proposes without truncations: the k-th ratio at 95%, / 1.1."""
    ratios = np.sort(group.actual / group.predicted)
    return float(ratios[order_statistic_index(len(ratios), UNDERESTIMATION_TARGET_PCT) - 1]) / UNDER_TOLERANCE


def _groups():
    """Four groups of one shape, and one ("short", "low") whose top tenth happened to come out short:
    its own 95% order statistic sits below the shape's 95% point."""
    observed = [observations((f"g{i}", "low"), SHAPE) for i in range(4)]
    short = SHAPE.copy()
    short[-8:] = short[-9]  # its 8 largest ratios no longer than its 9th largest
    observed.append(observations(("short", "low"), short))
    return observed



def test_a_factor_below_the_pooled_bound_is_raised_to_it_and_one_above_is_kept():
    observed = _groups()
    own = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed}
    factors = dict(own)
    factors[("g0", "low")] = 3.0  # already above any bound of this shape: kept
    del factors[("g1", "low")]  # not actionable: no factor, none is added
    raised = raise_to_pooled_coverage(observed, factors)
    bounds = pooled_margins(observed, {}, target_pct=FACTOR_PHASE_TARGET_PCT)
    assert raised[("short", "low")] == pytest.approx(bounds[("short", "low")][0] / UNDER_TOLERANCE)
    assert raised[("short", "low")] > own[("short", "low")]
    assert raised[("g0", "low")] == 3.0 and ("g1", "low") not in raised
    # The pooled bound is a tolerance limit at 3.06%: above the shape's own 96.94% point (z 1.87), for a
    # group with no short top, it is still within the shape (below its 99% point, z 2.33).
    assert math.exp(0.3 * 1.87) / UNDER_TOLERANCE < raised[("g2", "low")] < math.exp(0.3 * 2.33) / UNDER_TOLERANCE
    assert raised[("g2", "low")] >= own[("g2", "low")]


def test_raising_the_factor_moves_predictions_not_budgets():
    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    observed = [observations(("implementation", c), SHAPE) for c in ("low", "medium", "high")]
    short = SHAPE.copy()
    short[-8:] = short[-9]
    observed.append(observations(("tests", "low"), short))

    groups = [CoverageGroupSlice(g) for g in observed]
    factors = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed}
    plain = {(g["category"], g["complexity"]): g for g in calibration_section(groups, seed, factors)["groups"]}
    raised = {(g["category"], g["complexity"]): g
              for g in calibration_section(groups, seed, factors, pooled_factors=True)["groups"]}
    assert raised[("tests", "low")]["proposed_factor"] > plain[("tests", "low")]["proposed_factor"]
    for key, proposal in raised.items():
        assert proposal["status"] == plain[key]["status"] == "pooled"
        budget_per_prediction = proposal["proposed_factor"] * proposal["budget_margin"]
        # The same budget per prediction in force (margins are rounded up to 1/1000).
        assert budget_per_prediction == pytest.approx(plain[key]["proposed_factor"] * plain[key]["budget_margin"],
                                                      rel=2e-3)


# The README's first command in small: four groups of 25 calls, a narrow body with 2 calls of a long
# mode (x2.0 and x2.8) each, and one clean group of 21 calls spread widely (x0.34 to x1.41) with no
# long mode. 121 calls pool; the 5% bound's rank is among their 3 largest scores.
NOISY_BODY = 0.15 * norm.ppf((np.arange(23) + 0.5) / 23)
SMALL = ("small", "medium")


def _small_pool():
    noisy = [observations((f"noisy{i}", "low"), np.r_[NOISY_BODY + 0.1 * i, math.log(2.0), math.log(2.8)])
             for i in range(4)]
    return noisy + [observations(SMALL, np.log(np.linspace(0.34, 1.41, 21)))]


def _uncapped_bound(observed, key, target_pct):
    """The pooled bound of one group with no group treated as thin (the rule before the reach)."""
    shapes = [group_shape((g.category, g.complexity), g.actual / g.predicted, np.zeros(0)) for g in observed]
    return pooled_group_margins(shapes, target_pct)[key][0]


def test_a_small_clean_group_next_to_noisy_ones_is_raised_no_further_than_its_reach():
    observed = _small_pool()
    shapes = [group_shape((g.category, g.complexity), g.actual / g.predicted, np.zeros(0)) for g in observed]
    _, k, m = pooled_bound(shapes, FACTOR_PHASE_TARGET_PCT)
    assert (k, m) == (121, 121)  # the largest score of the pool
    own = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed}
    assert own[SMALL] == pytest.approx(1.41 / 1.1)  # 21 calls: the coverage method's k is its largest
    # Without the reach, the pool's top (the noisy groups' long mode) set in the small group's wide
    # spread asks for a factor near three times its own.
    assert _uncapped_bound(observed, SMALL, FACTOR_PHASE_TARGET_PCT) / UNDER_TOLERANCE > 2.5 * own[SMALL]
    raised = raise_to_pooled_coverage(observed, own)
    # Thin (21 < 49 observations): at most 1.25 x its largest ratio, / 1.1.
    assert raised[SMALL] == pytest.approx(CENSORED_HEADROOM * 1.41 / UNDER_TOLERANCE)
    # Each noisy group: the pooled bound where it is under its reach, its reach where it is not; never
    # below its own bound at the phase target, with 25 calls their largest (x2.8).
    for g in observed[:4]:
        key = (g.category, g.complexity)
        expected = max(own[key], 2.8 / UNDER_TOLERANCE, min(_uncapped_bound(observed, key, FACTOR_PHASE_TARGET_PCT),
                                                            CENSORED_HEADROOM * 2.8) / UNDER_TOLERANCE)
        assert raised[key] == pytest.approx(expected)
    # Thin is the truncation target's notion (under 49 observations at 2%): at a 5% truncation
    # target, 19 observations make a bound and no group here is thin: no reach.
    unthinned = raise_to_pooled_coverage(observed, own, truncation_target_pct=5.0)
    assert unthinned[SMALL] == pytest.approx(_uncapped_bound(observed, SMALL, FACTOR_PHASE_TARGET_PCT)
                                             / UNDER_TOLERANCE)


def test_a_small_clean_groups_budget_stays_within_its_reach_of_the_prediction_in_force():
    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    observed = _small_pool()
    groups = [CoverageGroupSlice(g) for g in observed]
    factors = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed}
    section = {(g["category"], g["complexity"]): g
               for g in calibration_section(groups, seed, factors, pooled_factors=True)["groups"]}
    small = section[SMALL]
    assert small["status"] == "pooled" and "its reach" in small["note"]
    # Its factor stops at 1.25 x its largest ratio / 1.1; its budget per prediction in force, factor x
    # margin, at 2 x its largest ratio (margin rounded up to 1/1000), where the pool alone put it above x4.
    assert small["proposed_factor"] == pytest.approx(CENSORED_HEADROOM * 1.41 / UNDER_TOLERANCE)
    assert small["proposed_factor"] * small["budget_margin"] == pytest.approx(THIN_MARGIN_HEADROOM * 1.41, rel=2e-3)
    assert _uncapped_bound(observed, SMALL, 2.0) > 4.0
    # The floor is the smallest prediction x factor x margin (every prediction here is 1000).
    assert small["budget_floor"] == int(1000 * small["proposed_factor"] * small["budget_margin"])


def test_the_phase_target_keeps_calls_within_target_when_truncations_are_retried():
    # Tier 1 counts calls; a phase that truncates is underestimated on its truncated call and again on
    # its retry. 98 phases, 3 of them above the tolerance (the phase target), 2 truncated calls retried
    # (2 of 100 calls truncated, the truncation target): 5 of 100 calls above, the call target.
    assert FACTOR_PHASE_TARGET_PCT == pytest.approx(100 * 3 / 98)
    phases, above, retried = 98, 3, 2
    assert 100 * above / phases == pytest.approx(FACTOR_PHASE_TARGET_PCT)
    assert 100 * retried / (phases + retried) == TRUNCATION_TARGET_PCT
    assert 100 * (above + retried) / (phases + retried) == pytest.approx(UNDERESTIMATION_TARGET_PCT)


def test_a_factor_covers_the_phase_target_with_the_groups_own_ratios():
    # Four groups of 150 phases of one shape, and one whose 6 longest phases are 1.5x longer: a tail
    # heavier than the pool's, not heavy enough for its calls to refuse the pooled bound (6 of 150
    # above it is plausible at 3.06%), so the pool alone would leave 6 of its phases (4%) above the
    # tolerance, and so would the coverage method's own 5% bound (its 144th ratio). At 5% of phases, a
    # round truncating 2% of its calls has ~7% of calls above. The factor is raised to its own 147th
    # ratio (k = ceil(151 x (1 - 3/98))), / 1.1: 3 phases of 150 above (2%).
    base = 0.3 * norm.ppf((np.arange(150) + 0.5) / 150)
    heavy = base.copy()
    heavy[-6:] += math.log(1.5)
    observed = [observations((f"g{i}", "low"), base) for i in range(4)] + [observations(("heavy", "low"), heavy)]
    factors = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed}
    ratios = np.exp(heavy)
    assert factors[("heavy", "low")] == pytest.approx(ratios[143] / UNDER_TOLERANCE)
    assert order_statistic_index(150, FACTOR_PHASE_TARGET_PCT) == 147
    pooled = pooled_margins(observed, {}, target_pct=FACTOR_PHASE_TARGET_PCT)[("heavy", "low")][0]
    assert int((ratios > pooled).sum()) == 6  # the pooled bound alone: 6 phases above
    raised = raise_to_pooled_coverage(observed, factors)
    assert raised[("heavy", "low")] == pytest.approx(ratios[146] / UNDER_TOLERANCE)
    assert int((ratios > raised[("heavy", "low")] * UNDER_TOLERANCE).sum()) == 3
    # The groups of the pool's own shape are raised by the pooled bound, above their own 147th ratio.
    assert raised[("g0", "low")] == pytest.approx(pooled_margins(observed, {}, target_pct=FACTOR_PHASE_TARGET_PCT)
                                                  [("g0", "low")][0] / UNDER_TOLERANCE)
    assert raised[("g0", "low")] > math.exp(base[146]) / UNDER_TOLERANCE



def test_a_pooled_group_the_coverage_method_left_without_a_factor_gets_the_pooled_bound_too():
    # Four groups of 150 phases of one shape, and one of the same shape whose 7 longest phases were
    # truncated at 0.95x their length: more than the 6 a 5% bound of 150 absorbs, so the coverage method
    # proposes no factor; its calls still accept the pooled margin. Its factor is the larger of its own
    # Kaplan-Meier bound and the pooled bound at the phase target, as every other group's.
    base = 0.3 * norm.ppf((np.arange(150) + 0.5) / 150)
    observed = [observations((f"g{i}", "low"), base) for i in range(4)]
    ratios = np.exp(base)
    cut = GroupObservationsInForce("cut", "low", np.full(143, 1000.0), ratios[:143] * 1000.0, np.full(7, 1000.0),
                                   0.95 * ratios[143:] * 1000.0)
    observed.append(cut)
    assert 7 > 150 - order_statistic_index(150, UNDERESTIMATION_TARGET_PCT)
    factors = {(g.category, g.complexity): _own_coverage_factor(g) for g in observed[:4]}  # none for "cut"
    pooled = pooled_margins(observed, {}, target_pct=FACTOR_PHASE_TARGET_PCT)
    assert ("cut", "low") in pooled  # its calls accept the pooled margin
    raised = raise_to_pooled_coverage(observed, factors)
    assert raised[("cut", "low")] >= pooled[("cut", "low")][0] / UNDER_TOLERANCE
    # Above its own estimate, where the Kaplan-Meier tail rests on the few clean ratios above the ceilings.
    clean_max = ratios[142]
    assert raised[("cut", "low")] > clean_max / UNDER_TOLERANCE
