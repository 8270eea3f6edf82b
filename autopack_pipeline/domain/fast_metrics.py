"""The analysis over millions of events: the domain functions' results, computed with numpy.

The reference implementations (:mod:`.metrics`, :mod:`.samples`, :mod:`.gates`, :mod:`.calibration`)
work on a pandas events frame and on Python lists: ``statistics.quantiles``, ``statistics.median``,
``statistics.pstdev``, ``math.fsum`` and ``sorted`` over every value, and one boolean mask per group.
On ten million events that takes minutes and gigabytes. Here the same figures come from
:class:`EventArrays` (one numpy array per column, labels as integer codes) in O(n) passes:

* order statistics (P90 with the 'exclusive' method, medians, the upper-middle ratio, budget-waste
  picks) come from ``np.partition`` at exactly the positions the reference indexes after sorting;
* ``math.fsum`` means are ``math.fsum`` over the same values; ``statistics.pstdev`` per group is the
  correctly rounded square root of the exact population variance, from exact integer sums of the
  floats' mantissas (``statistics`` computes the same rational with ``Fraction``);
* strata and groups are ``np.bincount`` over label codes; dedup compares strings only for rows that
  share a 64-bit phase hash, so it is exact whatever the hash does.

Every public function equals its reference on the same data (``==`` on the documents and pydantic
models; ``autopack_pipeline_tests/domain/test_fast_paths.py`` checks this on random data). Nothing
here knows where the arrays came from: the columnar store builds them, and so does
:meth:`EventArrays.from_frame`, which the tests use.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from autopack_pipeline.domain.calibration import (
    AUTOPACK_MEDIAN,
    FULL_CONFIDENCE_SAMPLES,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    Provenance,
    action_text,
)
from autopack_pipeline.domain.categories import deliverable_bucket, normalise_category, normalise_complexity
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.coverage import (
    COVERAGE,
    DEFAULT_TARGET_PCT,
    DEFAULT_TOLERANCE,
    PRIOR_WEIGHT,
    LevelValue,
    borrow,
    group_calibration,
    order_statistic_index,
)
from autopack_pipeline.domain.coverage import weight as coverage_weight
from autopack_pipeline.domain.gates import (
    DEFAULT_MIN_GROUP_SAMPLES,
    DEFAULT_MIN_TOTAL_SAMPLES,
    GateDecision,
    decide_gate,
)
from autopack_pipeline.domain.metrics import (
    DEFAULT_UNDER_MULTIPLIER,
    STRATA_DIMENSIONS,
    needs_tuning,
    tier1_block,
)
from autopack_pipeline.domain.samples import DEFAULT_MIN_ACTUAL_TOKENS, EXCLUSION_REASONS, as_events_frame

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- the arrays ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntColumn:
    """A nullable integer column: ``values`` (anything where ``valid`` is False) and ``valid`` (None: all)."""

    values: np.ndarray
    valid: np.ndarray | None = None

    def floats(self) -> np.ndarray:
        """As float64 with NaN where missing (what ``_floats`` of the metrics gives)."""
        out = self.values.astype(np.float64)
        if self.valid is not None:
            out[~self.valid] = np.nan
        return out

    def floats_at(self, rows: np.ndarray | None) -> np.ndarray:
        """``floats()`` of the rows selected by ``rows`` (indices or a mask; None: all)."""
        if rows is None:
            return self.floats()
        out = self.values[rows].astype(np.float64)
        if self.valid is not None:
            out[~self.valid[rows]] = np.nan
        return out

    def notna(self) -> np.ndarray:
        return np.ones(len(self.values), dtype=bool) if self.valid is None else self.valid

    def take(self, rows: np.ndarray) -> IntColumn:
        return IntColumn(self.values[rows], None if self.valid is None else self.valid[rows])


@dataclass(frozen=True)
class LabelColumn:
    """A nullable string column as codes into ``labels``; code -1 means missing."""

    codes: np.ndarray
    labels: tuple[str, ...]

    def notna(self) -> np.ndarray:
        return self.codes >= 0

    def canonical(self, normaliser: Callable[[str | None], str]) -> tuple[np.ndarray, list[str]]:
        """Codes into the sorted canonical spellings (``canonical_labels`` of the samples module)."""
        mapped = [normaliser(label) for label in self.labels] + [normaliser(None)]
        names = sorted(set(mapped))
        lookup = np.array([names.index(name) for name in mapped], dtype=np.int32)
        return lookup[self.codes], names  # code -1 picks the last entry: normaliser(None)


@dataclass(frozen=True)
class EventArrays:
    """An events frame's columns as numpy arrays, in the frame's row order.

    ``success``, ``truncated`` and ``is_truncated_output`` are int8: 1, 0, or -1 for missing.
    ``timestamp_us`` is microseconds since the epoch (UTC). ``run_code`` and ``phase_code`` number
    the distinct run ids and phase ids (equal code, equal string; invalid where missing), so a phase,
    (run_id, phase_id), is identified exactly by the pair of codes without keeping any string.
    """

    event_id: IntColumn
    timestamp_us: IntColumn
    category: LabelColumn
    complexity: LabelColumn
    deliverable_count: IntColumn
    predicted: IntColumn
    actual: IntColumn
    selected_budget: IntColumn
    actual_max_tokens: IntColumn
    success: np.ndarray
    truncated: np.ndarray
    is_truncated_output: np.ndarray
    attempt: IntColumn
    run_code: IntColumn
    phase_code: IntColumn

    def __len__(self) -> int:
        return len(self.success)

    def take(self, rows: np.ndarray) -> EventArrays:
        """The events at ``rows`` (indices or a boolean mask), in that order; labels keep their codes."""
        columns = {}
        for name in self.__dataclass_fields__:
            column = getattr(self, name)
            if isinstance(column, IntColumn):
                columns[name] = column.take(rows)
            elif isinstance(column, LabelColumn):
                columns[name] = LabelColumn(column.codes[rows], column.labels)
            else:
                columns[name] = column[rows]
        return EventArrays(**columns)

    @cached_property
    def phase_key(self) -> IntColumn:
        """One exact integer per (run_id, phase_id); invalid where either is missing."""
        width = int(self.phase_code.values.max()) + 1 if len(self.phase_code.values) else 1
        keys = self.run_code.values.astype(np.int64) * width + self.phase_code.values
        valid = self.run_code.notna() & self.phase_code.notna()
        return IntColumn(keys, None if valid.all() else valid)

    @classmethod
    def from_frame(cls, events: pd.DataFrame) -> EventArrays:
        """Arrays of an events frame (conformed first, as every domain function does)."""
        frame = as_events_frame(events)

        def ints(name: str) -> IntColumn:
            column = frame[name]
            valid = column.notna().to_numpy()
            return IntColumn(column.fillna(0).to_numpy(dtype=np.int64), None if valid.all() else valid)

        def labels(name: str) -> LabelColumn:
            codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
            return LabelColumn(codes.astype(np.int32), tuple(str(u) for u in uniques))

        def flags(name: str) -> np.ndarray:
            column = frame[name]
            return np.where(column.isna().to_numpy(), -1, column.fillna(False).to_numpy(dtype=bool)).astype(np.int8)

        def codes(name: str) -> IntColumn:
            found, _uniques = pd.factorize(frame[name], use_na_sentinel=True)
            valid = found >= 0
            return IntColumn(np.where(valid, found, 0).astype(np.int64), None if valid.all() else valid)

        stamps = frame["timestamp"]
        stamp_valid = stamps.notna().to_numpy()
        stamp_us = np.zeros(len(frame), dtype=np.int64)
        stamp_us[stamp_valid] = stamps[stamp_valid].to_numpy(dtype="datetime64[us]").astype(np.int64)
        return cls(
            event_id=ints("event_id"),
            timestamp_us=IntColumn(stamp_us, None if stamp_valid.all() else stamp_valid),
            category=labels("category"),
            complexity=labels("complexity"),
            deliverable_count=ints("deliverable_count"),
            predicted=ints("predicted_output_tokens"),
            actual=ints("actual_output_tokens"),
            selected_budget=ints("selected_budget"),
            actual_max_tokens=ints("actual_max_tokens"),
            success=flags("success"),
            truncated=flags("truncated"),
            is_truncated_output=flags("is_truncated_output"),
            attempt=ints("attempt"),
            run_code=codes("run_id"),
            phase_code=codes("phase_id"),
        )



def as_event_arrays(events: pd.DataFrame | EventArrays) -> EventArrays:
    """``events`` as arrays: an events frame is converted, arrays are returned as they are."""
    return events if isinstance(events, EventArrays) else EventArrays.from_frame(events)

# -- exact arithmetic helpers -----------------------------------------------------------------------


def order_statistics(values: np.ndarray, positions: list[int], *, overwrite: bool = False) -> dict[int, float]:
    """The values at ``positions`` of ``sorted(values)``, from one partition (in place if ``overwrite``)."""
    wanted = sorted(set(positions))
    if overwrite:
        values.partition(wanted)
        picked = values
    else:
        picked = np.partition(values, wanted)
    return {p: float(picked[p]) for p in wanted}


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


def median_of(values: np.ndarray, *, overwrite: bool = False) -> float:
    """``statistics.median`` of a non-empty array."""
    return _median_from(order_statistics(values, _median_positions(len(values)), overwrite=overwrite), len(values))


def fsum_mean(values: np.ndarray) -> float:
    """``math.fsum(values) / len(values)``: the exactly rounded sum, from exact integer arithmetic."""
    return float(exact_moments(values, squares=False)[0]) / len(values)


def _summary(values: np.ndarray, total: Fraction | None = None) -> tuple[float | None, float | None]:
    """(``statistics.median``, ``math.fsum`` mean), as the metrics module's ``_summary``.

    ``total`` is the exact sum of ``values`` when the caller has it.
    """
    if len(values) == 0:
        return None, None
    if total is None:
        return median_of(values), fsum_mean(values)
    return median_of(values, overwrite=True), float(total) / len(values)  # the caller's copy: reorder it


def _summary_and_p90(values: np.ndarray, total: Fraction | None = None
                     ) -> tuple[float | None, float | None, float | None]:
    """Median, fsum mean and P90 of ``values`` with one partition."""
    n = len(values)
    if n == 0:
        return None, None, None
    positions = _median_positions(n) + (list(_p90_positions(n)[:2]) if n >= 10 else [])
    mean = fsum_mean(values) if total is None else float(total) / n
    maximum = float(values.max()) if n < 10 else math.nan
    picked = order_statistics(values, positions, overwrite=total is not None)  # with a total: the caller's copy
    p90 = _p90_from(picked, n, maximum)
    return _median_from(picked, n), mean, p90


# Exact sums of floats. A finite double is M * 2**E with an integer |M| < 2**53. Within a band of
# ten exponents, M << (E - band start) has at most 62 bits and is summed in int64 halves of 31 bits,
# its square in 16-bit limbs; the few band totals are combined with Python integers. No rounding.
_BAND = 10
_MAX_BANDS = 64
_CHUNK_ROWS = 1 << 21  # bounds the temporaries, and keeps every int64 sum far from overflow
_LOW31 = (1 << 31) - 1
_LOW16 = (1 << 16) - 1


def exact_moments(values: np.ndarray, *, squares: bool = True) -> tuple[Fraction, Fraction]:
    """Exact ``sum(x)`` and (when ``squares``) ``sum(x * x)`` of finite float64 ``values``."""
    total, total_squares = 0, 0  # as integers times 2**scale
    scale = None
    parts: list[tuple[int, int, int]] = []  # (sum, sum of squares, exponent of one unit)
    for start in range(0, len(values), _CHUNK_ROWS):
        x = np.asarray(values[start:start + _CHUNK_ROWS], dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("exact sums need finite values")
        fraction, exponent = np.frexp(x)
        mantissa = (fraction * 2.0**53).astype(np.int64)  # exact: |fraction| < 1 has 53 bits
        nonzero = mantissa != 0
        if not nonzero.any():
            continue
        exponent = exponent.astype(np.int32)
        low = int(exponent[nonzero].min())
        shift = np.where(nonzero, exponent - low, 0)
        bands = int(shift.max()) // _BAND + 1
        if bands > _MAX_BANDS:  # astronomically spread values: one band per exponent
            parts.extend(_exact_by_exponent(mantissa[nonzero], exponent[nonzero] - 53, squares))
            continue
        for band in range(bands):
            chosen = slice(None) if bands == 1 else (shift >= band * _BAND) & (shift < (band + 1) * _BAND)
            y = mantissa[chosen] << (shift[chosen] - band * _BAND).astype(np.int64)  # |y| < 2**62
            if len(y) == 0:
                continue
            unit = low - 53 + band * _BAND
            hi, lo = y >> 31, y & _LOW31
            band_sum = (int(hi.sum()) << 31) + int(lo.sum())
            band_squares = _sum_of_squares(np.abs(y)) if squares else 0
            parts.append((band_sum, band_squares, unit))
    for band_sum, band_squares, unit in parts:
        if scale is None:
            scale = unit
        if unit < scale:
            total <<= scale - unit
            total_squares <<= 2 * (scale - unit)
            scale = unit
        total += band_sum << (unit - scale)
        total_squares += band_squares << (2 * (unit - scale))
    if scale is None:
        return Fraction(0), Fraction(0)
    unit = Fraction(2) ** scale
    return Fraction(total) * unit, Fraction(total_squares) * unit * unit


def _sum_of_squares(y: np.ndarray) -> int:
    """Exact sum of ``y * y`` for 0 <= y < 2**62, from 16-bit limbs (every partial sum fits int64)."""
    limbs = [(y >> (16 * k)) & _LOW16 for k in range(4)]
    total = 0
    for power in range(7):
        coefficient = 0
        for i in range(max(0, power - 3), min(power, 3) + 1):
            j = power - i
            if i > j:
                continue
            term = int((limbs[i] * limbs[j]).sum())
            coefficient += term if i == j else 2 * term
        total += coefficient << (16 * power)
    return total


def _exact_by_exponent(mantissa: np.ndarray, exponent: np.ndarray, squares: bool) -> list[tuple[int, int, int]]:
    parts = []
    for e in np.unique(exponent).tolist():
        m = mantissa[exponent == e]
        hi, lo = m >> 31, m & _LOW31
        parts.append(((int(hi.sum()) << 31) + int(lo.sum()), _sum_of_squares(np.abs(m)) if squares else 0, e))
    return parts


def exact_group_sums(values: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[list[Fraction], list[Fraction]]:
    """Exact ``sum(x)`` and ``sum(x * x)`` of finite float64 ``values`` per group (codes 0..n-1)."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups) if len(groups) else np.zeros(n_groups, dtype=np.int64)
    bounds = np.r_[0, np.cumsum(counts)]
    ordered = values[order]
    moments = [exact_moments(ordered[bounds[g]:bounds[g + 1]]) for g in range(n_groups)]
    return [m[0] for m in moments], [m[1] for m in moments]


