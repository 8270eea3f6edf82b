"""Oracle: the calibration gate over a pandas frame of clean samples (the product: ``domain.analysis.gate``
and ``analysis.calibrations.calibration_gate_arrays``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from autopack_pipeline.domain.analysis.gate import (  # noqa: F401 - re-exported for the tests
    GateDecision,
    certain_group_breaches,
    decide_gate,
    group_breach_text,
)
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES, MIN_TOTAL_SAMPLES
from autopack_pipeline_tests.oracle.samples import canonical_labels

DEFAULT_MIN_TOTAL_SAMPLES = MIN_TOTAL_SAMPLES
DEFAULT_MIN_GROUP_SAMPLES = MIN_GROUP_SAMPLES


def largest_group(samples: pd.DataFrame) -> dict[str, Any] | None:
    """The (category, complexity) group with the most samples, or ``None`` without samples.

    Labels go through the canonical normalisers so spellings of one group are counted together.
    Ties go to the alphabetically first group, so the answer does not depend on row order.
    """
    if len(samples) == 0:
        return None
    categories = canonical_labels(samples["category"], normalise_category)
    complexities = canonical_labels(samples["complexity"], normalise_complexity)
    counts = pd.Series(list(zip(categories, complexities)), dtype=object).value_counts()
    (category, complexity), n = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return {"category": category, "complexity": complexity, "n": int(n)}


def evaluate_calibration_gate(
    samples: pd.DataFrame,
    tier1: dict[str, Any],
    *,
    min_total: int = DEFAULT_MIN_TOTAL_SAMPLES,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    force: bool = False,
    group_tier1: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> GateDecision:
    """Decide whether calibration may run on ``samples`` (clean samples) given the ``tier1`` block.

    All three must hold: at least ``min_total`` clean samples; at least one (category, complexity)
    group with ``min_samples``; Tier 1 breached (underestimation > 5% or truncation > 2%) overall or,
    given ``group_tier1`` (each group's Tier-1 counts over the same events as ``tier1``), certainly
    in one group (:func:`certain_group_breaches`). With ``force`` the gate opens regardless, but the
    failed conditions stay in ``reasons``.
    """
    under = float(tier1.get("underestimation_rate_pct") or 0.0)
    truncation = float(tier1.get("truncation_rate_pct") or 0.0)
    breaches = None
    if group_tier1 is not None:
        categories = canonical_labels(samples["category"], normalise_category)
        complexities = canonical_labels(samples["complexity"], normalise_complexity)
        counts = pd.Series(list(zip(categories, complexities)), dtype=object).value_counts()
        breaches = certain_group_breaches(group_tier1, {k: int(n) for k, n in counts.items()},
                                          min_samples=min_samples)
    return decide_gate(int(len(samples)), largest_group(samples), under, truncation,
                       min_total=min_total, min_samples=min_samples, force=force, group_breaches=breaches)
