"""Budget margins that borrow the tail's shape from every group: one pooled order statistic.

A group's own 98% bound is the k-th smallest of its ``N`` ratios with ``k = ceil((N + 1) * 0.98)``;
for the 50 to 99 observations a group has in a round, k = N: the margin is the largest ratio seen.
The largest of ~80 draws from a heavy tail swings from round to round, and each swing upward is
budget waste on every call of the group. Groups differ in where their ratios sit and how widely
they spread, far less in the *shape* of the tail beyond that. So, per group, on the log of
``actual / new prediction``:

- a location (the median) and a scale (the distance from the median to the ``SCALE_QUANTILE``-th
  quantile, the upper spread: the tail is what a margin covers), both nearest-rank order
  statistics with truncated calls counted above every value (a truncated call is longer than the
  ceiling it hit, by an unknown amount), so a few truncations do not move them;
- a score per call, ``(log ratio - location) / scale``, with the location and scale fitted without
  that call (cross-fitted, :meth:`GroupShape.scores`); a truncated call's score is only known to be
  above the score of the ceiling it hit (right-censored);
- one bound ``q`` from all groups' scores pooled: the score where the Kaplan-Meier estimate of their
  distribution reaches ``k / M``, with ``k`` the least rank whose order statistic covers at least
  ``1 - target`` of new calls with probability ``CONFIDENCE`` (a tolerance limit,
  :func:`confident_rank`; the split-conformal ``ceil((M + 1) * (1 - target))`` covers
  ``1 - target`` only on average, so about every other round would land above the target).
  Without truncations that is the k-th smallest score, on several hundred calls where each group
  alone had ~80, so its rank falls inside the data, not on its maximum. With truncations, each
  one's share moves to the clean scores above its ceiling (Kaplan-Meier's redistribution): a call
  is truncated because its budget, fixed before the call, was short, so the censoring point does
  not depend on the call's own noise, the condition under which that estimate is consistent.
  Counting truncated calls as +infinity (the coverage method's rule) leaves no bound as soon as a
  pool holds more truncations than ``M - k``, which after a drift is the usual case;
- the group's margin ``exp(location + scale * q)``.

For truncation margins the target is the share of *calls* cut, as Tier 1 counts it: a phase cut at
its budget is retried once at 1.25x, a second call that is cut again when the length passes that
too, so the bound is read at the share of phases' first calls that keeps first calls and retries
together at the target (:func:`first_call_target`; about 1.3% at a 2% target on a log-t tail).

For a new call exchangeable with the pooled ones, ``P(score > q) <= target`` with the stated
confidence (exactly so without truncations, in the estimate's limit with them), over the groups
together. A group whose own tail is heavier than the pool's breaks it for itself, and inside the
pool it raises every other group's margin (waste). Both show in its own past calls, so each group
is checked (:func:`own_tail_contradicts`), first against the bound of the *other* groups (a heavy
group leaves the pool before it sets everyone's bound), then against the final bound: the number
of its calls above its pooled margin is compared with a binomial(N, target) (a truncated call
counts as above when its ceiling already is, otherwise with the pooled estimate's probability of
being above given that it passed its ceiling); when that many or more would happen with
probability under ``CHECK_ALPHA``, the pooled margin is refused and the group keeps its own bound
(``domain.budget_calibration``). The check is sized to the group's N: 3 of 80 above passes
(p 0.22), 5 of 80 does not (p 0.02). A group too small for the check to have power (thin, the
caller says below what size) gets the pooled margin only up to its reach, a stated headroom over its
largest ratio (:func:`pooled_group_margins`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from autopack_pipeline.domain.analysis.coverage_rules import order_statistic_index
from autopack_pipeline.domain.analysis.retries import RetryOutcomes
from autopack_pipeline.domain.analysis.samples import stable_order
from autopack_pipeline.domain.binomial import Binomial
from autopack_pipeline.domain.group_shape import CENSORED_HEADROOM, GroupShape
from autopack_pipeline.domain.pooled_scores import PooledScores, ScorePool

# The confidence with which the pooled bound covers 1 - target of new calls (see the docstring).
CONFIDENCE = 0.90
# The level at which a group's own calls refuse the pooled margin (one-sided binomial tail).
CHECK_ALPHA = 0.05


def kaplan_meier(clean: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct clean values ascending, the estimated P(value <= each)) of right-censored data:
    ``censored`` values are lower bounds. At a tie a clean value comes before a censored one.

    The product-limit estimate in array form: sorted, each clean value multiplies the survival by
    ``1 - 1/at_risk``; ``np.cumprod`` multiplies in order, as a loop would (the pooled bound runs it
    over every call of every group, dozens of times per calibration)."""
    clean, censored = np.asarray(clean, dtype=float), np.asarray(censored, dtype=float)
    if _plainly_ordered(clean) and _plainly_ordered(censored):
        # Each kind sorted apart (numpy's vectorised sort of values, where a stable argsort of both
        # together cost most of an unidentifiable group's margin at 10M events) and merged by count:
        # the i-th smallest clean value has i clean values and the censored ones below it before it.
        points = np.sort(clean)
        return _product_limit(points, _event_positions(points, censored), len(clean) + len(censored))
    points, events, total = _stably_merged(clean, censored)
    return _product_limit(points, events, total)


