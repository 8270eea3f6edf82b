"""The frontier of one (category, complexity) group: what its observed spread lets Tier 1 and Tier 2 reach.

Inputs are the group's observations as the ``coverage`` method sees them: the clean ratios
``r = actual / predicted`` and the number of truncated (censored) observations. A truncated call's
real output is only known to be at least the ceiling it hit, so it counts as exceeding every
candidate below, never as fitting (the coverage method's rule).

With a prediction multiplier ``m`` and a budget margin ``b`` (budget = ``b * m * predicted``):

- underestimation(m) = #{r > tolerance * m} + censored, over all N observations;
- truncation(m, b) = #{r > b * m} + censored, over N;
- prediction waste P90(m) = P90 of ``m / r`` (= m * predicted / actual) over the clean observations;
- budget waste P90(m, b) = P90 of ``b * m / r`` over the clean observations the budget fits
  (r <= b * m): the calls that would not truncate.

Truncation and budget waste depend on ``b * m`` only, so the cheapest (m, b) meeting Tier 1 is found
exactly, from order statistics: the smallest ``m`` that meets the underestimation target and the
smallest budget multiple ``b * m`` that meets the truncation target, with ``b`` at least
``min_margin`` (a budget below its prediction makes no sense). Budgets here are proportional to the
prediction (no floors, no cap): the frontier is a property of the spread, what the benchmark's oracle
reaches; floors can only lower truncation and raise waste.

Meeting a target on the observed calls is not the same as showing it holds: a rate is *certified*
when its Wilson 95% upper bound is at or below the target (peers §4.1). When it is not, the number of
observations that would certify it is reported (assuming no new observation exceeds). Everything is
deterministic; rates are vectorised over the grid with ``np.searchsorted`` on the sorted ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.order_statistics import _p90_positions
from autopack_pipeline.domain.analysis.rates import wilson_highs, wilson_interval
from autopack_pipeline.domain.targets import (
    BUDGET_WASTE_P90_TARGET,
    TRUNCATION_TARGET_PCT,
    UNDER_TOLERANCE,
    UNDERESTIMATION_TARGET_PCT,
)

# The grid the report's JSON carries: multipliers 0.25x to 16x in quarter-octave steps, margins 1x to 4x.
DEFAULT_MULTIPLIERS = tuple(round(2.0 ** (k / 4), 4) for k in range(-8, 17))
DEFAULT_MARGINS = (1.0, 1.1, 1.2, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
DEFAULT_MIN_MARGIN = 1.0
_DECIMALS = 3  # proposals are rounded up to this many decimals (rounding up never breaks a target)


def _allowed(target_pct: float, n: int) -> int:
    """How many of ``n`` observations may exceed while the rate stays at or under ``target_pct``."""
    return math.floor(Fraction(str(target_pct)) * n / 100)


def _round_up(value: float) -> float:
    scale = 10**_DECIMALS
    return round(math.ceil(round(value * scale, 6)) / scale, _DECIMALS)


def exceeding(sorted_ratios: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """#{r > x} for every ``x`` in ``thresholds`` (``sorted_ratios`` ascending)."""
    return len(sorted_ratios) - np.searchsorted(sorted_ratios, thresholds, side="right")


