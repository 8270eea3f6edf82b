"""Per-group settings for the coefficient file's ``calibration`` section: multiplier, margin, floor.

Calibration of predictions (``coverage``) moves underestimation; truncation is a question of the
budget ``select_budget`` sends, ``min(cap, max(floor, int(prediction * margin)))``. Here, for each
(category, complexity) group, on its observations with predictions already re-expressed under the
coefficients in force (``domain.reprediction``) and scaled by the factor proposed for the group:

- ``prediction_multiplier`` = the group's current multiplier x the proposed factor (never compounding:
  the factor was measured against predictions that already include the current multiplier);
- ``budget_margin`` b, first from the tail shape pooled over the groups (``domain.pooled_margin``,
  status ``pooled``): a group whose own calls accept it takes ``exp(median + upper spread x q)``, its
  upper spread moved half way (in logs) to the groups' average first (``domain.scale_pooling``),
  ``q`` one bound over several hundred calls, where its own order statistic below would be the
  largest of its ~80 ratios (a thin group, too few observations for that order statistic, at most
  its reach: ``THIN_MARGIN_HEADROOM`` x its largest ratio); when the coverage method left such a group
  no factor (too many truncations for its bound), the factor comes from the Kaplan-Meier estimate of the group's
  ratios (``coverage_factor.own_coverage_factor``) and the margin shrinks so the budget stays put.
  Otherwise (a group refused by the check, or no pooled bound), the group's own bound b: ratios
  ``actual / new prediction``, truncated calls censored (they count as
  exceeding every candidate), ``N`` observations, ``k = ceil((N + 1) * (1 - target))``; b is the k-th
  smallest. For a new call exchangeable with the past ones, ``P(actual > b * prediction) <= target``
  (split-conformal, as the coverage method). With fewer than ``k`` observations (N < 49 at 2%) and no
  truncation, b is the largest ratio seen: an advisory bound (status ``thin``);
- ``budget_floor``: a floor that binds for the largest calls of the group inflates every small call's
  budget (waste), so it is put at the group's smallest new prediction x b, where it binds for none of
  the past calls. The rule then exceeds on at most ``N - k`` past calls (0 for a ``thin`` group): the
  finite-sample allowance of the order statistic that chose b. The floor in force is no reference:
  an earlier, larger floor covered calls that allowance is there to leave uncovered, and keeping it
  (the earlier rule: never truncate more past calls than the floor in force) made floors, not
  margins, set most budgets;
- *unidentifiable* groups (more truncated calls than the bound absorbs) have no honest order statistic,
  but they have lower bounds: each truncated call's ratio is above its ceiling / prediction, and an
  order statistic only grows when values do, so the coverage factor (the k-th smallest ratio at the
  phase target ``targets.FACTOR_PHASE_TARGET_PCT``, / the 1.1 tolerance) is at least the k-th smallest of the clean ratios and
  the ceiling ratios together, and at least the largest clean ratio (the truncated calls counted above
  every candidate put the k-th beyond every clean one); the factor rises at least to the larger (the
  clean ratio alone, the earlier rule, ignored how long the truncated calls were known to be). The
  margin is the group's own Kaplan-Meier estimate of its 98% point, truncated calls censored at their
  ceilings, capped (and replaced where the estimate never gets there) by the k-th smallest ratio with
  each truncated call at :data:`CENSORED_HEADROOM` x its ceiling, as the pooled bound is
  (:func:`_censored_margin`); a group too small for the rank covers every clean call and every
  ceiling x that headroom. The floor is chosen as for the other groups. Budgets stay
  proportional to the prediction, where a blunt floor raise (the earlier rule: twice the largest
  ceiling hit) inflated every small call's budget. Each still gets a collect-samples task. A group
  under ``min_samples`` observations with a truncation gets that blunt floor raise: too little to
  estimate a margin from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.analysis.order_statistics import order_statistics
from autopack_pipeline.domain.analysis.retries import RetryOutcomes
from autopack_pipeline.domain.budget_projection import proportional_floor, truncated_past_calls
from autopack_pipeline.domain.coefficients import CoefficientTable, GroupSetting
from autopack_pipeline.domain.coverage_factor import coverage_has_no_bound, factor_lower_bound, own_coverage_factor
from autopack_pipeline.domain.escalation import ESCALATION_FACTOR
from autopack_pipeline.domain.group_observations import GroupObservationsInForce, observations_in_force, scaled_ratios
from autopack_pipeline.domain.group_shape import CENSORED_HEADROOM, group_shape
from autopack_pipeline.domain.pooled_margin import kaplan_meier_point, pooled_group_margins
from autopack_pipeline.domain.scale_pooling import scales_pooled
from autopack_pipeline.domain.shared_figures import BUSY, shared
from autopack_pipeline.domain.targets import FACTOR_PHASE_TARGET_PCT, UNDER_TOLERANCE

DEFAULT_TRUNCATION_TARGET_PCT = 2.0
# The floor raise for a group too small to estimate (a truncation among fewer than min_samples calls):
# this many times the largest ceiling that was hit.
FLOOR_RAISE_FACTOR = 2
# An unidentifiable group's margin covers each truncated call's ceiling by CENSORED_HEADROOM (the
# pooled bound's cap uses the same allowance): the call's real length is unknown, only larger than the
# ceiling (Autopack escalates a truncated call by 25% too).
# How far past its largest ratio the pooled margin may carry a thin group (its reach; see
# ``pooled_margin.pooled_group_margins``). The factor raise stops at CENSORED_HEADROOM: at 5%, a
# group of 19 or more already covers on average with its largest ratio, and the headroom only adds
# confidence. A margin needs more: at 2%, the largest of N < 49 ratios covers only N / (N + 1) on
# average (96% for 24 calls), and the headroom carries the rest, as far as the rules already go for a
# group too small to estimate (FLOOR_RAISE_FACTOR, twice the largest length seen). Measured on
# quickstart-sized loops (README, "The loop, measured"): 2 kept Tier 1 where the uncapped pooled
# margin had it, at less budget waste; 1.5 and 1.25 truncated more.
THIN_MARGIN_HEADROOM = FLOOR_RAISE_FACTOR
# The underestimation tolerance the coverage factor is measured against (actual > 1.1 x predicted).


@dataclass(frozen=True)
class GroupBudgetProposal:
    """What the patch sets for one group, and the figures behind it."""

    category: str
    complexity: str
    status: str  # pooled | identifiable | thin | unidentifiable
    observations: int
    censored: int
    order_statistic_k: int
    current_prediction_multiplier: float
    proposed_factor: float
    prediction_multiplier: float
    budget_margin: float | None
    budget_floor: int
    previous_budget_floor: int
    truncated_past_calls_projected: int
    truncated_past_calls_with_previous_floor: int
    note: str

    def setting(self) -> GroupSetting:
        return GroupSetting(prediction_multiplier=self.prediction_multiplier, budget_margin=self.budget_margin,
                            budget_floor=self.budget_floor)

    def as_dict(self) -> dict:
        return asdict(self)


def propose_group_budget(
    group: GroupObservationsInForce,
    table: CoefficientTable,
    *,
    proposed_factor: float = 1.0,
    target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT,
    min_samples: int = 5,
    pooled: tuple[float, str] | None = None,
    wait: bool = True,
) -> GroupBudgetProposal:
    """The settings of one group (see the module docstring). ``pooled`` is (margin, why) from
    :func:`pooled_margins`, already checked against the group's own calls; it replaces the group's
    own order statistic. An unidentifiable group's settings are computed once for every caller
    asking with the same factor and table figures (``shared_figures``); ``wait=False`` returns
    :data:`~.shared_figures.BUSY` while another thread is computing them."""
    key = (group.category, group.complexity)
    current = table.group_setting(*key)
    previous_floor = current.budget_floor if current is not None and current.budget_floor else table.budget_floor(*key)
    current_m = table.prediction_multiplier(*key)
    cap = table.budget.cap
    n_clean, n_cut = len(group.actual), len(group.censored_ceiling)
    n = n_clean + n_cut
    k = order_statistic_index(n, target_pct) if n else 0
    # Only the identifiable and thin rules read a ratio: the k-th smallest or the largest, each found
    # without sorting the group (a pooled group's millions of ratios were sorted for nothing), and only
    # they divide: a pooled group's ratios were computed for nothing too.
    def ratios() -> np.ndarray:
        return group.actual / (group.predicted * proposed_factor)

    if pooled is not None and n >= min_samples:
        status, margin = "pooled", pooled[0]
        if coverage_has_no_bound(n, n_cut):
            # The coverage method proposed no factor (too many truncations for its bound): the
            # prediction still has to move, by the censored estimate; the budget stays where the
            # pooled margin put it.
            factor = max(proposed_factor, own_coverage_factor(group))
            margin, proposed_factor = margin * proposed_factor / factor, factor
    elif n >= min_samples and k <= n and k - 1 < n_clean:
        status, margin = "identifiable", order_statistics(ratios(), [k - 1], overwrite=True)[k - 1]
    elif n >= min_samples and k > n and n_cut == 0:
        status, margin = "thin", float(ratios().max())
    elif n >= min_samples and n_clean:
        factor = max(proposed_factor, factor_lower_bound(group))
        return shared(group, ("unidentifiable", factor, target_pct, k, previous_floor, current_m, cap),
                      lambda: _unidentifiable_bounds(group, table, factor, target_pct, k, previous_floor), wait=wait)
    else:
        status, margin = "unidentifiable", None

    if margin is None:
        hit = group.censored_ceiling.max() if n_cut else (group.actual.max() if n_clean else 0)
        floor = int(min(cap, max(previous_floor, FLOOR_RAISE_FACTOR * hit)))
        why = (f"{n_cut} of {n} observations were truncated; a {100 - target_pct:g}% bound from {n} can absorb "
               f"at most {max(0, n - k)}") if n >= min_samples else f"only {n} observations (need {min_samples})"
        truncated = truncated_past_calls(group, proposed_factor, _margin_in_force(table, key), (floor, int(previous_floor)), cap)
        return GroupBudgetProposal(
            *key, status="unidentifiable", observations=n, censored=n_cut, order_statistic_k=k,
            current_prediction_multiplier=current_m, proposed_factor=proposed_factor,
            prediction_multiplier=round(current_m * proposed_factor, 4),
            budget_margin=current.budget_margin if current is not None else None, budget_floor=floor,
            previous_budget_floor=int(previous_floor),
            truncated_past_calls_projected=truncated[0], truncated_past_calls_with_previous_floor=truncated[1],
            note=f"Unidentifiable: {why}. Floor raised to {floor} ({FLOOR_RAISE_FACTOR}x the largest ceiling "
                 f"hit, capped at {cap}); collect more samples.")

    margin = math.ceil(margin * 1000) / 1000  # rounded up: the written margin still covers the k-th call
    floor = proportional_floor(group, proposed_factor, margin, cap)
    multiplier = round(current_m * proposed_factor, 4)
    projected, with_previous = truncated_past_calls(group, proposed_factor, margin, (floor, int(previous_floor)), cap)
    kind = (pooled[1] if status == "pooled"
            else f"the {k}-th of {n} ratios (a {100 - target_pct:g}% bound)" if status == "identifiable"
            else f"the largest of {n} ratios (advisory: a {100 - target_pct:g}% bound needs "
                 f"{observations_for_bound(target_pct)} observations)")
    return GroupBudgetProposal(
        *key, status=status, observations=n, censored=n_cut, order_statistic_k=k,
        current_prediction_multiplier=current_m, proposed_factor=proposed_factor, prediction_multiplier=multiplier,
        budget_margin=margin, budget_floor=int(floor), previous_budget_floor=int(previous_floor),
        truncated_past_calls_projected=projected,
        truncated_past_calls_with_previous_floor=with_previous,
        note=f"margin x{margin:.3f} = {kind}; floor {floor} (was {previous_floor})")


def _unidentifiable_bounds(group: GroupObservationsInForce, table: CoefficientTable, proposed_factor: float,
                           target_pct: float, k: int, previous_floor: int) -> GroupBudgetProposal:
    """Settings from lower bounds for a group with more truncated calls than its bound absorbs."""
    key = (group.category, group.complexity)
    current_m, cap = table.prediction_multiplier(*key), table.budget.cap
    n_clean, n_cut = len(group.actual), len(group.censored_ceiling)
    n = n_clean + n_cut
    factor = max(proposed_factor, factor_lower_bound(group))
    margin, how = _censored_margin(group, factor, k)
    margin = math.ceil(margin * 1000) / 1000
    floor = proportional_floor(group, factor, margin, cap)
    truncated = truncated_past_calls(group, factor, margin, (floor, int(previous_floor)), cap)
    return GroupBudgetProposal(
        *key, status="unidentifiable", observations=n, censored=n_cut, order_statistic_k=k,
        current_prediction_multiplier=current_m, proposed_factor=factor,
        prediction_multiplier=round(current_m * factor, 4), budget_margin=margin, budget_floor=int(floor),
        previous_budget_floor=int(previous_floor),
        truncated_past_calls_projected=truncated[0], truncated_past_calls_with_previous_floor=truncated[1],
        note=(f"Unidentifiable: {n_cut} of {n} observations were truncated; a {100 - target_pct:g}% bound from {n} "
              f"can absorb at most {max(0, n - k)}. From lower bounds: factor x{factor:.3f} (the "
              f"larger of the largest clean ratio and the {FACTOR_PHASE_TARGET_PCT:.2f}% bound's ratio with ceilings "
              f"counted as lengths, / {UNDER_TOLERANCE}), margin x{margin:.3f} ({how}), floor {floor} (was "
              f"{previous_floor}); collect more samples."))


def _censored_margin(group: GroupObservationsInForce, factor: float, k: int) -> tuple[float, str]:
    """(margin, how) of an unidentifiable group, on its ratios against the new prediction.

    Where its 98% rank lies inside the data (``k <= N``), the ratio where the group's own Kaplan-Meier
    estimate (truncated calls right-censored at their ceilings) reaches ``k / N``: without truncations
    that is the k-th smallest ratio, the identifiable rule, and the censoring is as independent of a
    call's own noise as in the pooled bound (a budget is fixed before the call). It is capped as the
    pooled bound is, by the k-th smallest with truncated calls at ``CENSORED_HEADROOM`` x their
    ceilings, which is also the margin when the estimate never reaches ``k / N`` (truncations above
    every clean call: then the rank must cover truncated calls, and nothing says by how much). Covering
    every clean call and every ceiling x1.25 (the earlier rule) ignored the ``N - k`` calls the rank
    allows above (length-world seed 43's implementation/low after round 2, 6 of 156 truncated:
    margin x1.831 where the estimate gives x1.100, the largest clean ratio). A group too small for the rank (``k > N``)
    has no such allowance: its margin still covers every clean call and every ceiling x1.25."""
    # Ascending already when the group has its distinct pairs (group_observations.RatioPairs): the
    # values np.sort gives, so the estimate reads them as they are.
    clean, ascending = scaled_ratios(group, factor)
    ceilings = group.censored_ceiling / (group.censored_predicted * factor)
    n = len(clean) + len(ceilings)
    rank = min(k, n)
    # order_statistics: np.partition's value (the same selection, or the exact k-th of a range around it).
    cap = order_statistics(np.r_[clean, CENSORED_HEADROOM * ceilings], [rank - 1], overwrite=True)[rank - 1]
    if k > n:
        return cap, f"every clean call, and {CENSORED_HEADROOM}x every ceiling hit"
    point = kaplan_meier_point(clean, ceilings, k / n - 1e-12, ascending=ascending)
    if point is not None and point < cap:
        return point, f"the Kaplan-Meier {k}/{n} point of its ratios, truncated calls censored at their ceilings"
    return cap, f"the {k}-th of {n} ratios with truncated calls at {CENSORED_HEADROOM}x their ceilings"


def observations_for_bound(target_pct: float) -> int:
    """Observations needed for an order-statistic bound at ``target_pct``: the least n with k <= n."""
    n = 1
    while order_statistic_index(n, target_pct) > n:
        n += 1
    return n



def _margin_in_force(table: CoefficientTable, key: tuple[str, str]) -> float:
    """The group's calibrated margin, or the base margin (an approximation of the rules' margin)."""
    setting = table.group_setting(*key)
    if setting is not None and setting.budget_margin is not None:
        return setting.budget_margin
    return table.budget.doc_models.margin if key[0] in table.budget.doc_models.categories else table.budget.buffer_margin


def pooled_margins(observed: Sequence[GroupObservationsInForce], factors: dict[tuple[str, str], float], *,
                   target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT, min_samples: int = 5,
                   truncation_target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT,
                   reach_headroom: float = THIN_MARGIN_HEADROOM, retry_factor: float | None = None,
                   retries: RetryOutcomes | None = None, pool_scales: bool = False
                   ) -> dict[tuple[str, str], tuple[float, str]]:
    """Per group, (margin, why) from the pooled tail shape (``domain.pooled_margin``), for the groups
    whose own calls do not refuse it; the others keep their own order statistic. Margins are measured
    against the new prediction (the current one x the group's proposed factor). A thin group (too few
    observations for its own bound at ``truncation_target_pct``, the rule's ``thin`` status, whatever
    ``target_pct`` this bound is at) gets no more than its reach, ``reach_headroom`` x its largest ratio.
    ``pool_scales`` (the budget margins): the groups' scales partly pooled first (``domain.scale_pooling``)."""
    shapes = []
    for g in observed:
        key = (g.category, g.complexity)
        if len(g.actual) + len(g.censored_ceiling) < min_samples or not len(g.actual):
            continue
        scale = factors.get(key, 1.0)
        ascending = scale == 1.0 and g.ratios_ascending is not None
        if ascending:  # actual / (predicted x 1) are the group's ratios, sorted already: a copy becomes the logs
            ratios = g.ratios_ascending.copy()
        else:  # the scaled ratios, a fresh array that becomes the logs (one temporary), ascending already when
            # the group has its distinct pairs (group_observations.RatioPairs: group_shape then checks the order)
            ratios, ascending = scaled_ratios(g, scale)
        shape = group_shape(key, ratios, g.censored_ceiling / (g.censored_predicted * scale), overwrite=True,
                            ascending=ascending)
        if shape is not None:
            shapes.append(shape)
    if pool_scales:
        shapes = scales_pooled(shapes)
    return pooled_group_margins(shapes, target_pct, thin_below=observations_for_bound(truncation_target_pct),
                                headroom=reach_headroom, retry_factor=retry_factor, retries=retries)


