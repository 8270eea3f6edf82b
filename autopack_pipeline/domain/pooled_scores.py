"""Every group's scores pooled, and the Kaplan-Meier estimate of any set of those groups, read off
one sorted order (``domain.pooled_margin`` pools the groups leaving one out at a time).

The product-limit estimate over a set's ``L`` sorted scores multiplies ``1 - 1/(L - i)`` at each
clean score (``i`` its index in the set's order; at a tie clean scores come before truncated ones).
The product of that factor over *every* index up to ``i`` telescopes to ``(L - i - 1) / L``, so

    S(after the clean score at i) = (L - i - 1) / L / prod over truncated scores before i of (1 - 1/(L - j))

and the estimate of a set is known from its truncated scores alone (a tenth of the calls), their
place in the set's order and a running sum of ``log1p(-1/(L - j))``: no pass over the clean scores
per set, which is what made leaving each of 35 groups out of eight million scores cost seconds.
This is ``pooled_margin.kaplan_meier``'s estimate (the tests hold it to it), equal to it up to
float rounding (about 1e-13 relative), not bit for bit: the product is summed in logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _stacked(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The parts end to end (as floats) and, per value, the index of its part."""
    # 16-bit group ids while they fit: numpy's stable sort of those is a radix sort (_ranks_by_group).
    ids = np.repeat(np.arange(len(parts), dtype=np.int16 if len(parts) < 1 << 15 else np.int32),
                    [len(part) for part in parts])
    return (np.concatenate(parts).astype(float, copy=False) if len(parts) else np.zeros(0)), ids


