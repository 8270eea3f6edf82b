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


def _runs_of(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The parts end to end (as floats), each sorted in place: the array and each part's run (a view)."""
    values = np.concatenate(parts).astype(float) if len(parts) else np.zeros(0)
    ends = np.cumsum([len(part) for part in parts])
    runs = [values[end - len(part):end] for part, end in zip(parts, ends)]
    for run in runs:
        run.sort()
    return values, runs


def _stacked_clean_scores(shapes: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every shape's clean scores in one array, each shape writing its own in place (none kept on the
    shapes) and sorting them there: per shape, one ascending run (a view)."""
    lengths = [len(shape.log_ratios) for shape in shapes]
    values = np.empty(sum(lengths))
    runs = []
    for shape, end, length in zip(shapes, np.cumsum(lengths), lengths):
        mine = values[end - length:end]
        shape.write_pooled_clean_scores(mine)
        # Five ascending folds merged (one binary search per count instead of five): timsort ("stable")
        # merges the runs it finds, 3x faster here than quicksort's sort from scratch (the same values).
        mine.sort(kind="stable")
        runs.append(mine)
    return values, runs


def _count(runs: Sequence[np.ndarray], values: np.ndarray | float, side: str) -> np.ndarray | int:
    """How many values of the ascending ``runs`` together are below (``side`` left) or at most (right) each
    of ``values``."""
    if np.ndim(values) == 0:
        return _count_one(runs, values, side)
    return sum((np.searchsorted(run, values, side=side) for run in runs), np.zeros(np.shape(values), np.int64))


def _count_one(runs: Sequence[np.ndarray], value: float, side: str) -> int:
    """:func:`_count` of one value, as a Python int. The bisections below call it some 30,000 times per
    ``calibrate``: the array method is called directly (``np.searchsorted`` dispatches to it) and the
    counts are added as ints, without a zero array to start the sum from."""
    total = 0
    for run in runs:
        total += int(run.searchsorted(value, side))
    return total


def _upto_each(runs: Sequence[np.ndarray], sorted_values: np.ndarray) -> np.ndarray:
    """:func:`_count` (side right) of the ascending ``sorted_values``. A run much shorter than them is
    placed among them instead, value by value, and the placings summed up: one group's scores against
    every truncated score of the pool. Placing costs a search per score of the run and a count per value,
    searching one per value: at a million events (17,515 truncated scores) placing won below ~5,600
    scores (50 against 110 us at 500) and lost from ~6,900 (153 against 143 us; 313 against 182 at 15,900)."""
    upto = np.zeros(len(sorted_values), dtype=np.int64)
    for run in runs:
        if 3 * len(run) < len(sorted_values):
            placed = np.bincount(np.searchsorted(sorted_values, run, side="left"), minlength=len(sorted_values) + 1)
            upto += np.cumsum(placed[:-1])
        else:
            upto += np.searchsorted(run, sorted_values, side="right")
    return upto


def _running_total(values: np.ndarray, dtype: type) -> np.ndarray:
    """0, then the running sum of ``values`` (``np.r_[0, np.cumsum(values)]``, the same sums in the same
    order), summed straight into its place: no cumsum array to copy, no ``np.r_`` (38 against 45 us over
    17,500 truncated scores, two per pooled set, 63 sets per calibration at a million events)."""
    total = np.empty(len(values) + 1, dtype=dtype)
    total[0] = 0
    np.cumsum(values, out=total[1:])
    return total


@dataclass(frozen=True)
class ScorePool:
    """Every group's clean scores, truncated calls' scores and headroom scores, each sorted once,
    with the group of each truncated score, and each group's own clean and headroom scores sorted apart;
    :meth:`subset` gives any set of groups' estimate from them.

    The groups left out of a set are counted by value (binary searches in their own scores), not by places
    in the pool's order: that needs no argsort of every score (a sort of the values alone, a quarter of
    its time at ten million events). Where the pool's order is read inside a run of equal scores, those
    of the groups left out are taken first: any order of equal values gives the same figures
    (:meth:`PooledScores.first_reaching`)."""

    clean: np.ndarray  # sorted
    clean_runs: list[np.ndarray]  # per group, its clean scores ascending
    censored: np.ndarray  # sorted
    censored_group: np.ndarray
    clean_before: np.ndarray  # per truncated score, how many clean scores precede it (ties: clean first)
    headroom: np.ndarray  # sorted
    headroom_runs: list[np.ndarray]
    clean_largest: np.ndarray  # per group, its largest clean score (-inf: none)
    sizes: np.ndarray  # per group: clean + truncated scores

    @classmethod
    def of(cls, clean: Sequence[np.ndarray], censored: Sequence[np.ndarray], headroom: Sequence[np.ndarray]
           ) -> ScorePool:
        """From each group's clean scores, truncated calls' scores and headroom scores."""
        return cls._of_runs(*_runs_of(clean), censored, headroom)

    @classmethod
    def _of_runs(cls, values: np.ndarray, runs: list[np.ndarray], censored: Sequence[np.ndarray],
                 headroom: Sequence[np.ndarray]) -> ScorePool:
        """:meth:`of`, the clean scores given as one array of every group's and each group's sorted run in it."""
        count = len(censored)
        # The runs keep ``values``: a sorted copy beside it. ``values`` is one ascending run per group, which
        # timsort merges: 7 against 25 ms for quicksort over a pool of 473k scores at a million events (the
        # same values: equal floats are equal bits, the scores holding no NaN and no -0.0).
        clean_values = np.sort(values, kind="stable")
        cut_values = np.concatenate(censored).astype(float) if count else np.zeros(0)
        cut_group = np.repeat(np.arange(count, dtype=np.int16 if count < 1 << 15 else np.int32),
                              [len(part) for part in censored])
        cut_order = np.argsort(cut_values)  # a tenth of the scores: their groups ride along
        head_values, head_runs = _runs_of(headroom)
        clean_sizes = np.array([len(run) for run in runs], dtype=np.int64)
        largest = np.array([run[-1] if len(run) else -np.inf for run in runs])
        sizes = clean_sizes + np.array([len(b) for b in censored], dtype=np.int64)
        cut_sorted = cut_values[cut_order]
        return cls(clean_values, runs, cut_sorted, cut_group[cut_order],
                   np.searchsorted(clean_values, cut_sorted, side="right"), np.sort(head_values, kind="stable"),
                   head_runs, largest, sizes)

    @classmethod
    def of_shapes(cls, shapes: Sequence) -> ScorePool:
        """From ``group_shape.GroupShape`` values (their cross-fitted and headroom scores)."""
        return cls._of_runs(*_stacked_clean_scores(shapes), [shape.plain_censored_scores for shape in shapes],
                            [shape.headroom_scores for shape in shapes])

    def subset(self, groups: Sequence[int] | range) -> PooledScores:
        """The pooled scores of the groups with these indices."""
        chosen = np.zeros(len(self.sizes), bool)
        chosen[list(groups)] = True
        left_out = np.flatnonzero(~chosen)
        out_clean = [self.clean_runs[g] for g in left_out]
        out_head = [self.headroom_runs[g] for g in left_out]
        cut_out = ~chosen[self.censored_group] if len(self.censored_group) else np.zeros(0, bool)
        out_cut_before = _running_total(cut_out, np.int64)  # left-out truncated scores among the first j
        size = int(self.sizes[chosen].sum())
        kept = np.flatnonzero(~cut_out)
        # Index in the set's order of each of its truncated scores: the set's clean scores before it
        # (the pool's at most its value, less the left-out groups') plus the set's truncated scores before it.
        # (A kept score's place among the kept ones is its index less the left-out ones before it.)
        index = self.clean_before[kept]
        if out_clean:
            index -= _upto_each(out_clean, self.censored[kept])
        index += np.arange(len(kept))
        steps = np.subtract(size, index, dtype=np.float64)  # exact: integers below 2**53
        del index
        with np.errstate(divide="ignore"):  # a truncated score last of all: log(0), never read (cut_cap)
            np.divide(-1.0, steps, out=steps)
            np.log1p(steps, out=steps)
        log_correction = _running_total(steps, np.float64)
        del steps
        # The estimate stops moving at the set's last clean score; truncated scores after it are not read.
        cut_cap = 0
        if chosen.any() and np.isfinite(last := float(self.clean_largest[chosen].max())):
            seen = int(np.searchsorted(self.censored, last, side="left"))
            cut_cap = seen - int(out_cut_before[seen])
        return PooledScores(self, chosen, size, out_clean, out_head, out_cut_before, log_correction,
                            cut_cap)


@dataclass(frozen=True)
class PooledScores:
    """The scores of a set of groups (``chosen``) of a :class:`ScorePool`, and their Kaplan-Meier estimate."""

    pool: ScorePool
    chosen: np.ndarray
    size: int  # clean and truncated scores of the set
    out_clean: list[np.ndarray]  # each left-out group's clean scores, ascending
    out_head: list[np.ndarray]
    out_cut_before: np.ndarray
    log_correction: np.ndarray  # per count of the set's truncated scores passed: the sum of their log factors
    cut_cap: int  # the set's truncated scores before its last clean score

    @classmethod
    def of(cls, shapes: Sequence) -> PooledScores:
        """Every one of ``shapes`` (``group_shape.GroupShape``) pooled."""
        return ScorePool.of_shapes(shapes).subset(range(len(shapes)))

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
        if len(at) <= 1024:
            result = self._survival_at(at)
        else:
            # Many points (a group's truncated calls) are looked up in ascending order and put back: binary
            # searches of points in order stay in the cache, 3-5x faster than in the calls' order.
            order = np.argsort(at)
            result = np.empty(len(at))
            result[order] = self._survival_at(at[order])
        return float(result[0]) if np.ndim(s) == 0 else result

    def _survival_at(self, at: np.ndarray) -> np.ndarray:
        clean = np.searchsorted(self.pool.clean, at, side="right") - _count(self.out_clean, at, "right")
        seen_cut = np.searchsorted(self.pool.censored, at, side="right")
        return self._survival_after(clean, seen_cut - self.out_cut_before[seen_cut])

    def _survival_after_one(self, clean: int, cut: int) -> float:
        """:meth:`_survival_after` of one count of each, the same arithmetic on scalars: the difference
        of integers divided as float64 (exact below 2**53, then one rounding either way) times numpy's
        exp of the same float64."""
        if clean == 0:
            return 1.0
        cut = min(cut, self.cut_cap)
        return (self.size - (clean + cut)) / self.size * float(np.exp(-self.log_correction[cut]))

    def first_reaching(self, cdf: float) -> float | None:
        """The least of the set's clean scores at which the estimated P(score <= it) reaches ``cdf``."""
        clean, pool = self.pool.clean, self.pool
        censored, out_clean, out_cut_before = pool.censored, self.out_clean, self.out_cut_before

        def reached(rank: int) -> bool:  # with the pool's clean scores up to ``rank`` passed
            value = clean[rank]
            seen_cut = int(censored.searchsorted(value, "left"))
            # The other groups' scores among the first rank + 1, theirs first among equal ones: the
            # estimate only grows with the rank, and inside a run of equal scores any order of them
            # reaches the level at the same value.
            below, upto = _count_one(out_clean, value, "left"), _count_one(out_clean, value, "right")
            out = below + min(upto - below, rank + 1 - int(clean.searchsorted(value, "left")))
            return 1 - self._survival_after_one(rank + 1 - out, seen_cut - int(out_cut_before[seen_cut])) >= cdf

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
            clean = int(pool.clean.searchsorted(value, "right")) - _count_one(self.out_clean, value, "right")
            head = int(pool.headroom.searchsorted(value, "right")) - _count_one(self.out_head, value, "right")
            return clean + head

        best = np.inf
        for values, out in ((pool.clean, self.out_clean), (pool.headroom, self.out_head)):
            low, high = 0, len(values)
            while low < high:  # the least position whose value has k of the set's values at or below it
                middle = (low + high) // 2
                if count_upto(values[middle]) >= k:
                    high = middle
                else:
                    low = middle + 1
            # The value there may be only the other groups': the set's own next one is then the candidate.
            while low < len(values) and (int(values.searchsorted(values[low], "right"))
                                         - int(values.searchsorted(values[low], "left"))
                                         == _count_one(out, values[low], "right") - _count_one(out, values[low], "left")):
                low = int(values.searchsorted(values[low], "right"))
            if low < len(values):
                best = min(best, float(values[low]))
        return best