def calibration_section(
    groups: Sequence,
    table: CoefficientTable,
    factors: dict[tuple[str, str], float],
    *,
    min_samples: int = 5,
    target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT,
    pooled_factors: bool = False,
    retries: RetryOutcomes | None = None,
) -> dict:
    """The patch's ``calibration`` block from coverage groups (``domain.analysis.CoverageGroup``, whose
    predictions are in force) and the proposed prediction factor of each group (1 when absent).
    ``pooled_factors`` (for the coverage method's factors only) raises each factor to the pooled
    coverage bound where that is higher (:func:`raise_to_pooled_coverage`).

    Every group with ``min_samples`` observations gets settings, and so does a smaller group with a
    truncated call (a floor raise); a group too small and never truncated only needs more samples.

    ``retries``: the escalated retries among the events the groups come from
    (``domain.analysis.retries``), how often a cut call's retry is cut again, which sets the share of
    first calls the truncation margins may leave cut (``pooled_margin.retry_cut_chance``).

    In two steps, :func:`pooled_section` (every group together) and :func:`section_of` (each group
    alone), which a caller may run on two threads.
    """
    pooled = pooled_section(groups, factors, min_samples=min_samples, target_pct=target_pct,
                            pooled_factors=pooled_factors, retries=retries)
    return section_of(pooled, table, min_samples=min_samples, target_pct=target_pct)