def _sorted_with_groups(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Not a stable sort: equal values are interchangeable in every figure read here (which group a
    # tied score belongs to changes no set's sequence of values), and the unstable one is 2x faster.
    # ``values`` are the caller's own (a stacked copy): sorted in place, as argsort put them (equal values
    # are equal bits), with no gathered copy beside them (a pooled pass's peak memory, and a random
    # gather slower than the vectorised sort). A zero may be -0.0, equal to 0.0 in another place than
    # argsort's: then the values are gathered.
    order = np.argsort(values)
    groups = groups[order]
    if not len(values) or (values == 0).any():
        return values[order], groups
    del order
    values.sort()
    return values, groups


def _ranks_by_group(groups: np.ndarray, count: int) -> list[np.ndarray]:
    """Per group, the positions (ascending) of its values in ``groups``."""
    order = np.argsort(groups, kind="stable")  # radix: the positions of each group stay ascending
    return np.split(order, np.cumsum(np.bincount(groups, minlength=count))[:-1])


def _stacked_clean_scores(shapes: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stacked` of the shapes' clean scores, each shape writing its own into one array of all of
    them (none kept on the shapes: at ten million events one copy of every score less at a pooled pass's
    peak)."""
    lengths = [len(shape.log_ratios) for shape in shapes]
    values = np.empty(sum(lengths))
    for shape, end, length in zip(shapes, np.cumsum(lengths), lengths):
        shape.write_pooled_clean_scores(values[end - length:end])
    return values, np.repeat(np.arange(len(shapes), dtype=np.int16 if len(shapes) < 1 << 15 else np.int32), lengths)


@dataclass(frozen=True)
class ScorePool:
    """Every group's clean scores, truncated calls' scores and headroom scores, each sorted once,
    with the group of each value; :meth:`subset` gives any set of groups' estimate from them."""

    clean: np.ndarray  # sorted
    clean_ranks: list[np.ndarray]  # per group, its positions in ``clean``
    censored: np.ndarray  # sorted
    censored_group: np.ndarray
    clean_before: np.ndarray  # per truncated score, how many clean scores precede it (ties: clean first)
    headroom: np.ndarray  # sorted
    headroom_ranks: list[np.ndarray]
    sizes: np.ndarray  # per group: clean + truncated scores

    @classmethod
    def of(cls, clean: Sequence[np.ndarray], censored: Sequence[np.ndarray], headroom: Sequence[np.ndarray]
           ) -> ScorePool:
        """From each group's clean scores, truncated calls' scores and headroom scores."""
        return cls._of_stacked(_stacked(clean), censored, headroom)

    @classmethod
    def _of_stacked(cls, clean: tuple[np.ndarray, np.ndarray], censored: Sequence[np.ndarray],
                    headroom: Sequence[np.ndarray]) -> ScorePool:
        """:meth:`of`, the clean scores given stacked (:func:`_stacked`'s values and group of each)."""
        count = len(censored)
        clean_values, clean_group = _sorted_with_groups(*clean)
        clean_sizes = np.bincount(clean[1], minlength=count) if len(clean[1]) else np.zeros(count, np.int64)
        del clean
        cut_values, cut_group = _sorted_with_groups(*_stacked(censored))
        head_values, head_group = _sorted_with_groups(*_stacked(headroom))
        sizes = clean_sizes.astype(np.int64) + np.array([len(b) for b in censored], dtype=np.int64)
        return cls(clean_values, _ranks_by_group(clean_group, count), cut_values, cut_group,
                   np.searchsorted(clean_values, cut_values, side="right"), head_values,
                   _ranks_by_group(head_group, count), sizes)

    @classmethod
    def of_shapes(cls, shapes: Sequence) -> ScorePool:
        """From ``group_shape.GroupShape`` values (their cross-fitted and headroom scores)."""
        # Passed straight on: the stacked scores are let go once sorted, before the groups' ranks are found.
        return cls._of_stacked(_stacked_clean_scores(shapes), [shape.plain_censored_scores for shape in shapes],
                               [shape.headroom_scores for shape in shapes])

    def subset(self, groups: Sequence[int] | range) -> PooledScores:
        """The pooled scores of the groups with these indices."""
        chosen = np.zeros(len(self.sizes), bool)
        chosen[list(groups)] = True
        left_out = np.flatnonzero(~chosen)

        def merged(ranks: list[np.ndarray]) -> np.ndarray:
            parts = [ranks[g] for g in left_out]
            return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

        out_clean, out_head = merged(self.clean_ranks), merged(self.headroom_ranks)
        cut_out = ~chosen[self.censored_group] if len(self.censored_group) else np.zeros(0, bool)
        out_cut_before = np.r_[0, np.cumsum(cut_out)]  # left-out truncated scores among the first j
        size = int(self.sizes[chosen].sum())
        kept = np.flatnonzero(~cut_out)
        # Index in the set's order of each of its truncated scores: the set's clean scores before it
        # plus the set's truncated scores before it.
        index = (self.clean_before[kept] - np.searchsorted(out_clean, self.clean_before[kept])
                 + kept - out_cut_before[kept])
        with np.errstate(divide="ignore"):  # a truncated score last of all: log(0), never read (cut_cap)
            steps = np.log1p(-1.0 / (size - index))
        # The estimate stops moving at the set's last clean score; truncated scores after it are not read.
        last = len(self.clean) - 1
        while last >= 0 and len(out_clean) and (i := np.searchsorted(out_clean, last)) < len(out_clean) \
                and out_clean[i] == last:
            last -= 1
        cut_cap = 0
        if last >= 0:
            seen = int(np.searchsorted(self.censored, self.clean[last], side="left"))
            cut_cap = seen - int(out_cut_before[seen])
        return PooledScores(self, chosen, size, out_clean, out_head, out_cut_before, np.r_[0.0, np.cumsum(steps)],
                            cut_cap)


@dataclass(frozen=True)
class PooledScores:
    """The scores of a set of groups (``chosen``) of a :class:`ScorePool`, and their Kaplan-Meier estimate."""

    pool: ScorePool
    chosen: np.ndarray
    size: int  # clean and truncated scores of the set
    out_clean: np.ndarray  # positions in pool.clean of the other groups' clean scores
    out_head: np.ndarray
    out_cut_before: np.ndarray
    log_correction: np.ndarray  # per count of the set's truncated scores passed: the sum of their log factors
    cut_cap: int  # the set's truncated scores before its last clean score

    @classmethod
    def of(cls, shapes: Sequence) -> PooledScores:
        """Every one of ``shapes`` (``group_shape.GroupShape``) pooled."""
        return ScorePool.of_shapes(shapes).subset(range(len(shapes)))

    def _clean_upto(self, clean_seen: np.ndarray) -> np.ndarray:
        """How many of the set's clean scores are among the pool's first ``clean_seen``."""
        return clean_seen - np.searchsorted(self.out_clean, clean_seen)

    def _survival_after(self, clean: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """The estimate once ``clean`` of the set's clean scores and ``cut`` of its truncated ones are passed."""
        cut = np.minimum(cut, self.cut_cap)
        passed = clean + cut
        with np.errstate(divide="ignore", invalid="ignore"):
            value = (self.size - passed) / self.size * np.exp(-self.log_correction[cut])
        return np.where(clean == 0, 1.0, value)

    def survival(self, s: np.ndarray | float) -> np.ndarray | float:
        """``P(score > s)`` of the pooled estimate, at each of ``s``."""
        at = np.atleast_1d(np.asarray(s, dtype=float))
        clean = self._clean_upto(np.searchsorted(self.pool.clean, at, side="right"))
        seen_cut = np.searchsorted(self.pool.censored, at, side="right")
        result = self._survival_after(clean, seen_cut - self.out_cut_before[seen_cut])
        return float(result[0]) if np.ndim(s) == 0 else result

    def first_reaching(self, cdf: float) -> float | None:
        """The least of the set's clean scores at which the estimated P(score <= it) reaches ``cdf``."""
        clean, pool = self.pool.clean, self.pool

        def reached(rank: int) -> bool:  # with the pool's clean scores up to ``rank`` passed
            seen_cut = int(np.searchsorted(pool.censored, clean[rank], side="left"))
            mine = self._clean_upto(np.array([rank + 1]))
            return bool(1 - self._survival_after(mine, np.array([seen_cut - self.out_cut_before[seen_cut]]))[0] >= cdf)

        low, high = 0, len(clean)  # the estimate only grows with the rank: bisect for the least reaching
        while low < high:
            middle = (low + high) // 2
            if reached(middle):
                high = middle
            else:
                low = middle + 1
        if low == len(clean):
            return None
        return float(clean[low])  # an equal score of the set (its clean score moved the estimate there)

    def kth_smallest_capped(self, k: int) -> float:
        """The k-th smallest of the set's clean scores and its truncated calls' headroom scores."""
        pool = self.pool

        def count_upto(value: float) -> int:
            clean = self._clean_upto(np.array([np.searchsorted(pool.clean, value, side="right")]))[0]
            head = int(np.searchsorted(pool.headroom, value, side="right"))
            return int(clean + head - np.searchsorted(self.out_head, head))

        best = np.inf
        for values, out in ((pool.clean, self.out_clean), (pool.headroom, self.out_head)):
            low, high = 0, len(values)
            while low < high:  # the least position whose value has k of the set's values at or below it
                middle = (low + high) // 2
                if count_upto(values[middle]) >= k:
                    high = middle
                else:
                    low = middle + 1
            # The value there may be another group's; the set's own next one is then the candidate.
            while low < len(values) and len(out) and (i := np.searchsorted(out, low)) < len(out) and out[i] == low:
                low += 1
            if low < len(values):
                best = min(best, float(values[low]))
        return best
