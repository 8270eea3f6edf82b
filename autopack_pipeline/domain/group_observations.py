"""One calibration group's observations under the coefficients in force: what the budget margins and
the factors' own bounds are computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GroupObservationsInForce:
    """One group's observations, predictions in force (before the proposed factor)."""

    category: str
    complexity: str
    predicted: np.ndarray  # clean samples
    actual: np.ndarray
    censored_predicted: np.ndarray  # truncated calls
    censored_ceiling: np.ndarray  # the ceiling each truncated call hit (at least its output)
    # ``actual / predicted`` ascending, when the coverage group has them sorted (``ratios_ascending``): the
    # group's own coverage factor and a pooled pass at factor 1 read them without sorting them again.
    ratios_ascending: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The distinct (predicted, actual) pairs in ratio order (``CoverageGroup.ratio_pairs``), when known.
    ratio_pairs: RatioPairs | None = field(default=None, compare=False, repr=False)


def observations_in_force(group: Any) -> GroupObservationsInForce:
    """A coverage group (``domain.analysis.CoverageGroup``) as the budget margins read it: one object per
    group for every method's pooled pass, kept on the group, so what is read off it once (its own coverage
    factor, ``coverage_factor.own_coverage_factor``) is not computed again for each method."""
    kept = group.__dict__.get("_observations_in_force")
    if kept is None:
        kept = group.__dict__["_observations_in_force"] = GroupObservationsInForce(
            group.key[0], group.key[1], np.asarray(group.predicted, dtype=float), np.asarray(group.actual, dtype=float),
            np.asarray(group.censored_predicted, dtype=float),
            np.asarray(group.bounds * group.censored_predicted, dtype=float),
            # CoverageGroup.ratios is actual / predicted of these columns: the same floats, sorted.
            getattr(group, "ratios_ascending", None), getattr(group, "ratio_pairs", None))
    return kept


def scaled_ratios(group: GroupObservationsInForce, factor: float) -> tuple[np.ndarray, bool]:
    """(``actual / (predicted x factor)`` of the clean samples, a fresh float64 array the caller may overwrite;
    whether it is ascending). With the group's :class:`RatioPairs` each distinct pair's quotient is computed
    once, the few sorted and repeated (:meth:`RatioPairs.ascending_scaled`), else per call in the calls' order:
    the same quotient of the same two floats for every call either way."""
    if group.ratio_pairs is not None:
        return group.ratio_pairs.ascending_scaled(factor), True
    ratios = group.predicted * factor
    np.divide(group.actual, ratios, out=ratios)
    return ratios, False