@dataclass(frozen=True)
class PooledSection:
    """What :func:`calibration_section` reads off the groups together: their observations, their factors
    (raised to the pooled coverage bound when asked) and the pooled margins the groups' calls accept."""

    observed: list[GroupObservationsInForce]
    factors: dict[tuple[str, str], float]
    margins: dict[tuple[str, str], tuple[float, str]]


def pooled_section(groups: Sequence, factors: dict[tuple[str, str], float], *, min_samples: int = 5,
                   target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT, pooled_factors: bool = False,
                   retries: RetryOutcomes | None = None,
                   coverage_bounds: dict[tuple[str, str], tuple[float, str]] | None = None) -> PooledSection:
    """:func:`calibration_section`'s first step: the pooled passes. ``coverage_bounds``: with
    ``pooled_factors``, :func:`pooled_coverage_bounds` of the same groups, when found already."""
    observed = _observed(groups, min_samples)
    if pooled_factors:
        factors = raise_to_pooled_coverage(observed, factors, min_samples=min_samples, truncation_target_pct=target_pct,
                                           bounds=coverage_bounds)
    # Tier 1 counts the escalated retry of a cut call as a call too (see pooled_margin.first_call_target).
    pooled = pooled_margins(observed, factors, target_pct=target_pct, min_samples=min_samples,
                            retry_factor=ESCALATION_FACTOR, retries=retries, pool_scales=True)
    return PooledSection(observed, factors, pooled)


