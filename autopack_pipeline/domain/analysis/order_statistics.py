"""Order statistics by partition: P90, medians and the summaries the tier metrics report.

Order statistics (P90 with the 'exclusive' method, medians, the upper-middle ratio, budget-waste
picks) come from ``np.partition`` at exactly the positions the reference indexes after sorting, so
no array is ever sorted whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# From this many values on, order statistics are selected among the values of a narrow range found from a
# sample (:func:`_bracketed`), not by partitioning every value: the faster from 32k values on (median and
# P90 of lognormal values: 0.50 against 0.64 ms at 32k, 0.68 against 1.56 ms at 64k, 5.3 against 15.8 ms at 1M).
_BRACKET_FROM = 1 << 16
_SAMPLE = 8192
_CHUNK = 1 << 16


def order_statistics(values: np.ndarray, positions: list[int], *, overwrite: bool = False) -> dict[int, float]:
    """The values at ``positions`` of ``sorted(values)``, from one partition (in place if ``overwrite``),
    or, for many values, of the few in a range around them (``values`` then left as they are)."""
    wanted = sorted(set(positions))
    if len(values) >= _BRACKET_FROM and values.dtype == np.float64:
        found = _bracketed(values, wanted)
        if found is not None:
            return found
    return _partitioned(values if overwrite else values.copy(), wanted)


def _partitioned(picked: np.ndarray, wanted: list[int]) -> dict[int, float]:
    """The values at ``wanted`` (ascending) of ``sorted(picked)``, from a partition of ``picked`` in place."""
    # One single-position partition per position, each over what lies above the one before (every
    # value there is at least as large): numpy selects one position with a vectorised quickselect,
    # several at once without it, 4x slower at ten million values.
    start = 0
    for position in wanted:
        if position == start and start > 0:
            # The next position after one just selected (a median's two middles, the P90's pair): the least
            # of what lies above, put in its place, instead of selecting again over all of it. A NaN or a
            # zero (-0.0 and 0.0 tie, and either may be the one a selection leaves) is left to the selection.
            least = start + int(np.argmin(picked[start:]))
            if picked[least] != 0 and not np.isnan(picked[least]):
                picked[start], picked[least] = picked[least], picked[start]
                start = position + 1
                continue
        picked[start:].partition(position - start)
        start = position + 1
    return {p: float(picked[p]) for p in wanted}


def _bracketed(values: np.ndarray, wanted: list[int]) -> dict[int, float] | None:
    """The values at ``wanted`` (ascending) of ``sorted(values)``, or None when this way cannot tell.

    Nearby positions share a range [lo, hi] of values, read off a strided sample of the values sorted
    with margins of six standard deviations of a sample quantile's rank; the values in it (copied out a
    slice at a time) are partitioned, and the count below ``lo`` places them. The k-th smallest value is
    the (k - below)-th of those exactly when the counts show it lies in the range (NaNs, never in it,
    sort after every number, as a partition puts them). A range holding a zero is left to the partition:
    -0.0 and 0.0 tie, and which one it leaves at a place is its own. At ten million values: 0.06 s for a
    median and a P90 where two partitions took 0.14 s, and no copy of the values."""
    n = len(values)
    sample = np.sort(values[::max(1, n // _SAMPLE)])
    runs: list[list[int]] = []
    for position in wanted:  # positions within a thousandth of the values of each other share a range
        if runs and position - runs[-1][-1] <= n // 1000:
            runs[-1].append(position)
        else:
            runs.append([position])
    found: dict[int, float] = {}
    m = len(sample)
    ranges = []
    for run in runs:
        first, last = run[0] / n, run[-1] / n
        spread = 6 * math.sqrt(m * max(first * (1 - first), last * (1 - last))) + 8
        lo, hi = sample[max(0, int(first * m - spread))], sample[min(m - 1, int(last * m + spread))]
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
            return None
        ranges.append((lo, hi))
    # Every range's values copied out in one pass over the values, a slice at a time (_CHUNK: half a MB,
    # in the CPU's cache while each range reads it), where a pass per range read every value again.
    inside = np.empty(min(_CHUNK, n), dtype=bool)
    upper = np.empty(min(_CHUNK, n), dtype=bool)
    belows, parts = [0] * len(runs), [[] for _ in runs]
    for start in range(0, n, _CHUNK):
        chunk = values[start:start + _CHUNK]
        ge, le = inside[:len(chunk)], upper[:len(chunk)]
        for at, (lo, hi) in enumerate(ranges):
            np.greater_equal(chunk, lo, out=ge)
            np.less_equal(chunk, hi, out=le)
            ge &= le
            # Below lo: at most hi and not in the range (lo <= hi; a NaN is neither), one comparison fewer.
            belows[at] += int(np.count_nonzero(le)) - int(np.count_nonzero(ge))
            # np.extract (the positions, then a gather): the same values in the same order as chunk[ge], in
            # half its time for a range's few values (60 against 27 us per slice at 7% of them).
            parts[at].append(np.extract(ge, chunk))
    for run, below, pieces in zip(runs, belows, parts):
        middle = np.concatenate(pieces)
        if not below <= run[0] <= run[-1] < below + len(middle) or len(middle) > n // 4:
            return None  # not in the range, or too many values in it (ties) for a gain
        wanted_here = [p - below for p in run]
        picked = _tied(middle, wanted_here, [sample[min(m - 1, int(p / n * m))] for p in run])
        left = [p for p in wanted_here if p not in picked]
        if left:
            picked |= _partitioned(middle, left)
        found.update({p: picked[p - below] for p in run})
    return found


def _tied(values: np.ndarray, wanted: list[int], guesses: list[float]) -> dict[int, float]:
    """The positions of ``wanted`` (of ``sorted(values)``) that hold one of ``guesses`` (values of the sample
    near them), found by counting the values below and equal to each guess: a position with ``below <= p <
    below + equal`` holds that very value. Token ratios tie heavily (5/6 is the waste ratios' median at ten
    million events, ~60% of the 960k values around it), and numpy's selection slows down on many values equal
    to its pivot (0.094 s for that partition, 0.003 s for the P90's range, which ties less). Equal floats
    here are equal bits: the range holds no zero and no NaN (:func:`_bracketed`)."""
    found: dict[int, float] = {}
    for guess in dict.fromkeys(guesses):
        below = int(np.count_nonzero(values < guess))
        equal = int(np.count_nonzero(values == guess))
        found.update({p: float(guess) for p in wanted if below <= p < below + equal})
    return found


def _median_positions(n: int) -> list[int]:
    return [n // 2] if n % 2 else [n // 2 - 1, n // 2]


def _median_from(picked: dict[int, float], n: int) -> float:
    """``statistics.median``: the middle value, or the two middle values' mean."""
    if n % 2:
        return picked[n // 2]
    return (picked[n // 2 - 1] + picked[n // 2]) / 2


def _p90_positions(n: int) -> tuple[int, int, int]:
    """``statistics.quantiles(data, n=10)[8]`` (method 'exclusive') reads sorted data at j-1 and j."""
    cuts, i = 10, 9
    m = n + 1
    j = min(max(i * m // cuts, 1), n - 1)
    return j - 1, j, i * m - j * cuts


def _p90_from(picked: dict[int, float], n: int, maximum: float) -> float:
    if n < 10:
        return maximum
    low, high, delta = _p90_positions(n)
    return float((picked[low] * (10 - delta) + picked[high] * delta) / 10)


def p90_of(values: np.ndarray, *, overwrite: bool = False) -> float | None:
    """``metrics.p90``: ``statistics.quantiles(v, n=10)[8]`` from 10 values on, else the maximum."""
    n = len(values)
    if n == 0:
        return None
    if n < 10:
        return float(values.max())
    low, high, _delta = _p90_positions(n)
    return _p90_from(order_statistics(values, [low, high], overwrite=overwrite), n, math.nan)


def p90(values: Sequence[float] | np.ndarray) -> float | None:
    """P90 of any sequence of numbers (a copy is partitioned): :func:`p90_of` for lists."""
    return p90_of(np.array(values, dtype=float), overwrite=True)


def median_of(values: np.ndarray, *, overwrite: bool = False) -> float:
    """``statistics.median`` of a non-empty array."""
    return _median_from(order_statistics(values, _median_positions(len(values)), overwrite=overwrite), len(values))


def _summary(values: np.ndarray, *, overwrite: bool = False, mean: float | None = None
             ) -> tuple[float | None, float | None]:
    """(median, mean) of ``values``; (None, None) when empty. ``overwrite``: reorder the caller's copy.
    ``mean``: the values' mean, when the caller took it before they were reordered."""
    if len(values) == 0:
        return None, None
    if mean is None:
        mean = float(values.mean())  # before any partition: numpy's pairwise sum depends on the order
    return median_of(values, overwrite=overwrite), mean


def _summary_and_p90(values: np.ndarray, *, overwrite: bool = False, mean: float | None = None
                     ) -> tuple[float | None, float | None, float | None]:
    """Median, mean and P90 of ``values`` with one partition (of the caller's copy if ``overwrite``).
    ``mean``: as for :func:`_summary`."""
    n = len(values)
    if n == 0:
        return None, None, None
    positions = _median_positions(n) + (list(_p90_positions(n)[:2]) if n >= 10 else [])
    if mean is None:
        mean = float(values.mean())
    maximum = float(values.max()) if n < 10 else math.nan
    picked = order_statistics(values, positions, overwrite=overwrite)
    return _median_from(picked, n), mean, _p90_from(picked, n, maximum)