def _even_significand(x: float) -> bool:
    mantissa, _exp = math.frexp(x)
    return int(mantissa * 2**53) % 2 == 0


def sqrt_fraction(q: Fraction) -> float:
    """The float nearest to the square root of ``q >= 0`` (ties to even): what ``statistics`` returns."""
    if q < 0:
        raise ValueError("square root of a negative number")
    if q == 0:
        return 0.0
    # Start from the root of q scaled near 1 (float(q) itself may overflow or underflow).
    shift = (q.numerator.bit_length() - q.denominator.bit_length()) & ~1
    guess = math.ldexp(math.sqrt(float(q / Fraction(2) ** shift)), shift // 2)
    if math.isinf(guess):
        raise OverflowError("square root too large for a float")
    for _ in range(64):
        below = math.nextafter(guess, 0.0)
        above = math.nextafter(guess, math.inf)
        low_mid = (Fraction(below) + Fraction(guess)) / 2
        high_mid = (Fraction(guess) + Fraction(above)) / 2
        if low_mid * low_mid > q:
            guess = below
        elif high_mid * high_mid < q:
            guess = above
        elif low_mid * low_mid == q:
            return guess if _even_significand(guess) else below
        elif high_mid * high_mid == q:
            return guess if _even_significand(guess) else above
        else:
            return guess
    raise ArithmeticError("square root did not converge")  # pragma: no cover - the loop moves one ulp a step


def population_std(count: int, total: Fraction, total_squares: Fraction) -> float:
    """``statistics.pstdev`` from the exact count, sum and sum of squares."""
    if count < 1:
        raise ValueError("pstdev requires at least one data point")
    ssd = (count * total_squares - total * total) / count
    return sqrt_fraction(ssd / count)


# -- tier metrics -------------------------------------------------------------------------------------


def _check_multiplier(under_multiplier: float) -> float:
    value = float(under_multiplier)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"under_multiplier must be a positive number, got {under_multiplier!r}")
    return value


