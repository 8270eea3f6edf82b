"""Autopack's phase-outcome analyser: top cost sinks, failure modes and retry causes, as insights.

Input is ``phase_outcome_events`` rows (mappings with that table's column names, e.g. dicts);
nothing here touches the database. Over a time window (7 days by default) it ranks, as
Autopack's ROAD-B ``TelemetryAnalyzer`` does:

- cost sinks: tokens summed per (phase_id, phase_type), biggest first;
- failure modes: non-SUCCESS outcomes counted per (phase_id, phase_type, outcome, stop_reason);
- retry causes: rows per (run_id, phase_id, phase_type, stop_reason) where there is more than one;
- phase-type statistics per ``phase_type:model_used`` (success rate, mean tokens, count);

top 10 of each. Retries are counted within a run: our collection runs reuse phase ids (the seed and
template phases), so Autopack's grouping by phase id alone would call every phase collected in three
runs "retried three times".

A ranked row becomes an :class:`Insight` when it crosses the analyser's threshold for its type (a
cost sink of at least 50,000 tokens, a failure mode in a phase type failing at least 30% of the
time, a retry cause of at least 3 runs): the top-10 lists always have members, and without the
thresholds every busy week would raise a "critical" cost-sink pattern. Set a threshold to 0 to
keep every ranked row, as Autopack's converter did. Severities are the converter's (a cost sink is
high above 50,000 tokens, a failure mode or retry cause above 5 occurrences); confidence is 1.0,
since these are counts, not estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from autopack_pipeline.domain.insights import HIGH_SEVERITY, Insight

DEFAULT_WINDOW_DAYS = 7
DEFAULT_TOP_N = 10
OUTCOME_SOURCE = "phase_outcome_events"
HIGH, MEDIUM = HIGH_SEVERITY, 4  # Autopack's "high"/"medium" on our 1..10 severity scale (priority bands)
_COLUMNS = ("run_id", "phase_id", "phase_type", "phase_outcome", "stop_reason", "tokens_used", "model_used",
            "timestamp")


@dataclass(frozen=True)
class OutcomeThresholds:
    """Autopack's analyser thresholds (a row below its threshold is not an insight); ``high_count`` is its
    converter's severity rule for failures and retries."""

    cost_sink_tokens: int = 50_000
    failure_rate: float = 0.3
    retry_count: int = 3
    high_count: int = 5


