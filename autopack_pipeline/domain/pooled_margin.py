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
- a score per call, ``(log ratio - location) / scale``; a truncated call's score is only known to
  be above the score of the ceiling it hit (right-censored);
- one bound ``q`` from all groups' scores pooled: the score where the Kaplan-Meier estimate of their
  distribution reaches ``k / M``, ``k = ceil((M + 1) * (1 - target))``. Without truncations that is
  the k-th smallest score, the split-conformal bound, on several hundred calls where each group
  alone had ~80, so its rank falls inside the data, not on its maximum. With truncations, each one's
  share moves to the clean scores above its ceiling (Kaplan-Meier's redistribution): a call is
  truncated because its budget, fixed before the call, was short, so the censoring point does not
  depend on the call's own noise, the condition under which that estimate is consistent. Counting
  truncated calls as +infinity instead (the coverage method's rule) leaves no bound as soon as a
  pool holds more truncations than ``M - k``, which after a drift is the usual case;
- the group's margin ``exp(location + scale * q)``.

For a new call exchangeable with the pooled ones, ``P(score > q) <= target`` (exactly so without
truncations, in the estimate's limit with them): the guarantee is over the groups together. A group whose own tail is heavier than the pool's breaks it for itself;
that shows in its own past calls, so each group is checked (:func:`own_tail_contradicts`): the
number of its calls above its pooled margin is compared with a binomial(N, target) (a truncated
call counts as above when its ceiling already is, otherwise with the pooled estimate's probability
of being above given that it passed its ceiling); when that many or more would happen with
probability under ``CHECK_ALPHA``, the pooled margin is refused and the group keeps its own bound.
The check is sized to the group's N: 3 of 80 above passes (p 0.22), 5 of 80 does not (p 0.02).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from autopack_pipeline.domain.fast_metrics.coverage_rules import order_statistic_index

# The upper spread's end: the 80th percentile is the 16th largest of 80 calls, stable, and finite
# until a fifth of a group's calls are truncated.
SCALE_QUANTILE = 0.80
# A group with fewer usable observations has no location or scale worth pooling.
MIN_SHAPE_OBSERVATIONS = 10
# The level at which a group's own calls refuse the pooled margin (one-sided binomial tail).
CHECK_ALPHA = 0.05
# A scale below this (in log units, ~1%) is a group whose ratios barely vary: no tail to scale.
MIN_SCALE = 0.01


@dataclass(frozen=True)
class GroupShape:
    """One group's log ratios (against the new prediction) reduced to where they sit and spread."""

    key: tuple[str, str]
    location: float
    scale: float
    log_ratios: np.ndarray  # clean calls
    censored_logs: np.ndarray  # truncated calls: log(ceiling / new prediction), a lower bound

    @property
    def censored(self) -> int:
        return len(self.censored_logs)

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean scores, truncated calls' lower bounds)."""
        return (self.log_ratios - self.location) / self.scale, (self.censored_logs - self.location) / self.scale

    def margin(self, q: float) -> float:
        return float(math.exp(self.location + self.scale * q))


def _nearest_rank(values: np.ndarray, quantile: float) -> float:
    return float(values[max(1, math.ceil(quantile * len(values) - 1e-9)) - 1])


def group_shape(key: tuple[str, str], ratios: np.ndarray, censored_ratios: np.ndarray) -> GroupShape | None:
    """The group's location and scale, or None when it has too few calls or too many truncated for
    its upper spread to be seen (``SCALE_QUANTILE`` falls on a truncated call, counted above every
    clean one: its length is unknown)."""
    logs = np.log(np.asarray(ratios, dtype=float))
    logs = logs[np.isfinite(logs)]
    cut = np.log(np.asarray(censored_ratios, dtype=float))
    cut = cut[np.isfinite(cut)]
    if len(logs) + len(cut) < MIN_SHAPE_OBSERVATIONS:
        return None
    values = np.r_[np.sort(logs), np.full(len(cut), np.inf)]
    location, upper = _nearest_rank(values, 0.5), _nearest_rank(values, SCALE_QUANTILE)
    if not math.isfinite(upper):
        return None
    return GroupShape(key, location, max(upper - location, MIN_SCALE), logs, cut)


def kaplan_meier(clean: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct clean values ascending, the estimated P(value <= each)) of right-censored data:
    ``censored`` values are lower bounds. At a tie a clean value comes before a censored one."""
    values = np.r_[clean, censored]
    is_event = np.r_[np.ones(len(clean), bool), np.zeros(len(censored), bool)]
    order = np.lexsort((~is_event, values))
    values, is_event = values[order], is_event[order]
    at_risk, survival, points, cdf = len(values), 1.0, [], []
    for value, event in zip(values.tolist(), is_event.tolist()):
        if event:
            survival *= 1 - 1 / at_risk
            if points and points[-1] == value:
                cdf[-1] = 1 - survival
            else:
                points.append(value)
                cdf.append(1 - survival)
        at_risk -= 1
    return np.asarray(points), np.asarray(cdf)


def pooled_bound(shapes: Sequence[GroupShape], target_pct: float) -> tuple[float, int, int] | None:
    """(q, k, M): the least pooled score whose Kaplan-Meier probability reaches ``k / M``, or None
    when the estimate never does (the truncated calls' share stays above every clean score)."""
    if not shapes:
        return None
    clean = np.concatenate([shape.scores()[0] for shape in shapes])
    censored = np.concatenate([shape.scores()[1] for shape in shapes])
    m = len(clean) + len(censored)
    k = order_statistic_index(m, target_pct)
    if k > m:
        return None
    points, cdf = kaplan_meier(clean, censored)
    reached = np.nonzero(cdf >= k / m - 1e-12)[0]
    return None if not len(reached) else (float(points[reached[0]]), k, m)


def own_tail_contradicts(shape: GroupShape, margin: float, target_pct: float,
                         survival: Callable[[float], float] | None = None) -> tuple[bool, float, float]:
    """(refused, calls above, p): whether the group's own calls make the pooled ``margin`` implausible,
    i.e. ``P(Binomial(N, target) >= calls above) < CHECK_ALPHA``. A truncated call whose ceiling is
    below the margin counts ``survival(margin score) / survival(its ceiling's score)`` (the pooled
    estimate's chance that it passed the margin too), or 1 when ``survival`` is not given."""
    from scipy.stats import binom  # scipy loads only when a patch is computed

    line = math.log(margin)
    above = float((shape.log_ratios > line).sum())
    for bound in shape.censored_logs.tolist():
        if bound >= line or survival is None:
            above += 1.0
        else:
            below = survival((bound - shape.location) / shape.scale)
            above += 1.0 if below <= 0 else min(1.0, survival((line - shape.location) / shape.scale) / below)
    n = len(shape.log_ratios) + shape.censored
    count = math.ceil(above - 1e-9)
    p = float(binom.sf(count - 1, n, target_pct / 100)) if count else 1.0
    return p < CHECK_ALPHA, above, p


def pooled_survival(shapes: Sequence[GroupShape]) -> Callable[[float], float]:
    """``P(score > s)`` of the pooled Kaplan-Meier estimate, as a function of ``s``."""
    clean = np.concatenate([shape.scores()[0] for shape in shapes])
    censored = np.concatenate([shape.scores()[1] for shape in shapes])
    points, cdf = kaplan_meier(clean, censored)

    def survival(s: float) -> float:
        at = np.searchsorted(points, s, side="right")
        return 1.0 if at == 0 else float(1 - cdf[at - 1])

    return survival
