"""Exact sums of floats, and the ``math.fsum`` means and ``statistics.pstdev`` built on them.

``math.fsum`` means are ``math.fsum`` over the same values; ``statistics.pstdev`` per group is the
correctly rounded square root of the exact population variance, from exact integer sums of the
floats' mantissas (``statistics`` computes the same rational with ``Fraction``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

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


def fsum_mean(values: np.ndarray) -> float:
    """``math.fsum(values) / len(values)``: the exactly rounded sum, from exact integer arithmetic."""
    return float(exact_moments(values, squares=False)[0]) / len(values)


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