@dataclass(frozen=True)
class RatioPairs:
    """A group's distinct (predicted, actual) token pairs, ascending by ``actual / predicted``, and how many
    clean calls have each. Token counts are whole numbers, and at ten million events a group's 1.4M calls
    have about 200k distinct pairs: a quotient ``actual / (predicted x factor)`` of every call (each pooled
    pass, an unidentifiable group's margin) is then computed and sorted per pair, nearly ascending already
    in this order (timsort merges it), and repeated, where quicksort sorted every call's quotient anew (35
    against 375 ms for the 7.3M calls of all groups, three times per calibration). The sorted values are
    the same: equal quotients of equal floats are equal, and none is zero or NaN (:meth:`of`)."""

    keys: np.ndarray  # int64: predicted << 32 | actual
    counts: np.ndarray  # int32 or int64: the calls with each pair

    @classmethod
    def of(cls, predicted: np.ndarray, actual: np.ndarray) -> RatioPairs | None:
        """The pairs of the calls' ``predicted`` and ``actual`` (floats), or None unless every count is a whole
        number below 2**31 (to fit its half of the key), every predicted one at least 0 and every actual one
        at least 1: every ratio is then positive or infinite (no zero, whose -0.0 and 0.0 tie, and no NaN), so
        equal ratios are equal bits and the sorted values are those ``np.sort`` gives."""
        if not len(predicted):
            return None
        # int32 (half the temporaries of int64: they are made beside the pooled passes' peak at ten million
        # events); a NaN, an infinity or a count past 2**31 becomes an integer that compares unequal.
        with np.errstate(invalid="ignore"):
            whole_p, whole_a = predicted.astype(np.int32), actual.astype(np.int32)
        if not (np.array_equal(whole_p, predicted) and np.array_equal(whole_a, actual)
                and int(whole_p.min()) >= 0 and int(whole_a.min()) >= 1
                and max(int(whole_p.max()), int(whole_a.max())) < 2**31):
            return None
        keys, counts = _distinct_pairs(whole_p, whole_a)
        del whole_p, whole_a
        with np.errstate(divide="ignore"):  # a zero prediction: an infinite ratio, as CoverageGroup.ratios holds
            ratios = _actual(keys) / _predicted(keys)
        order = np.argsort(ratios)
        counts = counts[order]
        return cls(keys[order], counts.astype(np.int32) if counts.max() < 2**31 else counts)

    def ascending_ratios(self) -> np.ndarray:
        """Every call's ``actual / predicted``, ascending: ``np.sort`` of them, the same floats."""
        with np.errstate(divide="ignore"):  # as in of(): the quotients the group's ratios already hold
            return np.repeat(_actual(self.keys) / _predicted(self.keys), self.counts)

    def ascending_scaled(self, factor: float) -> np.ndarray:
        """Every call's ``actual / (predicted x factor)``, ascending (``np.sort`` of them, the same floats)."""
        scaled = _predicted(self.keys)
        scaled *= factor
        np.divide(_actual(self.keys), scaled, out=scaled)
        order = np.argsort(scaled, kind="stable")  # nearly ascending already: timsort's runs
        return np.repeat(scaled[order], self.counts[order])


def _distinct_pairs(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ``predicted << 32 | actual`` keys ascending (int64), how many calls have each) of
    non-negative int32 counts (``predicted`` is overwritten). Counted in a table of (predicted value, actual
    value) cells when both kinds' values span a narrow enough range and their distinct values make few
    enough cells: a group's predictions take few values (27 across the 1.4M calls of the largest at ten
    million events), so its 200k pairs are found by four passes and a count (~15 ms) where ``np.unique``
    sorted every call's key (~100 ms); else by ``np.unique``."""
    n = len(predicted)
    limit = 4 * n + (1 << 16)
    low_p, low_a = int(predicted.min()), int(actual.min())
    span_p, span_a = int(predicted.max()) - low_p + 1, int(actual.max()) - low_a + 1
    if span_p <= limit and span_a <= limit:
        predicted -= low_p
        shifted_a = actual - low_a
        # Each kind's values, and each value's code among them (ascending, so the cells keep the keys' order).
        seen_p = np.bincount(predicted, minlength=span_p) > 0
        seen_a = np.bincount(shifted_a, minlength=span_a) > 0
        values_p, values_a = np.flatnonzero(seen_p), np.flatnonzero(seen_a)
        if len(values_p) * len(values_a) <= limit:
            # int32 cells: at most ``limit`` of them
            code_p = np.cumsum(seen_p, dtype=np.int32) - 1
            code_a = np.cumsum(seen_a, dtype=np.int32) - 1
            cell = code_p[predicted]
            cell *= len(values_a)
            cell += code_a[shifted_a]
            counts = np.bincount(cell, minlength=len(values_p) * len(values_a))
            del cell
            present = np.flatnonzero(counts)
            keys = values_p[present // len(values_a)] + low_p
            keys <<= 32
            keys |= values_a[present % len(values_a)] + low_a
            return keys, counts[present]
        predicted += low_p
    keys = predicted.astype(np.int64)
    keys <<= 32
    keys |= actual
    return np.unique(keys, return_counts=True)


def _predicted(keys: np.ndarray) -> np.ndarray:
    return (keys >> 32).astype(np.float64)


def _actual(keys: np.ndarray) -> np.ndarray:
    return (keys & 0xFFFFFFFF).astype(np.float64)