def kaplan_meier_point(clean: np.ndarray, censored: np.ndarray, level: float, *, ascending: bool = False
                       ) -> float | None:
    """The least clean value at which :func:`kaplan_meier`'s estimate reaches ``level`` (None when it
    never does): the same estimate, read at one point. Every clean value's factor is still multiplied
    in order, but the estimate is not cut down to its distinct values: the first position reaching
    ``level`` holds the answer (the estimate only grows, so the last of its ties reaches it too, and
    a smaller value's last tie comes before it). ``ascending``: ``clean`` is sorted already (read as
    it is; with a NaN or a zero among the values they are merged in that order, the same values)."""
    clean, censored = np.asarray(clean, dtype=float), np.asarray(censored, dtype=float)
    if _plainly_ordered(clean) and _plainly_ordered(censored):
        points = clean if ascending else np.sort(clean)
        events = _event_positions(points, censored)
        total = len(clean) + len(censored)
    else:
        points, events, total = _stably_merged(clean, censored)
    reached = 1 - np.cumprod(1 - 1 / (total - events)) >= level  # _product_limit's cdf, before the ties
    first = int(np.argmax(reached)) if len(reached) else 0
    return float(points[first]) if len(reached) and reached[first] else None


def _event_positions(points: np.ndarray, censored: np.ndarray) -> np.ndarray:
    """Each of the ascending clean ``points``' position among all values in order (clean first at a
    tie): its index plus the censored values below it. Counted from the censored side, the fewer:
    a censored value below the i-th point is one with at most i points at or below it, so a bincount
    of those counts, summed up, gives them all (a binary search per point was most of the estimate)."""
    at_or_below = np.searchsorted(points, censored, side="right")
    below = np.cumsum(np.bincount(at_or_below, minlength=len(points) + 1)[:len(points)])
    return np.arange(len(points)) + below


