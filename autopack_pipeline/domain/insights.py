"""Insights: single findings from the figures (Tier-1 breaches, calibration recommendations, sample
shortfalls) that :mod:`.tasks` groups into patterns and turns into improvement tasks.

Outcome, drift and budget insights are made in their own modules (:mod:`.outcome_insights`,
:mod:`.drift`, :mod:`.budget_calibration`) with the same :class:`Insight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autopack_pipeline.domain.analysis import EventArrays, group_tier1_arrays
from autopack_pipeline.domain.targets import (
    DECREASE_BELOW,
    INCREASE_ABOVE,
    TRUNCATION_TARGET_PCT,
    UNDER_TOLERANCE,
    UNDERESTIMATION_TARGET_PCT,
)

HIGH_SEVERITY = 6  # an insight at or above this counts as "high" in a pattern's base severity
# A Tier-1 breach is critical when even the lower end of its 95% interval is at least 5x the target
# (e.g. underestimation surely >= 25%: one call in four runs out of budget), high at 2x, medium when
# the interval lies above the target, low when it still includes the target (not demonstrated).
CRITICAL_BREACH_FACTOR = 5.0
HIGH_BREACH_FACTOR = 2.0
# One severity in the middle of each priority band of priority_for.
BREACH_SEVERITY = {"critical": 9, "high": 7, "medium": 5, "low": 3}


@dataclass(frozen=True)
class Insight:
    """One finding, with the figures behind it; patterns of them become tasks."""

    kind: str  # tier1_breach | truncation_hotspot | calibration_recommendation | sample_shortfall | drift
    #            | cost_sink | failure_mode | retry_cause
    subject: str  # what it is about, e.g. "underestimation:overall" or "implementation/medium"
    title: str
    detail: str
    confidence: float
    severity: int  # 1..10; Autopack's "high" maps to 6 and "medium" to 4, the same bands as priority
    task_kind: str  # review_coefficients | collect_samples | investigate_estimator | ...
    requires_approval: bool
    effort: str = "M"
    evidence: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the asset (or table) whose figures it came from, e.g. "tier_metrics"

    @property
    def high(self) -> bool:
        return self.severity >= HIGH_SEVERITY


def breach_level(ci_low: float, target: float) -> str:
    """How bad a breach of ``target`` is, from the lower end of the rate's 95% interval (both in %)."""
    if ci_low <= target:
        return "low"
    if ci_low >= CRITICAL_BREACH_FACTOR * target:
        return "critical"
    return "high" if ci_low >= HIGH_BREACH_FACTOR * target else "medium"


def breach_severity(ci_low: float, target: float) -> int:
    """The 1..10 severity of a Tier-1 breach (its priority band is :func:`breach_level`)."""
    return BREACH_SEVERITY[breach_level(ci_low, target)]


def insights_from_tier_metrics(tier1: dict[str, Any], scope: str = "overall") -> list[Insight]:
    """One insight per Tier-1 target the rates breach; a truncation breach in a stratum is a hot spot.

    Confidence is high only when the Wilson interval's lower bound is above the target: a breach
    seen on a handful of events may be noise, and then the useful task is to collect more data.
    """
    insights = []
    for metric, target in (
        ("underestimation_rate_pct", UNDERESTIMATION_TARGET_PCT),
        ("truncation_rate_pct", TRUNCATION_TARGET_PCT),
    ):
        observed = tier1.get(metric) or 0.0
        if observed <= target:
            continue
        low, high = tier1.get(f"{metric}_ci") or (0.0, 100.0)
        demonstrated = low > target
        name = metric.removesuffix("_rate_pct")
        hotspot = name == "truncation" and scope != "overall"
        insights.append(
            Insight(
                kind="truncation_hotspot" if hotspot else "tier1_breach",
                subject=f"{name}:{scope}",
                title=(f"Truncation hot spot: {observed:.1f}% of calls truncated ({scope}), target {target:g}%"
                       if hotspot else
                       f"Tier-1 {name} rate {observed:.1f}% exceeds the {target:g}% target ({scope})"),
                detail=(
                    f"Observed {observed:.1f}% over {tier1.get('total_samples', 0)} events "
                    f"(95% interval {low:.1f}%-{high:.1f}%); the target is at most {target:g}%."
                    + ("" if demonstrated else " The interval still includes the target: collect more events.")
                ),
                confidence=0.9 if demonstrated else 0.6,
                severity=breach_severity(low, target),
                task_kind="investigate_estimator",
                requires_approval=True,
                effort="M",
                evidence={"metric": metric, "scope": scope, "observed": observed, "threshold": target,
                          "ci": [low, high], "total_samples": tier1.get("total_samples", 0)},
                source="tier_metrics",
            )
        )
    return insights


def insights_from_group_metrics(arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE) -> list[Insight]:
    """Tier-1 breaches and truncation hot spots per (category, complexity) group of the events in
    ``arrays`` (all Builder calls, canonical labels): the group is where a coefficient would change."""
    insights = []
    for (category, complexity), tier1 in group_tier1_arrays(arrays, under_multiplier=under_multiplier).items():
        insights += insights_from_tier_metrics(tier1, scope=f"group={category}/{complexity}")
    return insights


def insights_from_calibration(groups: list[dict[str, Any]], method: str) -> list[Insight]:
    """One insight per actionable recommendation that changes something; applying it waits for a person.

    A multiplier inside Autopack's +-20% tolerance band is "no adjustment needed", not a task.
    """
    insights = []
    for group in groups:
        multiplier = float(group["proposed_multiplier"])
        if not group.get("actionable") or DECREASE_BELOW <= multiplier <= INCREASE_ABOVE:
            continue
        change = abs(multiplier - 1.0) * 100
        subject = f"{group['category']}/{group['complexity']}"
        insights.append(
            Insight(
                kind="calibration_recommendation",
                subject=subject,
                title=f"Review the calibration patch for {subject}: prediction multiplier x{multiplier:.3f}",
                detail=(
                    f"{method} calibration over {group['sample_count']} clean samples proposes x{multiplier:.3f} "
                    f"(confidence {group['confidence']:.2f}). Apply with `autopack-telemetry apply-calibration` "
                    "after reviewing the report."
                ),
                confidence=float(group["confidence"]),
                severity=7 if change >= 20 else 5,
                task_kind="review_coefficients",
                requires_approval=True,
                effort="S",
                evidence={key: group[key] for key in ("category", "complexity", "sample_count", "confidence",
                                                      "proposed_multiplier") if key in group} | {"method": method},
                source="calibration_recommendations",
            )
        )
    return insights


def insights_from_sample_shortfalls(group_counts: dict[tuple[str, str], int], min_samples: int) -> list[Insight]:
    """Groups with too few clean samples for calibration: collecting more needs no human judgement."""
    insights = []
    for (category, complexity), n in sorted(group_counts.items()):
        if n >= min_samples:
            continue
        subject = f"{category}/{complexity}"
        insights.append(
            Insight(
                kind="sample_shortfall",
                subject=subject,
                title=f"Collect {min_samples - n} more clean samples for {subject}",
                detail=f"{subject} has {n} clean samples; calibration needs at least {min_samples} per group.",
                confidence=0.8,
                severity=4,
                task_kind="collect_samples",
                requires_approval=False,
                effort="S",
                evidence={"category": category, "complexity": complexity, "observed": n, "threshold": min_samples},
                source="success_samples",
            )
        )
    return insights