@dataclass(frozen=True)
class RankedIssue:
    rank: int
    issue_type: str  # cost_sink | failure_mode | retry_cause
    phase_id: str
    phase_type: str | None
    metric_value: float  # tokens for a cost sink, a count otherwise
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutcomeAnalysis:
    window_days: float
    window_start: datetime
    window_end: datetime
    rows_in_window: int
    top_cost_sinks: list[RankedIssue]
    top_failure_modes: list[RankedIssue]
    top_retry_causes: list[RankedIssue]
    phase_type_stats: dict[str, dict[str, float]]
    failure_rate_by_phase_type: dict[str | None, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _missing(value: Any) -> bool:
    # A NaN (a frame's missing value, when a caller hands over a frame's records) counts as NULL.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _naive_utc(value: Any) -> datetime | None:
    """A timestamp as timezone-less UTC (the database's form), aware ones converted; None when unreadable."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _tokens(value: Any) -> float | None:
    if isinstance(value, bool) or _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class _Outcome:
    """One outcome row, cleaned: a missing phase type or stop reason is a group of its own, as NULL is
    in Autopack's GROUP BY."""

    run_id: Any
    phase_id: Any
    phase_type: Any
    phase_outcome: Any
    stop_reason: Any
    tokens_used: float | None
    model_used: Any
    timestamp: datetime | None

    @property
    def succeeded(self) -> bool:
        return str(self.phase_outcome).upper() == "SUCCESS"


def _outcomes(rows: Iterable[Mapping[str, Any]]) -> list[_Outcome]:
    cleaned = []
    for row in rows:
        values = {column: (None if _missing(row.get(column)) else row.get(column)) for column in _COLUMNS}
        values["tokens_used"] = _tokens(row.get("tokens_used"))
        values["timestamp"] = _naive_utc(row.get("timestamp"))
        cleaned.append(_Outcome(**values))
    return cleaned


def _grouped(rows: list[_Outcome], key: Callable[[_Outcome], tuple]) -> dict[tuple, list[_Outcome]]:
    """Rows by key, groups in order of first appearance."""
    groups: dict[tuple, list[_Outcome]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _top(groups: list[tuple[float, Any, Any]], top_n: int) -> list[tuple[float, Any, Any]]:
    """(metric, phase id, payload) ranked by metric, biggest first; ties by phase id, so the ranking does
    not depend on row order (then by first appearance)."""
    ranked = sorted(groups, key=lambda item: (-item[0], item[1] is None, "" if item[1] is None else item[1]))
    return ranked[:top_n]


def analyse_outcomes(
    rows: Iterable[Mapping[str, Any]],
    *,
    now: datetime | None = None,
    window_days: float = DEFAULT_WINDOW_DAYS,
    top_n: int = DEFAULT_TOP_N,
) -> OutcomeAnalysis:
    """Rank the outcome rows (mappings by column name) whose timestamp falls in ``[now - window_days, now]``."""
    end = (now or datetime.now(timezone.utc))
    end = end.astimezone(timezone.utc).replace(tzinfo=None) if end.tzinfo else end
    start = end - timedelta(days=window_days)
    window = [row for row in _outcomes(rows) if row.timestamp is not None and start <= row.timestamp <= end]

    sinks = _grouped([row for row in window if row.tokens_used is not None], lambda r: (r.phase_id, r.phase_type))
    cost_sinks = []
    for rank, (total, _, members) in enumerate(
            _top([(sum(r.tokens_used for r in m), k[0], m) for k, m in sinks.items()], top_n), start=1):
        cost_sinks.append(RankedIssue(rank, "cost_sink", members[0].phase_id, members[0].phase_type, float(total),
                                      {"avg_tokens": float(total / len(members)), "count": len(members)}))

    modes = _grouped([row for row in window if not row.succeeded],
                     lambda r: (r.phase_id, r.phase_type, r.phase_outcome, r.stop_reason))
    failure_modes = [
        RankedIssue(rank, "failure_mode", m[0].phase_id, m[0].phase_type, float(n),
                    {"outcome": m[0].phase_outcome, "stop_reason": m[0].stop_reason})
        for rank, (n, _, m) in enumerate(_top([(len(m), k[0], m) for k, m in modes.items()], top_n), start=1)
    ]

    runs = _grouped(window, lambda r: (r.run_id, r.phase_id, r.phase_type, r.stop_reason))
    retried = [(len(m), k[1], m) for k, m in runs.items() if len(m) > 1]
    retry_causes = [
        RankedIssue(rank, "retry_cause", m[0].phase_id, m[0].phase_type, float(n),
                    {"run_id": m[0].run_id, "stop_reason": m[0].stop_reason,
                     "success_count": sum(r.succeeded for r in m), "retry_count": n})
        for rank, (n, _, m) in enumerate(_top(retried, top_n), start=1)
    ]

    stats: dict[str, dict[str, float]] = {}
    typed = _grouped([row for row in window if row.phase_type is not None], lambda r: (r.phase_type, r.model_used))
    for (phase_type, model), members in typed.items():
        tokens = [r.tokens_used for r in members if r.tokens_used is not None]
        stats[f"{phase_type}:{model}"] = {
            "success_rate": sum(r.succeeded for r in members) / len(members),
            "avg_tokens": sum(tokens) / len(tokens) if tokens else 0.0,
            "sample_count": len(members),
        }
    failure_rates = {
        phase_type: 1 - sum(r.succeeded for r in members) / len(members)
        for (phase_type,), members in _grouped(window, lambda r: (r.phase_type,)).items()
    }
    return OutcomeAnalysis(window_days, start, end, len(window), cost_sinks, failure_modes, retry_causes,
                           dict(sorted(stats.items())), failure_rates)


def insights_from_outcomes(analysis: OutcomeAnalysis, thresholds: OutcomeThresholds = OutcomeThresholds()) -> list[Insight]:
    """One insight per ranked issue that crosses its threshold, with Autopack's severity rules."""
    window = {"window_days": analysis.window_days, "window_start": analysis.window_start.isoformat(),
              "window_end": analysis.window_end.isoformat()}
    insights: list[Insight] = []
    for issue in analysis.top_cost_sinks:
        total, count = int(issue.metric_value), issue.details["count"]
        if total < thresholds.cost_sink_tokens:
            continue
        insights.append(Insight(
            kind="cost_sink",
            subject=f"{issue.phase_type}/{issue.phase_id}",
            title=f"Phase {issue.phase_id} ({issue.phase_type}) used {total:,} tokens in {count} outcome(s)",
            detail=f"Cost sink #{issue.rank}: {total:,} tokens, {issue.details['avg_tokens']:,.0f} per outcome.",
            confidence=1.0,
            severity=HIGH if total > thresholds.cost_sink_tokens else MEDIUM,
            task_kind="reduce_token_cost",
            requires_approval=True,
            evidence={"phase_id": issue.phase_id, "phase_type": issue.phase_type, "rank": issue.rank,
                      "total_tokens": total, "avg_tokens": round(issue.details["avg_tokens"], 1), "count": count,
                      "threshold_tokens": thresholds.cost_sink_tokens} | window,
            source=OUTCOME_SOURCE,
        ))
    for issue in analysis.top_failure_modes:
        count = int(issue.metric_value)
        rate = analysis.failure_rate_by_phase_type.get(issue.phase_type, 0.0)
        if rate < thresholds.failure_rate:
            continue
        insights.append(Insight(
            kind="failure_mode",
            subject=f"{issue.phase_type}/{issue.phase_id}/{issue.details['outcome']}/{issue.details['stop_reason']}",
            title=(f"Phase {issue.phase_id} ({issue.phase_type}) ended {issue.details['outcome']} "
                   f"({issue.details['stop_reason']}) {count} time(s)"),
            detail=f"Failure mode #{issue.rank}: {count} occurrence(s).",
            confidence=1.0,
            severity=HIGH if count > thresholds.high_count else MEDIUM,
            task_kind="fix_failure_mode",
            requires_approval=True,
            evidence={"phase_id": issue.phase_id, "phase_type": issue.phase_type, "rank": issue.rank,
                      "outcome": issue.details["outcome"], "stop_reason": issue.details["stop_reason"],
                      "count": count, "phase_type_failure_rate": round(rate, 3),
                      "failure_rate_threshold": thresholds.failure_rate} | window,
            source=OUTCOME_SOURCE,
        ))
    for issue in analysis.top_retry_causes:
        count = int(issue.metric_value)
        if count < thresholds.retry_count:
            continue
        insights.append(Insight(
            kind="retry_cause",
            subject=f"{issue.phase_type}/{issue.details['run_id']}/{issue.phase_id}/{issue.details['stop_reason']}",
            title=(f"Phase {issue.phase_id} ({issue.phase_type}) ran {count} times in run {issue.details['run_id']} "
                   f"(stop reason {issue.details['stop_reason']})"),
            detail=f"Retry cause #{issue.rank}: {count} runs, {issue.details['success_count']} successful.",
            confidence=1.0,
            severity=HIGH if count > thresholds.high_count else MEDIUM,
            task_kind="reduce_retries",
            requires_approval=True,
            evidence={"phase_id": issue.phase_id, "phase_type": issue.phase_type, "run_id": issue.details["run_id"],
                      "rank": issue.rank, "stop_reason": issue.details["stop_reason"], "count": count,
                      "success_count": issue.details["success_count"], "retry_threshold": thresholds.retry_count}
                     | window,
            source=OUTCOME_SOURCE,
        ))
    return insights
