"""Rates and their Wilson intervals: the Tier-1 block every metrics document and stratum reports.

Pure arithmetic on counts, shared by the whole-window metrics, the strata, the per-group figures and
the gate. On Autopack-sized data (tens of events) a point rate alone cannot say whether a 5% target
is met, so every rate carries its Wilson 95% interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autopack_pipeline.domain.targets import (
    BUDGET_WASTE_P90_TARGET,
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
)

# Two-sided 95% normal quantile, to full double precision.
Z_95 = 1.959963984540054

# The dimensions the strata split the events by (deliverables as buckets ``1``, ``2-5``, ``6+``).
STRATA_DIMENSIONS = ("category", "complexity", "deliverables")


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials, in percent.

    With no trials nothing is known, so the interval is the whole range ``(0.0, 100.0)``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 100.0)
    centre, half_width = _wilson_centre_and_half_width(k, n, z, math.sqrt)
    # Clamp away float dust so 0/n starts at exactly 0 and n/n ends at exactly 100.
    low = max(0.0, centre - half_width) if k > 0 else 0.0
    high = min(1.0, centre + half_width) if k < n else 1.0
    return (100.0 * low, 100.0 * high)


def wilson_highs(k: np.ndarray, n: int, z: float = Z_95) -> np.ndarray:
    """The upper ends of :func:`wilson_interval` (``k`` of ``n``, ``n`` > 0) for every count in ``k``
    at once, each the same float as its own call gives (the frontier's grid: ~10,000 calls a calibration)."""
    centre, half_width = _wilson_centre_and_half_width(np.asarray(k, dtype=np.int64), n, z, np.sqrt)
    return 100.0 * np.where(k < n, np.minimum(1.0, centre + half_width), 1.0)


def _wilson_centre_and_half_width(k, n: int, z: float, sqrt) -> tuple:
    """The Wilson interval's centre and half width (fractions), of one count (``math.sqrt``) or of an
    array of counts (``np.sqrt``): the same operations in the same order, so the same floats."""
    p = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return centre, half_width


def percent(k: int, n: int) -> float:
    """``k`` of ``n`` in percent; 0 for an empty set."""
    return 100.0 * k / n if n else 0.0


def _rate_block(name: str, k: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(k, n)
    return {name: percent(k, n), f"{name}_ci": [low, high]}


def tier1_block(multiplier: float, total: int, under_n: int, under_k: int, truncated_k: int,
                success_k: int) -> dict[str, Any]:
    """The ``tier1_metrics`` document from its counts.

    Underestimation is ``under_k`` of the ``under_n`` rows with both token counts known; truncation
    and success are over all ``total`` rows.
    """
    return {
        **_rate_block("underestimation_rate_pct", under_k, under_n),
        **_rate_block("truncation_rate_pct", truncated_k, total),
        **_rate_block("success_rate_pct", success_k, total),
        "under_multiplier": multiplier,
        "total_samples": total,
        "underestimation_samples": under_n,
        "underestimated_count": under_k,
        "truncated_count": truncated_k,
        "success_count": success_k,
    }


def check_under_multiplier(under_multiplier: float) -> float:
    """``under_multiplier`` as a float, refused unless it is a positive finite number."""
    value = float(under_multiplier)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"under_multiplier must be a positive number, got {under_multiplier!r}")
    return value


def needs_tuning(tier1: dict[str, Any]) -> bool:
    """Autopack's decision: underestimation above 5% or truncation above 2%."""
    return (
        float(tier1.get("underestimation_rate_pct") or 0.0) > UNDERESTIMATION_TARGET_PCT
        or float(tier1.get("truncation_rate_pct") or 0.0) > TRUNCATION_TARGET_PCT
    )


def budget_waste_within_target(tier2: dict[str, Any]) -> bool | None:
    """Whether budget-waste P90 is under :data:`BUDGET_WASTE_P90_TARGET`; ``None`` when unknown."""
    value = tier2.get("budget_waste_p90")
    return None if value is None else value < BUDGET_WASTE_P90_TARGET
