"""Insights, grouped into patterns, turned into deduplicated, prioritised improvement tasks.

The shape is Autopack's task generator (spec §7.3): insights are filtered by confidence (never
below the 0.5 floor), grouped into patterns, each pattern gets a confidence and a severity (a base
plus a boost for its type), severity gives the priority, and effort times a type multiplier gives
the estimated cost. Where we depart from it, on purpose:

- A task's id comes from a fingerprint of what it is about, never from a random number, so the same
  finding seen by two generation runs is one task, not two (Autopack's uuid task ids defeated its own
  dedup across runs).
- Autopack's insights are single phase-outcome rows, so a pattern is something that recurs: at least
  two insights of a type, with confidence and severity growing with the count. Our metric, calibration,
  sample and drift insights are already aggregates over many events and carry a statistical confidence
  of their own, so for them one insight is a pattern, judged on its own confidence and severity.
- Patterns are filtered by confidence before ``max_tasks`` is applied (Autopack cut first, so a
  low-confidence pattern could take the place of a good one).
- A (category, complexity) group gets one task, not one per symptom: its Tier-1 breaches and
  truncation hot spot ride along with its calibration recommendation when it has one (the change a
  person would make), else they make one investigation. Otherwise a few breaching groups fill every
  slot with symptoms and crowd out the tasks that act on them. The investigation's fingerprint is
  the group's, whichever symptoms it holds, so a group never has two open investigations.
- A Tier-1 breach's severity comes from how far beyond its target the rate surely is (the lower end
  of its Wilson interval, in multiples of the target; :func:`breach_severity`), not from a fixed
  "breach" level, so a group at 60% underestimation outranks one at 7%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

# The insights are made in .insights; their names are re-exported here, where callers import them.
from autopack_pipeline.domain.insights import (
    HIGH_SEVERITY,
    Insight,
    breach_level,
    breach_severity,
    insights_from_calibration,
    insights_from_group_metrics,
    insights_from_sample_shortfalls,
    insights_from_tier_metrics,
)
from autopack_pipeline.domain.task_evidence import evidence_lines

__all__ = [
    "HIGH_SEVERITY",
    "MIN_CONFIDENCE_FLOOR",
    "GeneratedTask",
    "Insight",
    "Pattern",
    "PatternRule",
    "breach_level",
    "breach_severity",
    "detect_patterns",
    "effort_for_occurrences",
    "estimated_cost",
    "fingerprint",
    "fold_group_findings",
    "generate_tasks",
    "insights_from_calibration",
    "insights_from_group_metrics",
    "insights_from_sample_shortfalls",
    "insights_from_tier_metrics",
    "priority_for",
    "task_id_for",
]

MIN_CONFIDENCE_FLOOR = 0.5
EFFORT_COST = {"S": 10_000, "M": 30_000, "L": 75_000, "XL": 150_000}
EFFORT_ORDER = ("S", "M", "L", "XL")
EXAMPLES_PER_PATTERN = 3
EXAMPLE_CHARS = 100
# Autopack adds one more severity point to a cost-sink pattern whose biggest sink passed this.
COST_SINK_EXTRA_SEVERITY_TOKENS = 100_000


@dataclass(frozen=True)
class PatternRule:
    """How one insight type becomes a pattern.

    ``recurrence``: confidence and severity come from how often the insight recurs (Autopack's
    ``min(1, n/5)`` and ``n + 2·#high``); otherwise from the strongest insight itself.
    """

    recurrence: bool
    confidence_boost: float = 0.0
    severity_boost: int = 0
    cost_multiplier: float = 1.0
    min_occurrences: int = 1


PATTERN_RULES: dict[str, PatternRule] = {
    # Autopack's three outcome types, with its boosts, multipliers and the two-occurrence minimum.
    "cost_sink": PatternRule(True, 0.15, 2, 1.5, 2),
    "failure_mode": PatternRule(True, 0.2, 3, 1.3, 2),
    "retry_cause": PatternRule(True, 0.1, 1, 1.2, 2),
    # Ours. Investigations of the estimator cost like a failure mode; a drift finding like a retry
    # cause (look, compare, decide); reviewing a multiplier or collecting samples is plain work.
    "tier1_breach": PatternRule(False, cost_multiplier=1.3),
    "truncation_hotspot": PatternRule(False, cost_multiplier=1.3),
    "drift": PatternRule(False, cost_multiplier=1.2),
    "calibration_recommendation": PatternRule(False),
    "sample_shortfall": PatternRule(False),
}
DEFAULT_RULE = PatternRule(False)

SUGGESTED_FIX = {
    "cost_sink": "Find why these phases use so many tokens (context size, deliverable count, retries) and trim it.",
    "failure_mode": "Read the failing phases' stop reasons and fix the cause shared by the most occurrences first.",
    "retry_cause": "Find why these phases need several attempts (budget too small, timeouts) and remove the cause.",
}


@dataclass(frozen=True)
class Pattern:
    kind: str
    subject: str
    insights: tuple[Insight, ...]
    confidence: float
    severity: int
    effort: str

    @property
    def occurrences(self) -> int:
        return len(self.insights)

    @property
    def examples(self) -> tuple[Insight, ...]:
        return self.insights[:EXAMPLES_PER_PATTERN]


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


def task_id_for(fp: str) -> str:
    return f"TASK-{fp[:12].upper()}"


def priority_for(severity: int) -> str:
    if severity >= 8:
        return "critical"
    if severity >= 6:
        return "high"
    if severity >= 4:
        return "medium"
    return "low"

def effort_for_occurrences(occurrences: int) -> str:
    if occurrences > 10:
        return "XL"
    if occurrences > 5:
        return "L"
    if occurrences > 2:
        return "M"
    return "S"


def estimated_cost(effort: str, kind: str, occurrences: int) -> int:
    """Tokens a task is expected to cost: effort base x type multiplier x (1 + 0.05 per occurrence, up to 10)."""
    rule = PATTERN_RULES.get(kind, DEFAULT_RULE)
    return round(EFFORT_COST[effort] * rule.cost_multiplier * (1 + 0.05 * min(occurrences, 10)))


_SYMPTOMS = ("tier1_breach", "truncation_hotspot")


def _group_of(insight: Insight) -> str | None:
    """The "category/complexity" a per-group symptom or a recommendation is about; None for the rest."""
    if insight.kind == "calibration_recommendation":
        return insight.subject
    scope = str(insight.evidence.get("scope", ""))
    return scope.removeprefix("group=") if insight.kind in _SYMPTOMS and scope.startswith("group=") else None


def _symptom_figures(insight: Insight) -> dict[str, Any]:
    return {key: insight.evidence.get(key) for key in ("metric", "observed", "threshold", "ci", "total_samples")}


def _symptom_text(insight: Insight) -> str:
    name = str(insight.evidence.get("metric", "")).removesuffix("_rate_pct")
    return f"{name} {float(insight.evidence.get('observed') or 0):.1f}% (target {insight.evidence.get('threshold'):g}%)"


def _with_symptoms(fix: Insight, symptoms: list[Insight]) -> Insight:
    if not symptoms:
        return fix
    return replace(
        fix,
        severity=max(fix.severity, *(s.severity for s in symptoms)),
        detail=f"{fix.detail} Tier-1 figures of this group: {'; '.join(_symptom_text(s) for s in symptoms)}.",
        evidence=fix.evidence | {"symptoms": [_symptom_figures(s) for s in symptoms]},
    )


def _one_investigation(group: str, symptoms: list[Insight]) -> Insight:
    # The subject is the group's whichever symptoms it holds today, so the task keeps its id when a
    # second symptom appears or one goes away, and is refreshed instead of duplicated.
    lone = symptoms[0] if len(symptoms) == 1 else None
    return Insight(
        kind="tier1_breach",
        subject=f"tier1:group={group}",
        title=lone.title if lone else
        f"Tier-1 targets breached in {group}: {', '.join(_symptom_text(s) for s in symptoms)}",
        detail=" ".join(s.detail for s in symptoms),
        confidence=max(s.confidence for s in symptoms),
        severity=max(s.severity for s in symptoms),
        task_kind="investigate_estimator",
        requires_approval=True,
        effort=max((s.effort for s in symptoms), key=EFFORT_ORDER.index),
        evidence={"scope": f"group={group}", "symptoms": [_symptom_figures(s) for s in symptoms]},
        source="tier_metrics",
    )


def fold_group_findings(insights: list[Insight]) -> list[Insight]:
    """One finding per (category, complexity) group: its calibration recommendation carrying the
    group's Tier-1 breaches and truncation hot spot, or, without one, those symptoms as one
    investigation. Overall, drift, sample and phase-outcome insights pass through unchanged."""
    fixes: dict[str, Insight] = {}
    symptoms: dict[str, list[Insight]] = {}
    rest = []
    for insight in insights:
        group = _group_of(insight)
        if group is None:
            rest.append(insight)
        elif insight.kind == "calibration_recommendation":
            fixes[group] = insight
        else:
            symptoms.setdefault(group, []).append(insight)
    folded = [_with_symptoms(fix, symptoms.pop(group, [])) for group, fix in fixes.items()]
    folded += [_one_investigation(group, found) for group, found in symptoms.items()]
    return rest + folded


def _phase_types(members: tuple[Insight, ...] | list[Insight]) -> str:
    """What a recurrence pattern is about: its phase types, which outlive the phase ids of one run
    (so the fingerprint stays put while the same phases keep failing, and changes when a new type joins)."""
    return ", ".join(sorted({str(i.evidence.get("phase_type") or "unknown") for i in members}))


def _pattern(kind: str, members: list[Insight]) -> Pattern | None:
    rule = PATTERN_RULES.get(kind, DEFAULT_RULE)
    n = len(members)
    if n < rule.min_occurrences:
        return None
    if rule.recurrence:
        confidence = min(1.0, n / 5) + rule.confidence_boost
        severity = min(10, n + 2 * sum(i.high for i in members)) + rule.severity_boost
        if kind == "cost_sink" and max(float(i.evidence.get("total_tokens") or 0) for i in members) > \
                COST_SINK_EXTRA_SEVERITY_TOKENS:
            severity += 1
        effort = effort_for_occurrences(n)
        subject = f"phase types: {_phase_types(members)}"
    else:
        confidence = max(i.confidence for i in members) + rule.confidence_boost
        severity = max(i.severity for i in members) + rule.severity_boost
        effort = max((i.effort for i in members), key=EFFORT_ORDER.index)
        subject = members[0].subject
    return Pattern(kind=kind, subject=subject, insights=tuple(members), confidence=round(min(1.0, confidence), 3),
                   severity=int(min(10, severity)), effort=effort)


def detect_patterns(insights: list[Insight]) -> list[Pattern]:
    """Group insights into patterns, most severe first, then overall before per group, then most
    frequent, then most confident.

    Recurrence types group by type (Autopack); the others by (type, subject), one finding each.
    """
    groups: dict[tuple[str, str], list[Insight]] = {}
    # Stable sort: within equal severity and confidence the caller's order (the analyser's rank) stays.
    ordered = sorted(insights, key=lambda i: (-i.severity, -i.confidence))
    for insight in ordered:
        rule = PATTERN_RULES.get(insight.kind, DEFAULT_RULE)
        key = (insight.kind, "" if rule.recurrence else insight.subject.strip().lower())
        groups.setdefault(key, []).append(insight)
    patterns = [p for (kind, _), members in groups.items() if (p := _pattern(kind, members)) is not None]
    # At equal severity a finding over all events comes before one about a single group.
    return sorted(patterns, key=lambda p: (-p.severity, p.insights[0].evidence.get("scope") != "overall",
                                           -p.occurrences, -p.confidence, p.kind, p.subject))


def _source_of(insight: Insight, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """Provenance: the input the figures came from, the generating run, and that input's materialisation."""
    common = {k: v for k, v in (source or {}).items() if k != "inputs"}
    upstream = ((source or {}).get("inputs") or {}).get(insight.source)
    return {"input": insight.source or None, **common} | ({"input_materialization": upstream} if upstream else {})


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


def _task(pattern: Pattern, source: Mapping[str, Any] | None) -> GeneratedTask:
    fp = fingerprint(pattern.kind, pattern.subject)
    lead = pattern.insights[0]
    rule = PATTERN_RULES.get(pattern.kind, DEFAULT_RULE)
    figures = {"severity": pattern.severity, "occurrences": pattern.occurrences}
    if rule.recurrence:
        title = f"Fix recurring {pattern.kind} issues ({_phase_types(pattern.insights)} phases)"
        description = (
            f"## Problem\n{pattern.occurrences} {pattern.kind} findings in the analysis window "
            f"({sum(i.high for i in pattern.insights)} of high severity).\n\n## Examples\n"
            + "\n".join(f"- {_clip(i.title)}" for i in pattern.examples)
            + f"\n\n## Suggested Fix\n{SUGGESTED_FIX.get(pattern.kind, 'Investigate the examples.')}"
        )
        evidence = figures | {"examples": [dict(i.evidence) for i in pattern.examples]}
    else:
        title = lead.title
        description = f"## Problem\n{lead.detail}\n\n## Evidence\n" + "\n".join(
            f"- {line}" for line in evidence_lines(lead.evidence))
        evidence = dict(lead.evidence) | figures
    evidence["source"] = _source_of(lead, source)
    return GeneratedTask(
        task_id=task_id_for(fp),
        fingerprint=fp,
        title=title[:255],
        description=description,
        priority=priority_for(pattern.severity),
        kind=lead.task_kind,
        confidence=pattern.confidence,
        estimated_effort=pattern.effort,
        estimated_cost=estimated_cost(pattern.effort, pattern.kind, pattern.occurrences),
        requires_approval=any(i.requires_approval for i in pattern.insights),
        source_insights=[f"{i.kind}:{i.subject}" for i in pattern.examples],
        evidence=evidence,
    )


def generate_tasks(
    insights: list[Insight],
    *,
    max_tasks: int | None,
    min_confidence: float,
    source: Mapping[str, Any] | None = None,
) -> list[GeneratedTask]:
    """Tasks from ``insights``: filter by confidence (never below the 0.5 floor), fold each group's
    findings into one (:func:`fold_group_findings`), group into patterns, keep the confident ones,
    dedup by fingerprint, at most ``max_tasks`` (``None``: every finding), most severe first.

    ``source`` is the generation's provenance, stored in each task's evidence, e.g.
    ``{"asset": "generated_tasks", "dagster_run_id": ..., "inputs": {"tier_metrics": {"dagster_run_id": ...}}}``;
    ``inputs`` maps an insight's source to the materialisation its figures came from.
    """
    if max_tasks is not None and max_tasks <= 0:
        return []
    threshold = max(min_confidence, MIN_CONFIDENCE_FLOOR)
    # Fold after filtering: a symptom too uncertain to be a task must not raise its group's severity.
    confident = fold_group_findings([i for i in insights if i.confidence >= threshold])
    tasks: dict[str, GeneratedTask] = {}
    for pattern in detect_patterns(confident):
        if pattern.confidence < threshold:
            continue
        task = _task(pattern, source)
        if task.fingerprint in tasks:
            continue
        tasks[task.fingerprint] = task
        if max_tasks is not None and len(tasks) >= max_tasks:
            break
    return list(tasks.values())