def _observed(groups: Sequence, min_samples: int) -> list[GroupObservationsInForce]:
    """The coverage groups with settings (``min_samples`` observations, or a truncation), in force."""
    return [observations_in_force(group) for group in groups
            if group.size >= min_samples or len(group.censored_rows) > 0]


def pooled_coverage_bounds(groups: Sequence, *, min_samples: int = 5,
                           truncation_target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT
                           ) -> dict[tuple[str, str], tuple[float, str]]:
    """The pooled bounds :func:`raise_to_pooled_coverage` raises the coverage factors to, of the coverage
    groups :func:`pooled_section` reads: the groups alone decide them, not the factors."""
    return _pooled_coverage_bounds(_observed(groups, min_samples), min_samples, truncation_target_pct)


def _pooled_coverage_bounds(observed: Sequence[GroupObservationsInForce], min_samples: int,
                            truncation_target_pct: float) -> dict[tuple[str, str], tuple[float, str]]:
    return pooled_margins(observed, {}, target_pct=FACTOR_PHASE_TARGET_PCT, min_samples=min_samples,
                          truncation_target_pct=truncation_target_pct, reach_headroom=CENSORED_HEADROOM)


def section_of(pooled: PooledSection, table: CoefficientTable, *, min_samples: int = 5,
               target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT) -> dict:
    """:func:`calibration_section`'s second step: each group's settings (:func:`propose_group_budget`).

    A group whose settings the other method's section is computing at the time (the same figures:
    ``shared_figures``) is passed over and taken after the others, so the two sections, on two
    threads, share those groups' work rather than one waiting."""
    def proposal(g: GroupObservationsInForce, wait: bool) -> GroupBudgetProposal:
        key = (g.category, g.complexity)
        return propose_group_budget(g, table, proposed_factor=pooled.factors.get(key, 1.0), target_pct=target_pct,
                                    min_samples=min_samples, pooled=pooled.margins.get(key), wait=wait)

    first = [proposal(g, wait=False) for g in pooled.observed]
    proposals = [proposal(g, wait=True) if found is BUSY else found for g, found in zip(pooled.observed, first)]
    return {
        "coefficient_file_version": table.version,
        "target_truncation_pct": target_pct,
        "groups": [p.as_dict() for p in proposals],
    }


