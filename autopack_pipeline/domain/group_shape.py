"""One group's calls reduced to a place (location, scale) and cross-fitted scores: what the pooled
budget margins (:mod:`autopack_pipeline.domain.pooled_margin`, whose docstring gives the method) pool.

The location is the median and the scale the upper spread of the group's log(actual / new
prediction), nearest-rank order statistics with truncated calls counted above every value; a call's
score is its distance from a place fitted without it, in the group's scales.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from autopack_pipeline.domain.analysis.samples import stable_order

# The upper spread's end: the 90th percentile, the 8th largest of 80 calls, is near enough the tail
# that groups whose tails differ in weight still share a shape in these units (the 80th left the
# lighter groups' margins set by the heavier ones' scores), and finite until a tenth of a group's
# calls are truncated (a group past that keeps its own rule).
SCALE_QUANTILE = 0.90
# A group with fewer usable observations has no location or scale worth pooling.
MIN_SHAPE_OBSERVATIONS = 10
# A truncated call taken at this many times its ceiling caps the pooled bound (see pooled_bound).
CENSORED_HEADROOM = 1.25
# Cross-fitting folds for the scores (see GroupShape.scores).
FOLDS = 5
# A scale below this (in log units, ~1%) is a group whose ratios barely vary: no tail to scale.
MIN_SCALE = 0.01


@dataclass(frozen=True)
class GroupShape:
    """One group's log ratios (against the new prediction) reduced to where they sit and spread."""

    key: tuple[str, str]
    location: float
    scale: float
    log_ratios: np.ndarray  # clean calls (group_shape gives them ascending: only their ranks matter)
    censored_logs: np.ndarray  # truncated calls: log(ceiling / new prediction), a lower bound
    # ``log_ratios`` ascending, when the caller sorted them already (group_shape): speed only.
    sorted_logs: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def censored(self) -> int:
        return len(self.censored_logs)

    def scores(self, censored_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(clean scores, truncated calls' lower bounds), cross-fitted: the calls are dealt into
        ``FOLDS`` folds (:func:`folds_of`), and each fold is scored with the location and scale
        of the other calls. Scored against a place fitted on themselves, calls look closer to it
        than a new call will (the median and spread bend towards the very calls they score), and the
        pooled bound undercovers; against a place fitted without them, a score carries the
        estimation error a new call meets (from 4/5 of the data: slightly more, on the safe side;
        halves overshot: a spread from ~37 calls is much noisier than from ~75). A fold whose place
        cannot be fitted (too many truncations) is scored with the whole group's.
        ``censored_shift`` is added to the truncated calls' log bounds before they are scored."""
        clean = np.empty(len(self.log_ratios))
        fold_clean, _fold_cut = self._folds
        for fold, place in enumerate(self._fold_places):
            mine = fold_clean == fold
            clean[mine] = (self.log_ratios[mine] - place[0]) / place[1]
        return clean, self._censored_scores(censored_shift)

    def _censored_scores(self, shift: float) -> np.ndarray:
        # Each call's fold's place gathered to it: the same arithmetic per call as a mask per fold,
        # without five masks and ten gathers per group (two passes per group in each pooled pass).
        places = np.array(self._fold_places)[self._censored_folds]
        cut = self.censored_logs + shift
        cut -= places[:, 0]
        cut /= places[:, 1]
        return cut

    @cached_property
    def _clean_order(self) -> np.ndarray:
        """The clean calls' stable ascending order: their ranks, for their folds in call order (``scores``)."""
        return stable_order(self.log_ratios)

    @cached_property
    def _censored_folds(self) -> np.ndarray:
        """Each truncated call's fold."""
        return folds_of(self.censored_logs, salt=1).astype(np.int8)

    @cached_property
    def _folds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each clean and each truncated call's fold (calls dealt in turn, clean ones first)."""
        # int8: at ten million calls the folds are otherwise 80 MB a copy, near the analysis' peak memory
        return folds_of(self.log_ratios, order=self._clean_order).astype(np.int8), self._censored_folds

    @cached_property
    def _sorted_logs(self) -> tuple[np.ndarray, _RankFolds]:
        """(the clean log ratios ascending, the folds of their ranks)."""
        # A call's fold is the hash of its rank, so the i-th smallest value's fold is that of rank i
        # whichever of several equal values holds it (equal values are interchangeable): a plain sort
        # of the values gives the same pairs as the calls' stable order, without its argsort (a stable
        # float argsort of a 1.5M-call group cost a third of a second per pooled bound at 10M events).
        ordered = self.sorted_logs if self.sorted_logs is not None else np.sort(self.log_ratios)
        return ordered, _rank_folds(len(ordered))

    @cached_property
    def _fold_places(self) -> list[tuple[float, float]]:
        """Per fold, the (location, scale) of the other calls (:func:`_place_of_sorted`), or the group's own.

        The group's clean log ratios are sorted once; a fold's order statistics are read off that
        order with the fold's calls skipped (the same values a sort of the other calls gives), so
        the five places cost one sort, not five."""
        ordered, folds = self._sorted_logs
        places = []
        for fold in range(FOLDS):
            # The i-th kept value sits at i + (the fold's own values before it): with ``skipped[j]`` the
            # kept values before the fold's j-th, that is i + #{j: skipped[j] <= i}.
            mine = folds.ranks_in(fold)
            skipped = mine - np.arange(len(mine))
            censored = int((self._censored_folds != fold).sum())
            place = _place_of_sorted(len(ordered) - len(mine), censored,
                                     lambda i, skipped=skipped: ordered[i + np.searchsorted(skipped, i, side="right")])
            places.append(place or (self.location, self.scale))
        return places

    @cached_property
    def pooled_clean_scores(self) -> np.ndarray:
        """The clean calls' cross-fitted scores (the values of ``scores()[0]``), ascending within each
        fold: the pool, which only needs the values, sorts five runs per group 3x faster than a shuffle."""
        scores = np.empty(len(self.log_ratios))
        self.write_pooled_clean_scores(scores)
        return scores

    def write_pooled_clean_scores(self, out: np.ndarray) -> None:
        """:attr:`pooled_clean_scores` written into ``out`` (a float64 slice of the pool's one array of every
        group's scores: nothing kept on the shape, no copy to stack)."""
        ordered, folds = self._sorted_logs
        # A gather per fold puts its values together, still ascending, and each fold is scored in
        # place: the same values and operations as a mask per fold, without five passes over the group.
        # mode 'clip' (the ranks are in range): the default 'raise' gathers into a copy of ``out`` and
        # copies that back, two more passes over the group, on fresh pages in a worker thread's arena.
        for fold, (location, scale) in enumerate(self._fold_places):
            mine = out[folds.bounds[fold]:folds.bounds[fold + 1]]
            np.take(ordered, folds.ranks_in(fold), out=mine, mode="clip")
            mine -= location
            mine /= scale

    @cached_property
    def plain_censored_scores(self) -> np.ndarray:
        """The truncated calls' scores at their ceilings, computed once for every pooled bound."""
        return self._censored_scores(0.0)

    @cached_property
    def headroom_scores(self) -> np.ndarray:
        """The truncated calls' scores at ``CENSORED_HEADROOM`` x their ceilings, computed once."""
        return self._censored_scores(math.log(CENSORED_HEADROOM))

    def rescaled(self, factor: float) -> GroupShape:
        """This shape with its scale, and every cross-fitting fold's scale, multiplied by ``factor``
        (``domain.scale_pooling``): the same calls, scored on a wider or narrower scale."""
        copy = dataclasses.replace(self, scale=self.scale * factor)
        # The folds' places are a cached property of the copy: set before anything reads them.
        copy.__dict__["_fold_places"] = [(location, scale * factor) for location, scale in self._fold_places]
        # And the truncated calls' folds, which their values alone decide (a scale leaves them).
        copy.__dict__["_censored_folds"] = self._censored_folds
        return copy

    def margin(self, q: float) -> float:
        return float(math.exp(self.location + self.scale * q))

    def clean_above(self, line: float) -> int:
        """How many clean calls' log ratios exceed ``line``: a binary search in the sorted logs, where
        a comparison of every call was redone for each pooled bound's check."""
        ordered = self._sorted_logs[0]
        return len(ordered) - int(np.searchsorted(ordered, line, side="right"))

    @property
    def observations(self) -> int:
        return len(self.log_ratios) + self.censored

    @cached_property
    def largest_ratio(self) -> float:
        """The largest ratio the group has shown, a truncated call's ceiling counting as shown: what a
        thin group's reach is measured from (:func:`pooled_group_margins`)."""
        return float(np.exp(np.r_[self.log_ratios, self.censored_logs].max()))


def folds_of(values: np.ndarray, salt: int = 0, order: np.ndarray | None = None) -> np.ndarray:
    """Each call's cross-fitting fold, from a hash of its rank among ``values``: the same calls get the
    same folds in whatever order they are stored (collection threads finish in any order, and folds
    dealt by position made one seed's margins differ from run to run), and a factor that shifts every
    log ratio of a group leaves its folds, so its budgets, as they were. Hashed rather than dealt in
    rank order, which would put every fold at every height and leave the other folds' place no
    different from the whole group's. The hash is the 64-bit finaliser of MurmurHash3, written out
    because numpy has no vectorised hash of integers; ``salt`` keeps the truncated calls' pattern
    apart from the clean calls'. ``order``: ``stable_order(values)``, when the caller has it."""
    ranks = np.empty(len(values), dtype=np.uint64)
    ranks[stable_order(values) if order is None else order] = np.arange(len(values), dtype=np.uint64)
    return _hashed_folds(ranks, salt)


@dataclass(frozen=True)
class _RankFolds:
    """The folds of ranks 0 .. n - 1 (``folds_of``'s of the clean calls, in ascending order), as the
    ranks of each fold: fold f's ranks ascending are ``ranks_in(f)``, and in the pool's order a group's
    fold f holds places ``bounds[f]`` to ``bounds[f + 1]``."""

    per_fold: tuple[np.ndarray, ...]
    bounds: np.ndarray

    def ranks_in(self, fold: int) -> np.ndarray:
        return self.per_fold[fold]


# In a one-item list: (reach, per fold its ranks among 0 .. reach - 1, ascending and read-only). A rank's fold
# is the hash of the rank alone, so the ranks of fold f below any n are the first of these: every group size
# reads views of one list, computed for the largest size asked (rounded up to a power of two, so a few sizes
# asked in any order compute it at most about twice over), where each size computed and kept its own (0.11 s
# of hashing and 30 MB kept at ten million events, against 0.05 s and 8 MB).
_FOLD_RANKS: list[tuple[int, tuple[np.ndarray, ...]]] = [(0, ())]
_FOLD_LOCK = threading.Lock()
_FOLD_REACH_FROM = 1 << 16


def _rank_folds(n: int) -> _RankFolds:
    """:class:`_RankFolds` of ``n`` ranks (views of the kept per-fold lists)."""
    reach, per_fold = _FOLD_RANKS[-1]
    if n > reach or not per_fold:
        with _FOLD_LOCK:
            reach, per_fold = _FOLD_RANKS[-1]
            if n > reach or not per_fold:
                reach = max(_FOLD_REACH_FROM, 1 << (n - 1).bit_length())
                # Hashed a slice at a time: the hash's 64-bit temporaries stay small (its 2M ranks at ten
                # million events were ~70 MB of them at once, beside the analysis' peak memory).
                folds = np.empty(reach, dtype=np.int8)
                for start in range(0, reach, _FOLD_REACH_FROM):
                    end = min(reach, start + _FOLD_REACH_FROM)
                    folds[start:end] = _hashed_folds(np.arange(start, end, dtype=np.uint64), 0)
                # int32 while they fit: half the memory of 64-bit indices.
                kind = np.int32 if reach <= 2**31 else np.int64
                per_fold = tuple(np.flatnonzero(folds == fold).astype(kind) for fold in range(FOLDS))
                for ranks in per_fold:
                    ranks.flags.writeable = False
                _FOLD_RANKS[-1] = (reach, per_fold)
    # n in the ranks' own type: an int searched in int32 ranks copies them to int64 first (2 ms at 16M reach)
    counts = [int(ranks.searchsorted(ranks.dtype.type(n))) for ranks in per_fold]
    return _RankFolds(tuple(ranks[:count] for ranks, count in zip(per_fold, counts)), np.r_[0, np.cumsum(counts)])


def _hashed_folds(ranks: np.ndarray, salt: int) -> np.ndarray:
    mixed = ranks + np.uint64(salt << 32)
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        mixed ^= mixed >> np.uint64(33)
        mixed *= np.uint64(multiplier)
    mixed ^= mixed >> np.uint64(33)
    return (mixed % np.uint64(FOLDS)).astype(np.int64)


def _place_of_sorted(clean: int, censored: int, nth: Callable[[int], float]) -> tuple[float, float] | None:
    """(median, upper spread) of ``clean`` clean values, of which ``nth(i)`` is the i-th smallest, and
    ``censored`` truncated calls, counted above every clean value; None when the spread's end falls on
    a truncated call or there are too few calls."""
    ranks = _place_ranks(clean, censored)
    if ranks is None:
        return None

    def nearest_rank(index: int) -> float:
        return float(nth(index)) if index < clean else math.inf

    location, upper = nearest_rank(ranks[0]), nearest_rank(ranks[1])
    return (location, max(upper - location, MIN_SCALE)) if math.isfinite(upper) else None


def _place_ranks(clean: int, censored: int) -> tuple[int, int] | None:
    """The nearest ranks (0-based) of the median and of the upper spread's end among ``clean`` clean
    values and ``censored`` truncated calls; None when there are too few calls, or when the spread's
    end falls on a truncated call (counted above every clean value): :func:`_place_of_sorted` has no
    place then, which the counts alone tell."""
    n = clean + censored
    if n < MIN_SHAPE_OBSERVATIONS // 2:
        return None
    location, upper = (max(1, math.ceil(quantile * n - 1e-9)) - 1 for quantile in (0.5, SCALE_QUANTILE))
    return (location, upper) if upper < clean else None


def group_shape(key: tuple[str, str], ratios: np.ndarray, censored_ratios: np.ndarray, *,
                overwrite: bool = False, ascending: bool = False) -> GroupShape | None:
    """The group's location and scale, or None when it has too few calls or too many truncated for
    its upper spread to be seen (``SCALE_QUANTILE`` falls on a truncated call, counted above every
    clean one: its length is unknown). ``overwrite``: ``ratios`` is the caller's float64 temporary,
    which becomes the logs (and, sorted, the shape's own copy of them). ``ascending``: ``ratios`` are
    sorted already, so their logs are too (the log only grows), or nearly: timsort (``kind="stable"``) then checks
    that in one pass, where quicksort sorted them again (~12 ms per pooled pass at 1M)."""
    ratios = np.asarray(ratios, dtype=float)
    # A ratio's log is finite exactly when the ratio is positive and finite: a group with no place is
    # known from these counts before any log is taken or sorted (a third of the calls at ten million
    # events are in such groups, in each of the three pooled passes).
    finite = (ratios > 0) & np.isfinite(ratios)
    clean = int(np.count_nonzero(finite))
    cut = np.log(np.asarray(censored_ratios, dtype=float))
    cut = cut[np.isfinite(cut)]
    if clean + len(cut) < MIN_SHAPE_OBSERVATIONS or _place_ranks(clean, len(cut)) is None:
        return None
    logs = np.log(ratios, out=ratios) if overwrite else np.log(ratios)
    if clean < len(logs):
        logs = logs[finite]
    # Sorted in place, this call's own array (or the caller's temporary): the shape's folds read the
    # same order, and np.sort's copy of a group's logs was fresh pages in a worker thread's arena.
    ordered = logs
    ordered.sort(kind="stable" if ascending else None)
    del logs
    place = _place_of_sorted(len(ordered), len(cut), ordered.__getitem__)
    # The calls ascending stand for the calls: a call's fold is the hash of its rank, so every figure
    # is the same whichever order they come in, and the shape keeps one copy of them, not two (58 MB
    # per pooled pass at ten million events).
    return None if place is None else GroupShape(key, place[0], place[1], ordered, cut, ordered)