def _pct(k: int, n: int) -> float:
    return 100.0 * k / n if n else 0.0


def truncated_flags(arrays: EventArrays) -> np.ndarray:
    """``samples.truncated_mask``: ``truncated``, else ``is_truncated_output``, else False."""
    t = arrays.truncated
    return np.where(t >= 0, t == 1, arrays.is_truncated_output == 1)


def success_flags(arrays: EventArrays) -> np.ndarray:
    return arrays.success == 1


def truncation_disagreements(arrays: EventArrays) -> int:
    """``samples.truncation_flag_disagreements``: both truncation flags known and different."""
    a, b = arrays.truncated, arrays.is_truncated_output
    return int(((a >= 0) & (b >= 0) & (a != b)).sum())


@dataclass
class _Basics:
    """Per-row flags every metric needs, computed once and shared by every subset of rows.

    Token counts stay int32 in ``arrays``; float copies are made only of the rows a figure reads.
    A figure computed row by row is the same whether the reference computes it over all rows or a
    subset, so subsets reuse these flags instead of recomputing them.
    """

    arrays: EventArrays
    known: np.ndarray  # both token counts known
    truncated: np.ndarray
    success: np.ndarray
    _over: dict[float, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, arrays: EventArrays) -> _Basics:
        known = arrays.predicted.notna() & arrays.actual.notna()
        return cls(arrays, known, truncated_flags(arrays), success_flags(arrays))

    def predicted(self, rows: np.ndarray | None) -> np.ndarray:
        return self.arrays.predicted.floats_at(rows)

    def actual(self, rows: np.ndarray | None) -> np.ndarray:
        return self.arrays.actual.floats_at(rows)

    def budget(self, rows: np.ndarray | None) -> np.ndarray:
        return _budget_sent(self.arrays, rows)

    def over(self, multiplier: float) -> np.ndarray:
        if multiplier not in self._over:
            with np.errstate(invalid="ignore"):
                self._over[multiplier] = self.known & (self.actual(None) > self.predicted(None) * multiplier)
        return self._over[multiplier]

    def ratio_values(self, name: str, rows: np.ndarray | None) -> np.ndarray:
        """The values the reference sorts for one figure, over ``rows`` (a mask), in row order.

        ``waste``: finite predicted/actual; ``budget_waste``: finite budget/actual with both positive;
        ``smape``: 200 * |p - a| / (|p| + |a|) over non-truncated rows with a positive finite scale.
        """
        predicted, actual = self.predicted(rows), self.actual(rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "waste":
                values = predicted / actual
                return values[np.isfinite(values)]
            if name == "budget_waste":
                budget = self.budget(rows)
                values = budget / actual
                return values[np.isfinite(values) & (budget > 0) & (actual > 0)]
            scale = np.abs(predicted) + np.abs(actual)
            usable = ~_select(self.truncated, rows) & np.isfinite(scale) & (scale > 0)
            values = np.abs(predicted[usable] - actual[usable])
            values *= 200.0  # 200.0 * |p - a|, then / scale: the reference's order of operations
            values /= scale[usable]
            return values


def _select(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return values if rows is None else values[rows]


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, as a radix sort when the keys fit in 16 bits."""
    if len(keys) and int(keys.min()) >= 0 and int(keys.max()) < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    return np.argsort(keys, kind="stable")


def _occurs_twice(keys: np.ndarray) -> np.ndarray:
    """Mask of the non-negative ``keys`` that occur more than once."""
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    top = int(keys.max()) + 1
    if top <= 4 * len(keys) + 4096:
        return np.bincount(keys, minlength=top)[keys] > 1
    return pd.Series(keys).duplicated(keep=False).to_numpy()


def _member_of(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Mask of the non-negative ``keys`` found in ``pool``."""
    if len(keys) == 0 or len(pool) == 0:
        return np.zeros(len(keys), dtype=bool)
    top = max(int(keys.max()), int(pool.max())) + 1
    if top <= 4 * (len(keys) + len(pool)) + 4096:
        marks = np.zeros(top, dtype=bool)
        marks[pool] = True
        return marks[keys]
    return pd.Series(keys).isin(pd.unique(pool)).to_numpy()


def _both(mask: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return mask if rows is None else mask & rows


def _ratio_figures(base: _Basics, parts: list[np.ndarray | None]) -> dict[str, Any]:
    """Tier-2 figures and SMAPE summaries over the union of the disjoint row masks ``parts``."""
    return _shared_ratio_figures(base, parts, [list(range(len(parts)))])[0]


def _shared_ratio_figures(base: _Basics, parts: list[np.ndarray | None], documents: list[list[int]]
                          ) -> list[dict[str, Any]]:
    """Figures for several documents, each the union of some of the disjoint ``parts``.

    Each part's values are computed once; a document partitions its own concatenation of them, and
    its exact sums are the sums of its parts' exact sums. One figure at a time, to bound memory.
    """
    out: list[dict[str, Any]] = [{} for _ in documents]
    for name in ("waste", "budget_waste", "smape"):
        values = [base.ratio_values(name, part) for part in parts]
        sums = None if name == "budget_waste" else [exact_moments(v, squares=False)[0] for v in values]
        uses = [sum(i in members for members in documents) for i in range(len(parts))]
        for doc, members in zip(out, documents):
            for i in members:
                uses[i] -= 1
            if len(members) > 1:
                chosen = np.concatenate([values[i] for i in members])
            else:  # the last document to read a part may reorder it in place
                chosen = values[members[0]] if uses[members[0]] == 0 else values[members[0]].copy()
            total = None if sums is None else sum((sums[i] for i in members), Fraction(0))
            if name == "waste":
                doc["waste_ratio_median"], doc["waste_ratio_mean"], doc["waste_ratio_p90"] = _summary_and_p90(
                    chosen, total)
            elif name == "budget_waste":
                doc["budget_waste_p90"] = p90_of(chosen, overwrite=True)
            else:
                doc["smape_median"], doc["smape_mean"] = _summary(chosen, total)
            del chosen
        del values
    return out


def _document(arrays: EventArrays, base: _Basics, rows: np.ndarray | None, multiplier: float, figures: dict[str, Any],
              stratify: bool) -> dict[str, Any]:
    known, truncated = _select(base.known, rows), _select(base.truncated, rows)
    success = _select(base.success, rows)
    over = _select(base.over(multiplier), rows)
    total = len(known)
    truncated_count = int(truncated.sum())
    bounded = _both(base.truncated & base.known, rows)
    tier1 = tier1_block(multiplier, total, int(known.sum()), int(over.sum()), truncated_count, int(success.sum()))
    document: dict[str, Any] = {
        "tier1": tier1,
        "tier2": {key: figures[key] for key in
                  ("waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90")},
        "diagnostics": {
            "smape_mean": figures["smape_mean"],
            "smape_median": figures["smape_median"],
            "non_truncated_count": total - truncated_count,
            "truncated_count": truncated_count,
            "truncated_lower_bound": {
                "count": truncated_count,
                "predicted_mean": float(base.predicted(bounded).mean()) if bounded.any() else None,
                "actual_mean": float(base.actual(bounded).mean()) if bounded.any() else None,
                "underestimated_pct": _pct(int((over & truncated).sum()), int(bounded.sum())),
            },
        },
        "needs_tuning": needs_tuning(tier1),
    }
    if stratify:
        document["strata"] = _strata(arrays, rows, multiplier, known, over, truncated, success)
    return document


def compute_metrics_arrays(
    arrays: EventArrays,
    *,
    rows: np.ndarray | None = None,
    under_multiplier: float = DEFAULT_UNDER_MULTIPLIER,
    stratify: bool = False,
    basics: _Basics | None = None,
) -> dict[str, Any]:
    """``metrics.compute_metrics`` of the events at ``rows`` (a boolean mask; None: all), in row order."""
    multiplier = _check_multiplier(under_multiplier)
    base = basics or _Basics.of(arrays)
    return _document(arrays, base, rows, multiplier, _ratio_figures(base, [rows]), stratify)


def deliverable_codes(arrays: EventArrays) -> tuple[np.ndarray, list[str]]:
    """Row codes into the sorted deliverable buckets (``1``, ``2-5``, ``6+``), by ``deliverable_bucket``."""
    counts = np.where(arrays.deliverable_count.notna(), arrays.deliverable_count.values, 0)
    if len(counts) == 0:
        return np.zeros(0, dtype=np.int32), []
    low, high = int(counts.min()), int(counts.max())
    if high - low < 100_000:  # the usual case: a lookup table over the range of counts
        buckets = [deliverable_bucket(n) for n in range(low, high + 1)]
        names = sorted(set(buckets))
        lookup = np.array([names.index(b) for b in buckets], dtype=np.int32)
        return lookup[counts - low], names
    codes, uniques = pd.factorize(counts)
    buckets = [deliverable_bucket(int(n)) for n in uniques]
    names = sorted(set(buckets))
    lookup = np.array([names.index(b) for b in buckets], dtype=np.int32)
    return lookup[codes], names


def dimension_codes(arrays: EventArrays, dimension: str) -> tuple[np.ndarray, list[str]]:
    """Row codes into the sorted canonical labels of one strata dimension."""
    if dimension == "deliverables":
        return deliverable_codes(arrays)
    if dimension == "category":
        return arrays.category.canonical(normalise_category)
    return arrays.complexity.canonical(normalise_complexity)


def _flag_bits(known: np.ndarray, over: np.ndarray, truncated: np.ndarray, success: np.ndarray) -> np.ndarray:
    # The four Tier-1 flags of a row in one small integer, so one bincount counts them all.
    return known.astype(np.uint8) | (over.astype(np.uint8) << 1) | (truncated.astype(np.uint8) << 2) | (
        success.astype(np.uint8) << 3)


def _tier1_by_code(codes: np.ndarray, names: list, bits: np.ndarray, multiplier: float) -> dict[Any, dict[str, Any]]:
    """``tier1_metrics`` of the rows of each code (``names[code]``), for the codes that have rows."""
    size = len(names)
    counts = np.bincount(codes.astype(np.int64) * 16 + bits, minlength=size * 16).reshape(size, 16)
    totals = counts.sum(axis=1)
    patterns = np.arange(16)
    flagged = [counts[:, (patterns >> bit) & 1 == 1].sum(axis=1) for bit in range(4)]
    return {
        names[i]: tier1_block(multiplier, int(totals[i]), int(flagged[0][i]), int(flagged[1][i]),
                              int(flagged[2][i]), int(flagged[3][i]))
        for i in range(size) if totals[i] > 0
    }


def _strata(arrays: EventArrays, rows: np.ndarray | None, multiplier: float, known: np.ndarray, over: np.ndarray,
            truncated: np.ndarray, success: np.ndarray) -> dict[str, dict[str, Any]]:
    bits = _flag_bits(known, over, truncated, success)
    return {dimension: _tier1_by_code(_select(codes, rows), names, bits, multiplier)
            for dimension in STRATA_DIMENSIONS for codes, names in [dimension_codes(arrays, dimension)]}


def group_tier1_arrays(arrays: EventArrays, *, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER
                       ) -> dict[tuple[str, str], dict[str, Any]]:
    """``tier1_metrics`` of every canonical (category, complexity) group's events, sorted by group."""
    multiplier = _check_multiplier(under_multiplier)
    base = _Basics.of(arrays)
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    pairs = [(c, x) for c in cat_names for x in cx_names]  # code = category * len(cx_names) + complexity
    codes = cat_codes.astype(np.int64) * len(cx_names) + cx_codes
    bits = _flag_bits(base.known, base.over(multiplier), base.truncated, base.success)
    return _tier1_by_code(codes, pairs, bits, multiplier)


def tier_metrics_document_arrays(
    arrays: EventArrays, *, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER, clean_samples: int,
    basics: _Basics | None = None,
) -> dict[str, Any]:
    """``workflows.tier_metrics_document``: all events with strata, success-only, and the clean count.

    The successful and the other rows are the two parts both documents are made of.
    """
    multiplier = _check_multiplier(under_multiplier)
    base = basics or _Basics.of(arrays)
    every, successful = _shared_ratio_figures(base, [base.success, ~base.success], [[0, 1], [0]])
    return {
        "all_events": _document(arrays, base, None, multiplier, every, stratify=True),
        "success_only": _document(arrays, base, base.success, multiplier, successful, stratify=False),
        "clean_samples": int(clean_samples),
    }


# -- clean samples ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanSamples:
    """Which rows are clean samples (``samples.clean_samples``) and why the others are not."""

    mask: np.ndarray
    exclusions: dict[str, int]

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def clean_sample_rows(
    arrays: EventArrays,
    *,
    dedup: bool = True,
    min_actual: int = DEFAULT_MIN_ACTUAL_TOKENS,
    within: np.ndarray | None = None,
) -> CleanSamples:
    """The rows ``clean_samples`` keeps and the counts of ``sample_exclusions``, in one pass.

    ``within`` (a boolean mask) restricts both to those rows, as ``clean_samples(frame[within])``.
    """
    n = len(arrays)
    outside = len(EXCLUSION_REASONS) + 1
    reason = np.zeros(n, dtype=np.int8)  # 0: kept, else 1 + index into EXCLUSION_REASONS
    if within is not None:
        reason[~within] = outside
    missing = ~arrays.predicted.notna() | ~arrays.actual.notna()
    actual = np.where(arrays.actual.notna(), arrays.actual.values, min_actual)
    tests = (~success_flags(arrays), truncated_flags(arrays), missing, actual < min_actual)
    for code, failed in enumerate(tests, start=1):
        reason[(reason == 0) & failed] = code
    if dedup:
        reason[_duplicate_attempts(arrays, reason == 0)] = len(tests) + 1
    counts = np.bincount(reason, minlength=outside + 1)
    exclusions = {name: int(counts[i + 1]) for i, name in enumerate(EXCLUSION_REASONS)}
    return CleanSamples(mask=reason == 0, exclusions=exclusions)


def _duplicate_attempts(arrays: EventArrays, candidates: np.ndarray) -> np.ndarray:
    """Row indices that lose their phase's one slot to a later attempt (``keep="last"`` after sorting).

    Only rows whose phase occurs more than once among the candidates are sorted, as
    ``sort_values(["attempt", "event_id", "timestamp"], na_position="first", kind="mergesort")``
    sorts them, the original position breaking ties.
    """
    phase = arrays.phase_key
    keyed = np.flatnonzero(candidates & phase.notna())
    if len(keyed) < 2:
        return np.zeros(0, dtype=np.int64)
    rows = keyed[_occurs_twice(phase.values[keyed])]
    if len(rows) == 0:
        return rows
    group = phase.values[rows]

    def key(column: IntColumn) -> tuple[np.ndarray, np.ndarray]:
        present = column.notna()[rows]
        return present.astype(np.int8), np.where(present, column.values[rows], 0)

    attempt_present, attempt = key(arrays.attempt)
    event_present, event = key(arrays.event_id)
    stamp_present, stamp = key(arrays.timestamp_us)
    order = np.lexsort((rows, stamp, stamp_present, event, event_present, attempt, attempt_present, group))
    ordered_group = group[order]
    last_of_group = np.r_[ordered_group[1:] != ordered_group[:-1], True]
    return rows[order[~last_of_group]]


# -- gate ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleGroups:
    """Clean samples split into canonical (category, complexity) groups, row indices per group."""

    keys: list[tuple[str, str]]  # sorted
    rows: list[np.ndarray]  # row indices into the arrays, in row order

    def counts(self) -> dict[tuple[str, str], int]:
        return {key: len(r) for key, r in zip(self.keys, self.rows)}


def sample_groups(arrays: EventArrays, samples: np.ndarray) -> SampleGroups:
    """``calibration.group_samples`` of the clean rows ``samples`` (a boolean mask)."""
    usable = samples & arrays.predicted.notna() & arrays.actual.notna()
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    rows = np.flatnonzero(usable)
    pair = cat_codes[rows].astype(np.int64) * len(cx_names) + cx_codes[rows]
    order = stable_order(pair)
    pair_sorted = pair[order]
    starts = np.flatnonzero(np.r_[True, pair_sorted[1:] != pair_sorted[:-1]]) if len(pair_sorted) else np.zeros(0, int)
    bounds = np.r_[starts, len(pair_sorted)]
    found = []
    for start, end in itertools.pairwise(bounds):
        cat, cx = divmod(int(pair_sorted[start]), len(cx_names))
        found.append(((cat_names[cat], cx_names[cx]), rows[order[start:end]]))
    found.sort(key=lambda item: item[0])
    return SampleGroups(keys=[k for k, _r in found], rows=[r for _k, r in found])


def calibration_gate_arrays(
    clean_count: int,
    groups: SampleGroups,
    tier1: dict[str, Any],
    *,
    min_total: int = DEFAULT_MIN_TOTAL_SAMPLES,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    force: bool = False,
) -> GateDecision:
    """``gates.evaluate_calibration_gate`` from the clean count and the group sizes."""
    counts = groups.counts()
    group = None
    if clean_count:
        (category, complexity), n = min(counts.items(), key=lambda item: (-item[1], item[0]))
        group = {"category": category, "complexity": complexity, "n": int(n)}
    under = float(tier1.get("underestimation_rate_pct") or 0.0)
    truncation = float(tier1.get("truncation_rate_pct") or 0.0)
    return decide_gate(clean_count, group, under, truncation, min_total=min_total, min_samples=min_samples,
                       force=force)


# -- calibration --------------------------------------------------------------------------------------


def _datetime_from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _masked_range(column: IntColumn, rows: np.ndarray) -> tuple[int, int] | None:
    """(min, max) of ``column`` over ``rows`` where it is known, without copying; None when empty."""
    chosen = rows if column.valid is None else rows & column.valid
    if not chosen.any():
        return None
    values = column.values
    info = np.iinfo(values.dtype)
    return (int(values.min(where=chosen, initial=info.max)), int(values.max(where=chosen, initial=info.min)))


def provenance_arrays(arrays: EventArrays, samples: np.ndarray, provenance: dict[str, Any]) -> Provenance:
    """``calibration.build_provenance`` of the rows ``samples`` (a boolean mask)."""
    ids = _masked_range(arrays.event_id, samples)
    stamps = _masked_range(arrays.timestamp_us, samples)
    exclusions = {str(k): int(v) for k, v in (provenance.get("exclusions") or {}).items()}
    return Provenance(
        event_id_min=ids[0] if ids else None,
        event_id_max=ids[1] if ids else None,
        time_window_start=_datetime_from_us(stamps[0]) if stamps else None,
        time_window_end=_datetime_from_us(stamps[1]) if stamps else None,
        samples_kept=int(samples.sum()),
        samples_excluded=sum(exclusions.values()),
        **{**provenance, "exclusions": exclusions},
    )


def _by_size(item: Any) -> tuple[int, str, str]:
    return (-item.sample_count, item.category, item.complexity)


def calibrate_autopack_median_arrays(
    arrays: EventArrays,
    samples: np.ndarray,
    *,
    groups: SampleGroups | None = None,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    confidence_threshold: float = 0.7,
    provenance: dict[str, Any],
) -> CalibrationResult:
    """``calibration.calibrate_autopack_median`` of the clean rows ``samples`` (a boolean mask)."""
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    groups = groups or sample_groups(arrays, samples)
    big = [i for i, rows in enumerate(groups.rows) if len(rows) >= min_samples]
    below = [
        BelowThresholdGroup(category=groups.keys[i][0], complexity=groups.keys[i][1], sample_count=len(rows),
                            needed=min_samples - len(rows))
        for i, rows in enumerate(groups.rows) if len(rows) < min_samples
    ]
    calibrated: list[GroupCalibration] = []
    for i in big:  # one group at a time: temporaries stay the size of the largest group
        rows = groups.rows[i]
        predicted = arrays.predicted.values[rows]
        actual = arrays.actual.values[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(predicted != 0, actual / predicted, 0.0)  # int / int: the exact quotient, rounded
        sent = np.where(arrays.actual_max_tokens.notna()[rows], arrays.actual_max_tokens.values[rows], 0)
        selected_known = arrays.selected_budget.notna()[rows]
        selected = np.where(selected_known, arrays.selected_budget.values[rows], 0)
        budgets = np.where(sent != 0, sent, selected)  # Python's `s or b or 0`
        with np.errstate(divide="ignore", invalid="ignore"):
            waste = np.where(actual != 0, budgets / actual, 0.0)
        ratio_sum, ratio_squares = exact_moments(ratios)
        calibrated.append(_group_figures(groups.keys[i], ratios, waste, predicted, actual, selected[selected_known],
                                         ratio_sum, ratio_squares, confidence_threshold))
    return CalibrationResult(
        method=AUTOPACK_MEDIAN,
        parameters={"min_samples": int(min_samples), "confidence_threshold": float(confidence_threshold)},
        groups=sorted(calibrated, key=_by_size),
        below_threshold=sorted(below, key=_by_size),
        provenance=provenance_arrays(arrays, samples, provenance),
    )


def _group_figures(key: tuple[str, str], ratios: np.ndarray, waste: np.ndarray, predicted: np.ndarray,
                   actual: np.ndarray, known_selected: np.ndarray, ratio_sum: Fraction, ratio_squares: Fraction,
                   threshold: float) -> GroupCalibration:
    n = len(ratios)
    low, high = float(ratios.min()), float(ratios.max())
    upper_middle = order_statistics(ratios, [n // 2], overwrite=True)[n // 2]  # our own copies: reorder them
    p90_index = min(int(0.9 * n), n - 1)
    picked = order_statistics(waste, [n // 2, p90_index], overwrite=True)
    std = population_std(n, ratio_sum, ratio_squares)
    confidence = 0.6 * min(1.0, n / FULL_CONFIDENCE_SAMPLES) + 0.4 * (1.0 / (1.0 + std))
    return GroupCalibration(
        category=key[0],
        complexity=key[1],
        sample_count=n,
        avg_actual=float(int(actual.sum())) / n,
        avg_estimated=float(int(predicted.sum())) / n,
        avg_ratio=float(ratio_sum) / n,
        median_ratio=upper_middle,
        min_ratio=low,
        max_ratio=high,
        ratio_std=std,
        confidence=confidence,
        proposed_multiplier=upper_middle,
        median_budget_waste=float(picked[n // 2]),
        p90_budget_waste=float(picked[p90_index]),
        avg_selected_budget=float(int(known_selected.sum())) / len(known_selected) if len(known_selected) else None,
        actionable=confidence >= threshold,
        action=action_text(upper_middle),
    )


# -- coverage calibration -----------------------------------------------------------------------------


def coverage_observations(
    arrays: EventArrays, *, dedup: bool = True, all_clean: CleanSamples | None = None
) -> tuple[CleanSamples, np.ndarray]:
    """``coverage.split_observations``: (clean samples among positive predictions, censored rows mask).

    A truncated row is censored when its prediction is positive and its actual known; with dedup a
    phase that has a clean sample drops its censored rows, and the rest keep their last attempt.
    """
    positive = arrays.predicted.notna() & (arrays.predicted.values > 0)
    if all_clean is not None and positive.all():
        clean = all_clean  # clean_samples(frame[positive]) is clean_samples(frame)
    else:
        clean = clean_sample_rows(arrays, dedup=dedup, within=positive)
    censored = positive & arrays.actual.notna() & truncated_flags(arrays)
    if dedup and censored.any():
        width = _phase_width(arrays)
        phase = arrays.phase_key
        run_ok, phase_ok = arrays.run_code.notna(), arrays.phase_code.notna()
        if (clean.mask & ~(run_ok & phase_ok)).any():
            # The reference zips run ids and phase ids after dropping missing ones separately.
            runs = arrays.run_code.values[clean.mask & run_ok]
            phases = arrays.phase_code.values[clean.mask & phase_ok]
            size = min(len(runs), len(phases))
            pairs = runs[:size].astype(np.int64) * width + phases[:size]
        else:
            pairs = phase.values[clean.mask]
        rows = np.flatnonzero(censored & run_ok & phase_ok)
        has_clean = _member_of(phase.values[rows], pairs)
        censored = censored.copy()
        censored[rows[has_clean]] = False
        censored[_duplicate_attempts(arrays, censored)] = False
    return clean, censored


def _phase_width(arrays: EventArrays) -> int:
    return int(arrays.phase_code.values.max()) + 1 if len(arrays.phase_code.values) else 1


def _coverage_level(ratios: np.ndarray, censored: int, parent: float | None, target_pct: float,
                    prior: float) -> LevelValue:
    """``coverage.level_value`` from the ratios and the number of censored observations."""
    n = len(ratios) + censored
    if n == 0:
        raise ValueError("no observations")
    k = order_statistic_index(n, target_pct)
    if k <= n:
        own = float(np.partition(ratios, k - 1)[k - 1]) if k - 1 < len(ratios) else math.inf
        finite = True
    else:
        own = math.inf if censored else float(ratios.max())
        finite = False
    w = coverage_weight(len(ratios), prior)
    value = own if finite or parent is None else borrow(own, parent, w)
    return LevelValue(value, own, k, finite, w, parent)


def _budget_sent(arrays: EventArrays, rows: np.ndarray | None) -> np.ndarray:
    """``metrics.budget_sent``: the ceiling sent, else (missing or 0) the selected budget."""
    sent = arrays.actual_max_tokens.floats_at(rows)
    selected = arrays.selected_budget.floats_at(rows)
    return np.where(np.isnan(sent) | (sent == 0), selected, sent)


def _coverage_waste(budget_sent: np.ndarray, predicted: np.ndarray, actual: np.ndarray, scale: float,
                    table: CoefficientTable | None, key: tuple[str, str]) -> tuple[float | None, float | None]:
    """``coverage._waste`` of one group's clean samples: budget-waste P50 and P90 with estimates scaled."""
    if table is None or scale == 1.0:
        budget = budget_sent * scale
    else:
        floor = table.budget_floor(key[0], key[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = np.where(budget_sent > floor, budget_sent / predicted, table.budget.buffer_margin)
        budget = np.minimum(table.budget.cap, np.maximum(floor, np.floor(predicted * scale * margin)))
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = budget / actual
        values = waste[np.isfinite(waste) & (budget > 0)]
    if len(values) == 0:
        return None, None
    return float(np.median(values)), p90_of(values, overwrite=True)


@dataclass
class CoverageGroup:
    """One (category, complexity) group's observations: row indices and their figures, in row order."""

    key: tuple[str, str]
    clean_rows: np.ndarray
    censored_rows: np.ndarray
    predicted: np.ndarray  # of the clean rows
    actual: np.ndarray
    budget: np.ndarray
    censored_predicted: np.ndarray
    censored_actual: np.ndarray
    ratios: np.ndarray  # actual / predicted of the clean rows
    bounds: np.ndarray  # max(ceiling, actual) / predicted of the censored rows

    # What the calibration plot reads (the names of ``coverage.GroupObservations``).
    @property
    def lower_bounds(self) -> np.ndarray:
        return self.bounds

    @property
    def size(self) -> int:
        return len(self.clean_rows) + len(self.censored_rows)


def _coverage_group(arrays: EventArrays, group: CoverageGroup, level: LevelValue, tolerance: float,
                    target_pct: float, threshold: float, table: CoefficientTable | None) -> GroupCalibration:
    """``coverage._group`` for one group: the same figures, from the arrays."""
    clean = len(group.ratios) > 0
    selected = arrays.selected_budget.floats_at(group.clean_rows if clean else group.censored_rows)

    def waste(scale: float, with_table: CoefficientTable | None) -> tuple[float | None, float | None]:
        return _coverage_waste(group.budget, group.predicted, group.actual, scale, with_table, group.key)

    return group_calibration(
        group.key, ratios=group.ratios, bounds=group.bounds,
        source_actual=np.asarray(group.actual if clean else group.censored_actual, dtype=float),
        source_predicted=np.asarray(group.predicted if clean else group.censored_predicted, dtype=float),
        selected=selected[~np.isnan(selected)],
        level=level, parent_name=f"category {group.key[0]}", tolerance=tolerance, target_pct=target_pct,
        threshold=threshold, waste_now=waste(1.0, None), projected_waste=lambda scale: waste(scale, table),
    )


def coverage_groups(
    arrays: EventArrays, *, dedup: bool = True, all_clean: CleanSamples | None = None
) -> tuple[CleanSamples, np.ndarray, list[CoverageGroup]]:
    """``coverage.group_observations``: (clean samples, censored rows mask, groups sorted by key)."""
    clean, censored = coverage_observations(arrays, dedup=dedup, all_clean=all_clean)
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    rows = np.flatnonzero(clean.mask | censored)
    # Group by (category, complexity), clean rows before censored ones, row order kept within each.
    pair = (cat_codes[rows].astype(np.int64) * len(cx_names) + cx_codes[rows]) * 2 + censored[rows]
    order = stable_order(pair)
    rows, pair = rows[order], pair[order]
    del order
    starts = np.flatnonzero(np.r_[True, pair[1:] // 2 != pair[:-1] // 2]) if len(pair) else np.zeros(0, dtype=np.int64)
    bounds_at = np.r_[starts, len(pair)]
    # The figures of the used rows, gathered once in group order; every group is a slice (a view).
    predicted, actual, budget = arrays.predicted.floats_at(rows), arrays.actual.floats_at(rows), _budget_sent(
        arrays, rows)

    groups: list[CoverageGroup] = []
    for start, end in itertools.pairwise(bounds_at):
        cat, cx = divmod(int(pair[start]) // 2, len(cx_names))
        split = start + int(np.searchsorted(pair[start:end] % 2, 1))  # first censored row
        kept, cut = slice(start, split), slice(split, end)
        ceiling = np.nan_to_num(budget[cut], nan=0.0)
        groups.append(CoverageGroup(
            key=(cat_names[cat], cx_names[cx]),
            clean_rows=rows[kept],
            censored_rows=rows[cut],
            predicted=predicted[kept], actual=actual[kept], budget=budget[kept],
            censored_predicted=predicted[cut], censored_actual=actual[cut],
            ratios=actual[kept] / predicted[kept],
            bounds=np.maximum(ceiling, np.nan_to_num(actual[cut], nan=0.0)) / predicted[cut],
        ))
    groups.sort(key=lambda g: g.key)
    return clean, censored, groups


def calibrate_coverage_arrays(
    arrays: EventArrays,
    *,
    min_samples: int = 5,
    confidence_threshold: float = 0.7,
    dedup: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    target_pct: float = DEFAULT_TARGET_PCT,
    prior_weight: float = PRIOR_WEIGHT,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any],
    all_clean: CleanSamples | None = None,
    observed: tuple[CleanSamples, np.ndarray, list[CoverageGroup]] | None = None,
) -> CalibrationResult:
    """``coverage.calibrate_coverage`` of all the events in ``arrays``.

    ``all_clean`` may pass ``clean_sample_rows(arrays, dedup=dedup)`` and ``observed`` the result of
    ``coverage_groups(arrays, dedup=dedup)`` when the caller has them already.
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if not 0 < target_pct < 100 or tolerance <= 0 or prior_weight <= 0:
        raise ValueError("need 0 < target_pct < 100, tolerance > 0 and prior_weight > 0")
    clean, censored, groups = observed or coverage_groups(arrays, dedup=dedup, all_clean=all_clean)

    calibrated: list[GroupCalibration] = []
    below: list[BelowThresholdGroup] = []
    if groups:
        root = _coverage_level(np.concatenate([g.ratios for g in groups]), sum(len(g.censored_rows) for g in groups),
                               None, target_pct, prior_weight)
        categories = {}
        for category in sorted({g.key[0] for g in groups}):
            members = [g for g in groups if g.key[0] == category]
            categories[category] = _coverage_level(np.concatenate([g.ratios for g in members]),
                                                   sum(len(g.censored_rows) for g in members), root.value,
                                                   target_pct, prior_weight)
        for group in groups:
            size = len(group.clean_rows) + len(group.censored_rows)
            if size < min_samples:
                below.append(BelowThresholdGroup(category=group.key[0], complexity=group.key[1], sample_count=size,
                                                 needed=min_samples - size))
                continue
            level = _coverage_level(group.ratios, len(group.censored_rows), categories[group.key[0]].value,
                                    target_pct, prior_weight)
            calibrated.append(_coverage_group(arrays, group, level, tolerance, target_pct, confidence_threshold,
                                              coefficients))

    everything = all_clean if all_clean is not None else clean_sample_rows(arrays, dedup=dedup)
    exclusions = dict(everything.exclusions)
    failed = int((~success_flags(arrays)[censored]).sum())
    exclusions["failed"] -= failed
    exclusions["truncated"] -= int(censored.sum()) - failed
    exclusions["zero_prediction"] = everything.count - clean.count
    return CalibrationResult(
        method=COVERAGE,
        parameters={
            "min_samples": int(min_samples),
            "confidence_threshold": float(confidence_threshold),
            "target_underestimation_pct": float(target_pct),
            "tolerance": float(tolerance),
            "prior_weight": float(prior_weight),
            "censored_observations": int(censored.sum()),
        },
        groups=sorted(calibrated, key=_by_size),
        below_threshold=sorted(below, key=_by_size),
        provenance=provenance_arrays(arrays, clean.mask | censored, {**provenance, "exclusions": exclusions}),
    )


def calibrations_arrays(
    arrays: EventArrays,
    samples: CleanSamples,
    groups: SampleGroups,
    *,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    confidence_threshold: float = 0.7,
    dedup: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any],
    observed: tuple[CleanSamples, np.ndarray, list[CoverageGroup]] | None = None,
) -> dict[str, CalibrationResult]:
    """Both methods, as ``workflows.calibrate`` runs them: ``samples`` and ``groups`` are the clean
    samples (``dedup`` as given) and their groups, ``observed`` optionally ``coverage_groups``' result;
    ``provenance`` gets the exclusions added. The two methods run side by side on two threads (numpy
    releases the GIL in its heavy loops)."""
    from concurrent.futures import ThreadPoolExecutor

    shared = {**provenance, "exclusions": samples.exclusions}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="median") as pool:
        median = pool.submit(calibrate_autopack_median_arrays, arrays, samples.mask, groups=groups,
                             min_samples=min_samples, confidence_threshold=confidence_threshold, provenance=shared)
        coverage = calibrate_coverage_arrays(
            arrays, min_samples=min_samples, confidence_threshold=confidence_threshold, dedup=dedup,
            tolerance=tolerance, coefficients=coefficients, provenance=shared, all_clean=samples, observed=observed)
        return {COVERAGE: coverage, AUTOPACK_MEDIAN: median.result()}


# -- the whole analysis -------------------------------------------------------------------------------


@dataclass
class Analysis:
    """What the pipeline computes after extraction: metrics, samples, gate and both calibrations."""

    metrics: dict[str, Any]
    samples: CleanSamples
    gate: GateDecision
    calibrations: dict[str, CalibrationResult]  # by method; empty when the gate is closed
    timings: dict[str, float] = field(default_factory=dict)


def analyse(
    arrays: EventArrays,
    *,
    under_multiplier: float = DEFAULT_UNDER_MULTIPLIER,
    dedup: bool = True,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    confidence_threshold: float = 0.7,
    force: bool = False,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any] | None = None,
    threads: int = 2,
) -> Analysis:
    """What ``workflows.tier_metrics_document`` and ``workflows.calibrate`` compute, at scale.

    Tier metrics (all events with strata, success-only), clean samples, the gate and, when the gate is
    open (or ``force``), both calibration methods with the parameters ``calibrate`` gives them:
    ``coverage`` against the ``under_multiplier`` tolerance with ``coefficients``, and
    ``autopack-median``. ``provenance`` (coefficient file version, Dagster run id, database) is
    completed with the exclusions and the gate, as there.

    With ``threads=2`` two chains run side by side (numpy releases the GIL in its heavy loops): the
    tier metrics in one; clean samples, groups and both calibrations in the other. The calibrations
    start before the gate is known and are dropped if it stays closed; their provenance gets the
    gate's summary at the end. ``timings`` holds seconds per step (steps of the two chains overlap).
    """
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    timings: dict[str, float] = {}
    lock = threading.Lock()

    def timed(name: str, work: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        result = work()
        with lock:
            timings[name] = time.perf_counter() - began
        return result

    base_provenance = {**(provenance or {}), "dedup": dedup}
    def metrics_chain(samples_future: Any) -> dict[str, Any]:
        basics = timed("per_row_flags", lambda: _Basics.of(arrays))
        document = timed("tier_metrics", lambda: tier_metrics_document_arrays(
            arrays, under_multiplier=under_multiplier, clean_samples=0, basics=basics))
        document["clean_samples"] = samples_future.result().count
        return document

    def calibration_chain(samples: CleanSamples) -> tuple[SampleGroups, dict[str, CalibrationResult]]:
        groups = timed("sample_groups", lambda: sample_groups(arrays, samples.mask))
        results = timed("calibrations", lambda: calibrations_arrays(
            arrays, samples, groups, min_samples=min_samples, confidence_threshold=confidence_threshold,
            dedup=dedup, tolerance=under_multiplier, coefficients=coefficients, provenance=base_provenance))
        return groups, results

    began = time.perf_counter()
    if threads > 1:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="analyse") as pool:
            samples_future = pool.submit(timed, "clean_samples", lambda: clean_sample_rows(arrays, dedup=dedup))
            metrics_future = pool.submit(metrics_chain, samples_future)
            samples = samples_future.result()
            groups, results = calibration_chain(samples)
            metrics = metrics_future.result()
    else:
        from concurrent.futures import Future

        samples_future: Future = Future()
        samples = timed("clean_samples", lambda: clean_sample_rows(arrays, dedup=dedup))
        samples_future.set_result(samples)
        metrics = metrics_chain(samples_future)
        groups, results = calibration_chain(samples)
    gate = calibration_gate_arrays(samples.count, groups, metrics["all_events"]["tier1"], min_samples=min_samples,
                                   force=force)
    if gate.open:
        stamp = {"forced": gate.forced, "gate_summary": gate.summary()}
        results = {name: results[name].model_copy(update={"provenance": results[name].provenance.model_copy(
            update=stamp)}) for name in (COVERAGE, AUTOPACK_MEDIAN)}
    else:
        results = {}
    timings["total"] = time.perf_counter() - began
    return Analysis(metrics=metrics, samples=samples, gate=gate, calibrations=results, timings=timings)