def raise_to_pooled_coverage(observed: Sequence[GroupObservationsInForce], factors: dict[tuple[str, str], float], *,
                             min_samples: int = 5, truncation_target_pct: float = DEFAULT_TRUNCATION_TARGET_PCT,
                             bounds: dict[tuple[str, str], tuple[float, str]] | None = None
                             ) -> dict[tuple[str, str], float]:
    """The coverage factors, each raised to the larger of its group's own bound and its pooled bound at
    the phase target (``targets.FACTOR_PHASE_TARGET_PCT``), / the 1.1 tolerance, where that is higher.
    A pooled group whose truncations left the coverage method no bound gets the larger of the two as
    its factor (its own alone left simulated seed 41's implementation/high, 4 of 69 truncated in round 1,
    at 8-12% of calls underestimated for three rounds); other groups without a factor (not
    actionable) are left out.

    The coverage method's factor is the group's own k-th ratio at 5% of its observations, one per
    phase. Tier 1 counts calls, and every truncation adds a retried call of a phase that is already
    above the tolerance, so 5% of phases is more than 5% of calls whenever anything truncates
    (simulated seed 31, round 4: 5.3% of phases, 7.2% of calls). Both bounds are therefore taken at
    the share of phases that keeps the calls within 5% when truncation is at its 2% target: the
    group's own (``coverage_factor.own_coverage_factor``, the coverage rule with truncated calls censored),
    and the pooled one (``domain.pooled_margin``, the rule the margins use, here at the phase target):
    the pooled bound takes the tail's shape from all groups' calls with 90% confidence, where a
    group's own k-th ratio of ~150 observations covers only on average (its coverage is
    Beta(k, N + 1 - k), a standard deviation of about 1.5 points), so it no longer rests on a
    group's few largest ratios. It only raises: a factor moves predictions, not budgets (margins are
    measured against the new prediction), so the cost is prediction waste, never truncation or
    budget waste. A thin group's pooled bound (``truncation_target_pct`` says which are thin) stops
    at its reach, so the pooled bound never raises its factor past ``CENSORED_HEADROOM`` x its
    largest ratio / 1.1 (:func:`pooled_margins`); its own bound is at most its largest ratio (a
    truncated call's ceiling counting as one).
    """
    chosen = {key: factor for key, factor in factors.items()}
    if bounds is None:  # else :func:`pooled_coverage_bounds` of the same groups, found before
        bounds = _pooled_coverage_bounds(observed, min_samples, truncation_target_pct)
    for group in observed:
        key = (group.category, group.complexity)
        left_without = key in bounds and coverage_has_no_bound(len(group.actual) + len(group.censored_ceiling),
                                                                len(group.censored_ceiling))
        if (key not in factors and not left_without) or not len(group.actual):
            continue
        own = own_coverage_factor(group)
        pooled = bounds[key][0] / UNDER_TOLERANCE if key in bounds else 0.0
        chosen[key] = max(factors.get(key, 1.0), own, pooled)
    return chosen