def scaled_reciprocal_p90(sorted_ratios: np.ndarray, scale: np.ndarray, count: np.ndarray) -> np.ndarray:
    """P90 of ``scale / r`` over the ``count`` smallest ratios, elementwise (NaN where ``count`` is 0).

    The same figure as ``p90_of(scale / sorted_ratios[:count])`` (the metrics' P90: statistics'
    'exclusive' quantile from 10 values on, else the maximum), without building each array: ``scale / r``
    over an ascending prefix is descending, so its q-th smallest value is ``scale / r[count - 1 - q]``.
    """
    scale, count = np.broadcast_arrays(np.asarray(scale, dtype=float), np.asarray(count, dtype=np.int64))
    out = np.full(scale.shape, np.nan)
    small = (count > 0) & (count < 10)
    if small.any():  # (a group of censored calls only has no ratio to index)
        out[small] = scale[small] / sorted_ratios[0]  # the maximum of scale / r
    at = count >= 10
    if at.any():
        # Each distinct count's positions once, gathered for every element: the same products and sums
        # elementwise as a pass per count, without the pass (a grid holds up to 250 counts; ~8 ms a calibration).
        distinct, which = np.unique(count[at], return_inverse=True)
        low, high, delta = np.array([_p90_positions(j) for j in distinct.tolist()], dtype=np.int64)[which].T
        j, mine = count[at], scale[at]
        v_low, v_high = mine / sorted_ratios[j - 1 - low], mine / sorted_ratios[j - 1 - high]
        out[at] = (v_low * (10 - delta) + v_high * delta) / 10
    return out


