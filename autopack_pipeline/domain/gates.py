"""The calibration gate (DESIGN §6): when recalibrating is both possible and warranted.

Autopack documented these conditions but never enforced them (its pitfall P15), and recalibrated on
25 samples spread over groups of 3 to 15. Here they are one function that the Dagster sensor, the
asset and the CLI all call, and every refusal carries the number that failed next to its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.metrics import (
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
)
from autopack_pipeline.domain.samples import canonical_labels

DEFAULT_MIN_TOTAL_SAMPLES = 20
DEFAULT_MIN_GROUP_SAMPLES = 5


@dataclass(frozen=True)
class GateDecision:
    """Outcome of :func:`evaluate_calibration_gate`.

    ``open`` is whether calibration may run; ``forced`` whether it was opened by ``--force`` despite
    ``reasons`` (which are kept, so the report can say what was overridden). ``observed`` and
    ``thresholds`` hold the figures behind the decision for metadata and JSON output.
    """

    open: bool
    forced: bool
    reasons: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs, sensor skip messages and report headers."""
        if self.forced and self.reasons:
            return "Calibration gate forced open (--force) despite: " + "; ".join(self.reasons)
        if self.open:
            group = self.observed.get("largest_group") or {}
            return (
                f"Calibration gate open{' (forced)' if self.forced else ''}: "
                f"{self.observed.get('clean_samples', 0)} clean samples, largest group "
                f"{group.get('category')}/{group.get('complexity')} with {group.get('n')}, "
                f"underestimation {self.observed.get('underestimation_rate_pct', 0.0):.1f}%, "
                f"truncation {self.observed.get('truncation_rate_pct', 0.0):.1f}%"
            )
        return "Calibration gate closed: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, with the summary line included."""
        return {
            "open": self.open,
            "forced": self.forced,
            "reasons": list(self.reasons),
            "observed": dict(self.observed),
            "thresholds": dict(self.thresholds),
            "summary": self.summary(),
        }


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
) -> GateDecision:
    """Decide whether calibration may run on ``samples`` (clean samples) given the ``tier1`` block.

    All three must hold: at least ``min_total`` clean samples; at least one (category, complexity)
    group with ``min_samples``; Tier 1 breached (underestimation > 5% or truncation > 2%). With
    ``force`` the gate opens regardless, but the failed conditions stay in ``reasons``.
    """
    under = float(tier1.get("underestimation_rate_pct") or 0.0)
    truncation = float(tier1.get("truncation_rate_pct") or 0.0)
    return decide_gate(int(len(samples)), largest_group(samples), under, truncation,
                       min_total=min_total, min_samples=min_samples, force=force)


def decide_gate(
    clean: int,
    group: dict[str, Any] | None,
    under: float,
    truncation: float,
    *,
    min_total: int = DEFAULT_MIN_TOTAL_SAMPLES,
    min_samples: int = DEFAULT_MIN_GROUP_SAMPLES,
    force: bool = False,
) -> GateDecision:
    """The gate's rule from its four figures, whichever path computed them (pandas or columnar)."""
    reasons: list[str] = []
    if clean < min_total:
        reasons.append(f"only {clean} clean samples; the gate needs at least {min_total}")
    if group is None:
        reasons.append(f"no (category, complexity) group has samples; the gate needs one with at least {min_samples}")
    elif group["n"] < min_samples:
        reasons.append(
            f"the largest (category, complexity) group, {group['category']}/{group['complexity']}, "
            f"has {group['n']} clean samples; the gate needs one with at least {min_samples}"
        )
    if not (under > UNDERESTIMATION_TARGET_PCT or truncation > TRUNCATION_TARGET_PCT):
        reasons.append(
            f"Tier 1 is within targets: underestimation {under:.1f}% (limit {UNDERESTIMATION_TARGET_PCT:.1f}%), "
            f"truncation {truncation:.1f}% (limit {TRUNCATION_TARGET_PCT:.1f}%); calibration runs only "
            "when one is breached"
        )
    return GateDecision(
        open=force or not reasons,
        forced=force,
        reasons=reasons,
        observed={
            "clean_samples": clean,
            "largest_group": group,
            "underestimation_rate_pct": under,
            "truncation_rate_pct": truncation,
        },
        thresholds={
            "min_clean_samples": min_total,
            "min_group_samples": min_samples,
            "underestimation_rate_pct": UNDERESTIMATION_TARGET_PCT,
            "truncation_rate_pct": TRUNCATION_TARGET_PCT,
        },
    )