def _stably_merged(clean: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(clean values ascending, their positions among all values, how many) by one stable sort of both."""
    values = np.r_[clean, censored]
    is_event = np.r_[np.ones(len(clean), bool), np.zeros(len(censored), bool)]
    order = stable_order(values)  # stable: clean values, listed first, precede censored at a tie
    events = np.flatnonzero(is_event[order])
    return values[order][events], events, len(values)


def _plainly_ordered(values: np.ndarray) -> bool:
    """No NaN and no zero: equal values are then equal bits, so which of them comes first cannot show
    (a zero may be -0.0, a NaN has no place), and a plain sort gives the stable order's values."""
    return bool(np.isfinite(values).all() and (values != 0).all()) if len(values) else True


def _product_limit(points: np.ndarray, events: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kaplan_meier` from the clean values ascending (``points``), each one's position among all
    ``total`` values in that order (ascending, clean first at a tie: ``events``)."""
    at_risk = total - events
    # A censored value multiplies the survival by 1, which changes no bit: only the events' factors
    # are multiplied, in order (cumprod multiplies one after the other, as a loop would).
    survival = np.cumprod(1 - 1 / at_risk)
    cdf = 1 - survival
    last_of_tie = np.r_[points[1:] != points[:-1], True] if len(points) else np.zeros(0, bool)
    return points[last_of_tie], cdf[last_of_tie]


def confident_rank(m: int, target_pct: float, confidence: float = CONFIDENCE) -> int:
    """The least k whose k-th smallest of ``m`` exchangeable values covers ``1 - target`` of new ones
    with probability ``confidence`` (the coverage of the k-th is Beta(k, m - k + 1)), and at least the
    split-conformal rank; ``m + 1`` when no rank reaches it."""
    # The least k with P(Binomial(m, 1 - target) <= k - 1) >= confidence: at most m, where that is 1.
    k = Binomial(m, 1 - target_pct / 100).least_reaching(confidence) + 1
    return max(k, order_statistic_index(m, target_pct))


def pooled_bound(shapes: Sequence[GroupShape], target_pct: float,
                 pooled: PooledScores | None = None) -> tuple[float, int, int] | None:
    """(q, k, M): the least pooled score whose Kaplan-Meier probability reaches ``k / M``, at most
    the k-th score with truncated calls taken at ``CENSORED_HEADROOM`` x their ceiling (also the
    bound when the estimate never reaches ``k / M``); None when ``k > M``. ``pooled``: the shapes'
    :class:`PooledScores`, when the caller has them already."""
    if not shapes:
        return None
    pooled = pooled or PooledScores.of(shapes)
    m = pooled.size
    k = confident_rank(m, target_pct)
    if k > m:
        return None
    reached = pooled.first_reaching(k / m - 1e-12)
    # Where truncations sit near the tail, few clean scores lie above them and the estimate's tail
    # rests on the very largest (a round of heavy truncation put q on single outliers: margins of
    # x7 to x13). It is capped by the k-th score with every truncated call taken as CENSORED_HEADROOM
    # times its ceiling, the length the unidentifiable rule of ``domain.budget_calibration`` assumes
    # too (Autopack's own escalation of a truncated call is +25%).
    cap = pooled.kth_smallest_capped(k)
    if reached is None:
        return cap, k, m
    return min(reached, cap), k, m


def retry_cut_chance(shapes: Sequence[GroupShape], pooled: PooledScores, q: float, retry_factor: float,
                     retries: RetryOutcomes | None = None) -> float:
    """``r``, the chance that a call cut at its budget is cut again at ``retry_factor`` x it.

    From the pooled estimate at the bound ``q``: per group, ``S(q + log(retry_factor) / scale) / S(q)``,
    the retry's ceiling in the group's own score units, weighted by the group's calls (1 when the
    estimate puts no mass past ``q``: nothing says the retry fits). That reading rests on the ~2% of
    pooled scores past ``q``, ~20 in a window of ~1,000 calls, many of them truncated (after a drift,
    most): the estimate's tail there is flat between its few clean scores, and ``r`` swung from 0.60
    to 0.92 between windows of one run. So when the window's own ``retries`` are given (each a direct
    trial: a length past b, does it pass 1.25 b? ``domain.analysis.retries``), ``r`` is their share cut
    again under a Beta prior worth one retry centred on the pooled reading: ``(cut_again + r_pooled) /
    (retried + 1)``. With no retry in the window that is the pooled reading; with the 2 to 78 the loop's
    windows held, the retries' own share within one retry's weight (docs/calibration-loop.md compares
    the estimators)."""
    beyond = float(pooled.survival(q))
    if beyond <= 0:
        reading = 1.0
    else:
        sizes = np.array([shape.observations for shape in shapes], dtype=float)
        retried = pooled.survival(q + math.log(retry_factor) / np.array([shape.scale for shape in shapes]))
        reading = min(1.0, float(np.dot(sizes, retried) / sizes.sum()) / beyond)
    if retries is None:
        return reading
    return (retries.cut_again + reading) / (retries.retried + 1)


def first_call_target(shapes: Sequence[GroupShape], pooled: PooledScores, q: float, target_pct: float,
                      retry_factor: float, retries: RetryOutcomes | None = None) -> float:
    """The share of phases' first calls that may pass their budget, in %, for the share of *calls* past
    their budget to be ``target_pct``, when each cut call is retried once at ``retry_factor`` x its budget.

    Tier 1 counts every call (Autopack writes one event per attempt), but margins are fitted on one
    observation per phase. A phase cut at budget b sends a second call at 1.25 b, which is cut again
    when its length passes that too: per phase, ``t + t r`` cut calls in ``1 + t`` calls, ``t`` the
    first call's chance, ``r`` the retry's given a cut. Holding that at the target needs
    ``t = target / (1 + r - target)``, ``r`` from :func:`retry_cut_chance` (at the bound ``q``, with
    the window's ``retries`` when given)."""
    r = retry_cut_chance(shapes, pooled, q, retry_factor, retries)
    return target_pct / (1 + r - target_pct / 100)


def _escalated_bound(shapes: Sequence[GroupShape], target_pct: float, pooled: PooledScores,
                     retry_factor: float | None, retries: RetryOutcomes | None = None
                     ) -> tuple[tuple[float, int, int] | None, float]:
    """(:func:`pooled_bound`, the first-call target it was read at): at ``target_pct`` when no retry is
    counted, else at :func:`first_call_target` with the retry's chance read at the bound for
    ``target_pct`` (read once: further out, past the pool's largest scores, the estimate has no mass
    left to say how often a retry is cut again). A pool too small for a rank at the first-call share
    (fewer than ~175 calls at 1.3%) keeps the bound at ``target_pct``, its largest rank there: no
    bound at all would leave every group to its own rule, a thin group to its largest ratio."""
    bound = pooled_bound(shapes, target_pct, pooled)
    if retry_factor is None or bound is None:
        return bound, target_pct
    first = first_call_target(shapes, pooled, bound[0], target_pct, retry_factor, retries)
    counted = pooled_bound(shapes, first, pooled)
    return (bound, target_pct) if counted is None else (counted, first)


def own_tail_contradicts(shape: GroupShape, margin: float, target_pct: float,
                         survival: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[bool, float, float]:
    """(refused, calls above, p): whether the group's own calls make the pooled ``margin`` implausible,
    i.e. ``P(Binomial(N, target) >= calls above) < CHECK_ALPHA``. A truncated call whose ceiling is
    below the margin counts ``survival(margin score) / survival(its ceiling's score)`` (the pooled
    estimate's chance that it passed the margin too), or 1 when ``survival`` is not given
    (``survival`` takes an array of scores)."""
    line = math.log(margin)
    above = float(shape.clean_above(line))
    bounds = shape.censored_logs
    if len(bounds):
        passed = np.ones(len(bounds))  # a ceiling at or above the margin, or no estimate to ask
        if survival is not None:
            # The margin's score asked with the ceilings' (one look-up of the estimate, not two): the
            # estimate of each point is its own, whatever points come with it.
            at = np.empty(len(bounds) + 1)
            np.subtract(bounds, shape.location, out=at[:-1])
            at[-1] = line - shape.location
            at /= shape.scale
            estimate = survival(at)
            below, beyond = estimate[:-1], estimate[-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                chance = np.where(below <= 0, 1.0, np.minimum(1.0, beyond / below))
            passed = np.where(bounds >= line, 1.0, chance)
        # Added one by one in the calls' order, as a running float sum (the counts stay exact).
        above = float(np.add.accumulate(np.concatenate(([above], passed)))[-1])
    n = len(shape.log_ratios) + shape.censored
    count = math.ceil(above - 1e-9)
    p = Binomial(n, target_pct / 100).sf(count - 1) if count else 1.0
    return p < CHECK_ALPHA, above, p


def pooled_group_margins(shapes: Sequence[GroupShape], target_pct: float, thin_below: int = 0,
                         headroom: float = CENSORED_HEADROOM, retry_factor: float | None = None,
                         retries: RetryOutcomes | None = None) -> dict[tuple[str, str], tuple[float, str]]:
    """Per group, (margin, why): the groups whose own calls accept the bound of the others form the
    pool; each of them whose own calls also accept the pool's bound gets its margin from it. A group
    left out keeps its own order statistic (the caller's rule).

    A thin group (fewer than ``thin_below`` observations) gets at most its reach, ``headroom`` x its
    largest ratio (:attr:`GroupShape.largest_ratio`): with ~20 calls it can neither show the pool's
    shape nor refuse it (4 of 21 calls above a 5% margin are needed to refuse), and in the pool such
    groups make (~120 calls, the README's first command) the confident rank sits among the pool's 3
    largest scores at 5%, on its largest at 2%: one or two other groups' outliers, set in the thin
    group's units (a x5.6 factor for a group whose 21 calls never passed x1.41). Its largest ratio is
    what its own calls show (a new call passes it with chance 1 / (N + 1), exchangeability alone);
    beyond it, the pool's shape may carry it by the stated ``headroom`` (the caller's, per target).
    Groups with more calls keep the pooled margin: there the rank falls inside the data and the check
    has power.

    ``retry_factor`` (truncation margins: the escalated retry's ceiling factor) reads every bound, and
    checks every group, at the first-call share that keeps all calls, retries counted, at the target
    (:func:`first_call_target`; ``retries``: the window's escalated retries, which ``r`` is read from)."""
    members = []
    pool = ScorePool.of_shapes(shapes)
    for index, shape in enumerate(shapes):
        others = [other for other in shapes if other is not shape]
        pooled = pool.subset([i for i in range(len(shapes)) if i != index]) if others else None
        bound, first = _escalated_bound(others, target_pct, pooled, retry_factor, retries) if others else (None, target_pct)
        if bound is None or not own_tail_contradicts(shape, shape.margin(bound[0]), first,
                                                     pooled.survival)[0]:
            members.append(shape)
    if not members:
        return {}
    member_ids = {id(shape) for shape in members}
    pooled = pool.subset([i for i, shape in enumerate(shapes) if id(shape) in member_ids])
    bound, first = _escalated_bound(members, target_pct, pooled, retry_factor, retries)
    if bound is None:
        return {}
    q, k, m = bound
    survival = pooled.survival
    chosen = {}
    for shape in members:
        thin = shape.observations < thin_below
        margin = min(shape.margin(q), headroom * shape.largest_ratio) if thin else shape.margin(q)
        refused, above, p = own_tail_contradicts(shape, margin, first, survival)
        if not refused:
            pooled_figure = (f"exp(median {shape.location:+.3f} + upper spread {shape.scale:.3f} x {q:.3f}), the "
                             f"pooled scores' {k}/{m} point over {len(members)} of {len(shapes)} groups"
                             + (f" (first calls at {first:.2f}%, their retries counted"
                                + (f"; {retries.cut_again} of the window's {retries.retried} retries cut again"
                                   if retries is not None else "") + ")" if first != target_pct else ""))
            if margin < shape.margin(q):
                pooled_figure = (f"{headroom:g} x the group's largest ratio (its reach), under the pooled "
                                 f"{shape.margin(q):.3f} = {pooled_figure}")
            chosen[shape.key] = (margin, f"{pooled_figure}; {above:.1f} own past calls above (binomial p {p:.2f})")
    return chosen