def observations_needed(exceeding_count: int, target_pct: float, *, at_least: int = 1) -> int:
    """The smallest n >= ``at_least`` at which ``exceeding_count`` of n has a Wilson 95% upper bound <= target.

    With no exceedance at all that is 73 observations for 5% and 189 for 2%.
    """
    def certified(n: int) -> bool:
        return wilson_interval(exceeding_count, n)[1] <= target_pct

    low = max(int(at_least), exceeding_count, 1)
    if certified(low):
        return low
    high = low * 2
    while not certified(high):
        low, high = high, high * 2
    while high - low > 1:  # certified(high) and not certified(low)
        middle = (low + high) // 2
        low, high = (low, middle) if certified(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class FrontierGrid:
    """Rates and wastes over a grid: rows are multipliers, columns margins (underestimation: rows only)."""

    multipliers: np.ndarray  # (M,)
    margins: np.ndarray  # (B,)
    observations: int
    under_count: np.ndarray  # (M,)
    truncation_count: np.ndarray  # (M, B)
    prediction_waste_p90: np.ndarray  # (M,), NaN without clean observations
    budget_waste_p90: np.ndarray  # (M, B), NaN where no clean observation fits

    def to_dict(self) -> dict[str, Any]:
        n = self.observations

        def pct(counts: np.ndarray) -> list:
            return (100.0 * counts / n).tolist() if n else np.zeros(counts.shape).tolist()

        def ci(counts: np.ndarray) -> list:
            return wilson_highs(counts, n).tolist() if n else []

        def figures(values: np.ndarray) -> list:
            return np.where(np.isnan(values), None, np.round(values, 4)).tolist()

        return {
            "multipliers": self.multipliers.tolist(),
            "margins": self.margins.tolist(),
            "underestimation_pct": pct(self.under_count),
            "underestimation_ci_high": ci(self.under_count),
            "truncation_pct": pct(self.truncation_count),
            "truncation_ci_high": ci(self.truncation_count),
            "prediction_waste_p90": figures(self.prediction_waste_p90),
            "budget_waste_p90": figures(self.budget_waste_p90),
        }


def frontier_grid(ratios: np.ndarray, censored: int, *, multipliers=DEFAULT_MULTIPLIERS, margins=DEFAULT_MARGINS,
                  tolerance: float = UNDER_TOLERANCE) -> FrontierGrid:
    """Underestimation, truncation and both wastes for every (multiplier, margin) of the grid."""
    return _grid_of_sorted(np.sort(np.asarray(ratios, dtype=float)), censored, multipliers=multipliers,
                           margins=margins, tolerance=tolerance)


def _grid_of_sorted(r: np.ndarray, censored: int, *, multipliers, margins, tolerance: float) -> FrontierGrid:
    """:func:`frontier_grid` of ratios sorted already (:func:`group_frontier`'s: not sorted twice)."""
    m = np.asarray(multipliers, dtype=float)
    b = np.asarray(margins, dtype=float)
    product = m[:, None] * b[None, :]
    fits = np.searchsorted(r, product, side="right")  # clean observations with r <= b * m
    return FrontierGrid(
        multipliers=m,
        margins=b,
        observations=len(r) + int(censored),
        under_count=exceeding(r, tolerance * m) + int(censored),
        truncation_count=len(r) - fits + int(censored),
        prediction_waste_p90=scaled_reciprocal_p90(r, m, np.full(m.shape, len(r))),
        budget_waste_p90=scaled_reciprocal_p90(r, product, fits),
    )


@dataclass(frozen=True)
class RateAtChoice:
    count: int
    pct: float
    ci: tuple[float, float]
    target_pct: float

    @property
    def certified(self) -> bool:
        return self.ci[1] <= self.target_pct


@dataclass(frozen=True)
class GroupFrontier:
    """A group's frontier: the cheapest (m, b) meeting Tier 1, its figures, and whether Tier 2 holds too."""

    clean: int
    censored: int
    reachable: bool
    multiplier: float | None
    margin: float | None
    underestimation: RateAtChoice | None
    truncation: RateAtChoice | None
    prediction_waste_p90: float | None
    budget_waste_p90: float | None
    waste_target: float
    observations_needed: int | None  # to certify both rates; None when they are certified
    grid: FrontierGrid

    @property
    def observations(self) -> int:
        return self.clean + self.censored

    @property
    def budget_multiple(self) -> float | None:
        return None if self.multiplier is None else self.multiplier * self.margin

    @property
    def tier2_holds(self) -> bool | None:
        if self.budget_waste_p90 is None:
            return None
        return self.budget_waste_p90 < self.waste_target

    @property
    def certified(self) -> bool:
        return self.reachable and self.underestimation.certified and self.truncation.certified

    def verdict(self) -> str:
        """One paragraph a person reads: the cheapest point, the Tier-2 conflict if any, certification."""
        if not self.reachable:
            share = 100.0 * self.censored / self.observations if self.observations else 0.0
            return (f"Tier 1 is out of reach on this data: {self.censored} of {self.observations} observations "
                    f"({share:.1f}%) were truncated and count above every candidate multiplier and budget. "
                    f"Raise the budget floor so those calls finish, then collect: about {self.observations_needed} "
                    "observations (with no new truncation) would certify the targets.")
        u, t = self.underestimation, self.truncation
        text = (f"Cheapest Tier 1: x{self.multiplier:.3f} prediction, margin {self.margin:.3f} (budget "
                f"{self.budget_multiple:.3f}x prediction): underestimation {u.pct:.1f}% [95% CI up to {u.ci[1]:.1f}%], "
                f"truncation {t.pct:.1f}% [up to {t.ci[1]:.1f}%]; "
                f"prediction waste P90 {_x(self.prediction_waste_p90)}, "
                f"budget waste P90 {_x(self.budget_waste_p90)}. ")
        if self.tier2_holds:
            text += f"Tier 2 holds at the same time ({_x(self.budget_waste_p90)} < {self.waste_target:g}x)."
        elif self.tier2_holds is False:
            text += (f"Tier 1 needs budget waste P90 {_x(self.budget_waste_p90)} here; Tier 2 asks < "
                     f"{self.waste_target:g}x; Tier 1 wins, as the Telemetry Guide says.")
        if not self.certified:
            text += (f" Not certified on {self.observations} observations (a Wilson 95% upper bound is above its "
                     f"target): about {self.observations_needed} observations (with no new exceedance) are needed.")
        return text

    def to_dict(self, *, with_grid: bool = True) -> dict[str, Any]:
        def rate(value: RateAtChoice | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {"count": value.count, "pct": value.pct, "ci": list(value.ci), "target_pct": value.target_pct,
                    "certified": value.certified}

        out = {
            "observations": self.observations,
            "clean": self.clean,
            "censored": self.censored,
            "reachable": self.reachable,
            "multiplier": self.multiplier,
            "margin": self.margin,
            "budget_multiple": None if self.budget_multiple is None else round(self.budget_multiple, 6),
            "underestimation": rate(self.underestimation),
            "truncation": rate(self.truncation),
            "prediction_waste_p90": self.prediction_waste_p90,
            "budget_waste_p90": self.budget_waste_p90,
            "tier2_target": self.waste_target,
            "tier2_holds": self.tier2_holds,
            "certified": self.certified,
            "observations_needed": self.observations_needed,
            "verdict": self.verdict(),
        }
        if with_grid:
            out["grid"] = self.grid.to_dict()
        return out


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def group_frontier(
    ratios: np.ndarray,
    censored: int,
    *,
    tolerance: float = UNDER_TOLERANCE,
    under_target_pct: float = UNDERESTIMATION_TARGET_PCT,
    truncation_target_pct: float = TRUNCATION_TARGET_PCT,
    waste_target: float = BUDGET_WASTE_P90_TARGET,
    min_margin: float = DEFAULT_MIN_MARGIN,
    multipliers=DEFAULT_MULTIPLIERS,
    margins=DEFAULT_MARGINS,
    ascending: bool = False,
) -> GroupFrontier:
    """The frontier of one group from its clean ``ratios`` (actual / predicted) and ``censored`` count.
    ``ascending``: the ratios are sorted already (``CoverageGroup.ratios_ascending``), and only read."""
    r = np.asarray(ratios, dtype=float) if ascending else np.sort(np.asarray(ratios, dtype=float))
    if len(r) and not (np.isfinite(r).all() and r[0] > 0):
        raise ValueError("ratios must be positive and finite")
    censored = int(censored)
    n = len(r) + censored
    grid = _grid_of_sorted(r, censored, multipliers=multipliers, margins=margins, tolerance=tolerance)
    # Clean observations allowed above each threshold once the censored ones (always above) are counted.
    under_room = _allowed(under_target_pct, n) - censored
    truncation_room = _allowed(truncation_target_pct, n) - censored
    if n == 0 or under_room < 0 or truncation_room < 0:
        need = max(observations_needed(censored, target, at_least=n + 1)
                   for target in (under_target_pct, truncation_target_pct))
        return GroupFrontier(len(r), censored, False, None, None, None, None, None, None, waste_target, need, grid)

    # room < len(r) always holds here: room >= 0 needs censored <= target * n < n, and room <= target * n - censored.
    step = 10**-_DECIMALS
    multiplier = _round_up(r[len(r) - under_room - 1] / tolerance)
    while exceeding(r, np.array([tolerance * multiplier]))[0] > under_room:  # float dust after rounding
        multiplier = round(multiplier + step, _DECIMALS)
    margin = max(min_margin, _round_up(r[len(r) - truncation_room - 1] / multiplier))
    while exceeding(r, np.array([margin * multiplier]))[0] > truncation_room:
        margin = round(margin + step, _DECIMALS)

    def at_choice(threshold: float, target: float) -> RateAtChoice:
        k = int(exceeding(r, np.array([threshold]))[0]) + censored
        return RateAtChoice(k, 100.0 * k / n, wilson_interval(k, n), target)

    under = at_choice(tolerance * multiplier, under_target_pct)
    truncation = at_choice(margin * multiplier, truncation_target_pct)
    fits = int(np.searchsorted(r, margin * multiplier, side="right"))
    prediction_waste = scaled_reciprocal_p90(r, np.array([multiplier]), np.array([len(r)]))[0]
    budget_waste = scaled_reciprocal_p90(r, np.array([margin * multiplier]), np.array([fits]))[0]
    need = None
    if not (under.certified and truncation.certified):
        need = max(observations_needed(censored, under_target_pct, at_least=n),
                   observations_needed(censored, truncation_target_pct, at_least=n))
    return GroupFrontier(
        clean=len(r), censored=censored, reachable=True, multiplier=multiplier, margin=margin,
        underestimation=under, truncation=truncation,
        prediction_waste_p90=None if np.isnan(prediction_waste) else float(prediction_waste),
        budget_waste_p90=None if np.isnan(budget_waste) else float(budget_waste),
        waste_target=waste_target, observations_needed=need, grid=grid,
    )
