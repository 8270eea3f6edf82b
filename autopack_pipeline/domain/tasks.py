"""Insights from metrics and calibration, turned into deduplicated, prioritised improvement tasks.

A task's id comes from a fingerprint of what it is about (its kind and subject), never from a random
number, so the same finding seen by two generation runs is one task, not two (Autopack's task ids
were random uuids and defeated its own dedup).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from autopack_pipeline.domain.calibration import DECREASE_BELOW, INCREASE_ABOVE
from autopack_pipeline.domain.metrics import TRUNCATION_TARGET_PCT, UNDERESTIMATION_TARGET_PCT

MIN_CONFIDENCE_FLOOR = 0.5
EFFORT_COST = {"S": 10_000, "M": 30_000, "L": 75_000, "XL": 150_000}


@dataclass(frozen=True)
class Insight:
    kind: str  # tier1_breach | calibration_recommendation | sample_shortfall
    subject: str  # what it is about, e.g. "underestimation:overall" or "implementation/medium"
    title: str
    detail: str
    confidence: float
    severity: int  # 1..10
    task_kind: str  # review_coefficients | collect_samples | investigate_estimator
    requires_approval: bool
    effort: str = "M"
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedTask:
    task_id: str
    fingerprint: str
    title: str
    description: str
    priority: str
    kind: str
    confidence: float
    estimated_effort: str
    estimated_cost: int
    requires_approval: bool
    source_insights: list[str]
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(kind: str, subject: str) -> str:
    return hashlib.sha256(f"{kind.strip().lower()}|{subject.strip().lower()}".encode()).hexdigest()


def priority_for(severity: int) -> str:
    if severity >= 8:
        return "critical"
    if severity >= 6:
        return "high"
    if severity >= 4:
        return "medium"
    return "low"


def insights_from_tier_metrics(tier1: dict[str, Any], scope: str = "overall") -> list[Insight]:
    """One insight per Tier-1 target the rates breach.

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
        insights.append(
            Insight(
                kind="tier1_breach",
                subject=f"{name}:{scope}",
                title=f"Tier-1 {name} rate {observed:.1f}% exceeds the {target:g}% target ({scope})",
                detail=(
                    f"Observed {observed:.1f}% over {tier1.get('total_samples', 0)} events "
                    f"(95% interval {low:.1f}%-{high:.1f}%); the target is at most {target:g}%."
                    + ("" if demonstrated else " The interval still includes the target: collect more events.")
                ),
                confidence=0.9 if demonstrated else 0.6,
                severity=8 if demonstrated else 6,
                task_kind="investigate_estimator",
                requires_approval=True,
                effort="M",
                evidence={"metric": metric, "observed": observed, "threshold": target, "ci": [low, high],
                          "total_samples": tier1.get("total_samples", 0)},
            )
        )
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
                title=f"Review PHASE_OVERHEAD for {subject}: proposed multiplier {multiplier:.3f}",
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
            )
        )
    return insights


def generate_tasks(insights: list[Insight], *, max_tasks: int, min_confidence: float) -> list[GeneratedTask]:
    """Filter by confidence (never below the 0.5 floor), dedup by fingerprint, keep the most severe."""
    threshold = max(min_confidence, MIN_CONFIDENCE_FLOOR)
    kept: dict[str, GeneratedTask] = {}
    ranked = sorted(insights, key=lambda i: (-i.severity, -i.confidence, i.kind, i.subject))
    for insight in ranked:
        if insight.confidence < threshold:
            continue
        fp = fingerprint(insight.kind, insight.subject)
        if fp in kept:
            continue
        kept[fp] = GeneratedTask(
            task_id=f"TASK-{fp[:12].upper()}",
            fingerprint=fp,
            title=insight.title[:255],
            description=f"## Problem\n{insight.detail}\n\n## Evidence\n"
            + "\n".join(f"- {k}: {v}" for k, v in insight.evidence.items()),
            priority=priority_for(insight.severity),
            kind=insight.task_kind,
            confidence=round(insight.confidence, 3),
            estimated_effort=insight.effort,
            estimated_cost=EFFORT_COST[insight.effort],
            requires_approval=insight.requires_approval,
            source_insights=[f"{insight.kind}:{insight.subject}"],
            evidence=dict(insight.evidence),
        )
        if len(kept) >= max_tasks:
            break
    return list(kept.values())
