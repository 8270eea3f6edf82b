"""Autopack's phase-outcome analyser: top cost sinks, failure modes and retry causes, as insights.

Input is ``phase_outcome_events`` rows (a DataFrame or a list of dicts with that table's column
names); nothing here touches the database. Over a time window (7 days by default) it ranks, as
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

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

from autopack_pipeline.domain.tasks import HIGH_SEVERITY, Insight

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


def _frame(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for column in _COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    # Columns are timezone-less UTC in the database; aware inputs are converted, so both compare.
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce").dt.tz_localize(None)
    frame["tokens_used"] = pd.to_numeric(frame["tokens_used"], errors="coerce")
    # A missing phase type or stop reason is a group of its own, as NULL is in Autopack's GROUP BY.
    for column in ("phase_type", "stop_reason", "model_used"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _keyed(frame: pd.DataFrame, keys: list[str]) -> pd.core.groupby.DataFrameGroupBy:
    return frame.groupby(keys, dropna=False, sort=False)


def _top(table: pd.DataFrame, metric: str, top_n: int) -> pd.DataFrame:
    # Ties are broken by phase id so the ranking does not depend on row order.
    return table.sort_values([metric, "phase_id"], ascending=[False, True], kind="mergesort").head(top_n)


def _none(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def analyse_outcomes(
    rows: pd.DataFrame | list[dict[str, Any]],
    *,
    now: datetime | None = None,
    window_days: float = DEFAULT_WINDOW_DAYS,
    top_n: int = DEFAULT_TOP_N,
) -> OutcomeAnalysis:
    """Rank the outcome rows whose timestamp falls in ``[now - window_days, now]``."""
    end = (now or datetime.now(timezone.utc))
    end = end.astimezone(timezone.utc).replace(tzinfo=None) if end.tzinfo else end
    start = end - timedelta(days=window_days)
    frame = _frame(rows)
    frame = frame[(frame["timestamp"] >= start) & (frame["timestamp"] <= end)]

    costed = frame[frame["tokens_used"].notna()]
    sinks = _keyed(costed, ["phase_id", "phase_type"])["tokens_used"].agg(["sum", "mean", "count"]).reset_index()
    # Renamed because "sum", "mean" and "count" are also Series methods, which attribute access would return.
    sinks = _top(sinks.rename(columns={"sum": "total", "mean": "average", "count": "rows"}), "total", top_n)
    cost_sinks = [
        RankedIssue(rank, "cost_sink", row.phase_id, _none(row.phase_type), float(row.total),
                    {"avg_tokens": float(row.average), "count": int(row.rows)})
        for rank, (_, row) in enumerate(sinks.iterrows(), start=1)
    ]

    failed = frame[frame["phase_outcome"].astype(str).str.upper() != "SUCCESS"]
    modes = _keyed(failed, ["phase_id", "phase_type", "phase_outcome", "stop_reason"]).size().reset_index(name="n")
    failure_modes = [
        RankedIssue(rank, "failure_mode", row.phase_id, _none(row.phase_type), float(row.n),
                    {"outcome": row.phase_outcome, "stop_reason": _none(row.stop_reason)})
        for rank, (_, row) in enumerate(_top(modes, "n", top_n).iterrows(), start=1)
    ]

    succeeded = frame["phase_outcome"].astype(str).str.upper() == "SUCCESS"
    retries = (
        frame.assign(ok=succeeded.astype(int))
        .pipe(_keyed, ["run_id", "phase_id", "phase_type", "stop_reason"])
        .agg(n=("ok", "size"), successes=("ok", "sum"))
        .reset_index()
    )
    retries = retries[retries["n"] > 1]
    retry_causes = [
        RankedIssue(rank, "retry_cause", row.phase_id, _none(row.phase_type), float(row.n),
                    {"run_id": row.run_id, "stop_reason": _none(row.stop_reason),
                     "success_count": int(row.successes), "retry_count": int(row.n)})
        for rank, (_, row) in enumerate(_top(retries, "n", top_n).iterrows(), start=1)
    ]

    stats: dict[str, dict[str, float]] = {}
    typed = frame[frame["phase_type"].notna()].assign(ok=succeeded.astype(int))
    for (phase_type, model), group in _keyed(typed, ["phase_type", "model_used"]):
        tokens = group["tokens_used"].dropna()
        stats[f"{phase_type}:{_none(model)}"] = {
            "success_rate": float(group["ok"].mean()),
            "avg_tokens": float(tokens.mean()) if len(tokens) else 0.0,
            "sample_count": len(group),
        }
    failure_rates = {
        _none(phase_type): float(1 - group["ok"].mean())
        for (phase_type,), group in _keyed(frame.assign(ok=succeeded.astype(int)), ["phase_type"])
    }
    return OutcomeAnalysis(window_days, start, end, len(frame), cost_sinks, failure_modes, retry_causes,
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
