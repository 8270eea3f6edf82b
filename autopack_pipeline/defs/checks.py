"""Asset checks: every result states what was observed and the threshold it was held to.

Which checks block, and why:
- Data quality on ``raw_events`` blocks. Metrics and calibration computed on no events, on nothing
  but failures, or on impossible token counts would be wrong, so the run stops before them. Blocking
  only acts inside a run; the calibration gate sensor reads these checks' latest results as well.
- Tier-1 targets on ``tier_metrics`` (the rolling window) are findings, severity WARN, never blocking:
  a breach is exactly what calibration exists to fix, so it must neither stop the calibration path
  nor paint the catalog red. Each states the observed rate, its Wilson 95% interval and the target.
- Tier-2 budget waste and drift are advisory (severity WARN).
- A check that could not evaluate (no events in the window, no group with enough events in both
  drift windows) says so and does not pass: a green check must mean something was compared.
"""

from typing import Any

import dagster as dg
import numpy as np

from autopack_pipeline.defs.assets.events import raw_events
from autopack_pipeline.defs.assets.metadata import markdown_table
from autopack_pipeline.defs.assets.metrics import tier_metrics
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain.drift import DriftReport
from autopack_pipeline.domain.fast_metrics import EventArrays, IntColumn, success_flags
from autopack_pipeline.domain.targets import (
    BUDGET_WASTE_P90_TARGET,
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
)
from autopack_pipeline.services import workflows
from autopack_pipeline.storage.snapshot import EventSnapshot, snapshot_events

# Claude's largest output ceiling is 128k tokens; a count beyond a million is a unit or parsing error.
MAX_PLAUSIBLE_TOKENS = 1_000_000
MAX_PLAUSIBLE_DELIVERABLES = 1_000
# Column name -> the EventArrays field that holds it.
TOKEN_COLUMNS = {"predicted_output_tokens": "predicted", "actual_output_tokens": "actual",
                 "selected_budget": "selected_budget", "actual_max_tokens": "actual_max_tokens"}

EVENTS_EXIST = "events_exist"
NOT_ALL_FAILURES = "not_all_failures"
PLAUSIBLE_COUNTS = "token_counts_plausible"
DATA_QUALITY_CHECK_KEYS = [
    dg.AssetCheckKey(raw_events.key, name) for name in (EVENTS_EXIST, NOT_ALL_FAILURES, PLAUSIBLE_COUNTS)
]


@dg.asset_check(asset=raw_events, name=EVENTS_EXIST, blocking=True)
def events_exist(raw_events: EventSnapshot) -> dg.AssetCheckResult:
    """The telemetry database holds at least one token-estimation event (blocks the analysis)."""
    n = raw_events.rows
    return dg.AssetCheckResult(
        passed=n > 0,
        metadata={"observed_events": n, "threshold_min_events": 1},
        description=f"{n} events (need at least 1)" if n else "no events in the telemetry database: collect first",
    )


@dg.asset_check(asset=raw_events, name=NOT_ALL_FAILURES, blocking=True)
def not_all_failures(raw_events: EventSnapshot) -> dg.AssetCheckResult:
    """At least one Builder call succeeded; all failures means a broken backend, not an estimator to tune."""
    n = raw_events.rows
    succeeded = int(success_flags(raw_events.arrays()).sum()) if n else 0
    rate = 100.0 * succeeded / n if n else 0.0
    return dg.AssetCheckResult(
        passed=succeeded > 0,
        metadata={
            "observed_successes": succeeded,
            "observed_events": n,
            "observed_success_rate_pct": rate,
            "threshold_min_successes": 1,
        },
        description=f"{succeeded} of {n} events succeeded ({rate:.1f}%); at least 1 needed",
    )


def implausible_counts(events: EventArrays) -> dict[str, dict[str, int]]:
    """Per numeric column, how many values are negative and how many beyond the plausible ceiling."""
    columns = [(name, getattr(events, field), MAX_PLAUSIBLE_TOKENS) for name, field in TOKEN_COLUMNS.items()]
    columns.append(("deliverable_count", events.deliverable_count, MAX_PLAUSIBLE_DELIVERABLES))
    found: dict[str, dict[str, int]] = {}
    for name, column, ceiling in columns:
        values = _known(column)
        found[name] = {"negative": int((values < 0).sum()), "absurd": int((values > ceiling).sum()), "ceiling": ceiling}
    return found


def _known(column: IntColumn) -> np.ndarray:
    return column.values if column.valid is None else column.values[column.valid]


@dg.asset_check(asset=raw_events, name=PLAUSIBLE_COUNTS, blocking=True)
def token_counts_plausible(raw_events: EventSnapshot) -> dg.AssetCheckResult:
    """No negative token or deliverable counts, none beyond 1,000,000 tokens or 1,000 deliverables."""
    found = implausible_counts(raw_events.arrays())
    negative = sum(v["negative"] for v in found.values())
    absurd = sum(v["absurd"] for v in found.values())
    offenders = [f"{c}: {v['negative']} negative, {v['absurd']} > {v['ceiling']:,}" for c, v in found.items()
                 if v["negative"] or v["absurd"]]
    return dg.AssetCheckResult(
        passed=negative == 0 and absurd == 0,
        metadata={
            "observed_negative_values": negative,
            "observed_absurd_values": absurd,
            "threshold_min_value": 0,
            "threshold_max_tokens": MAX_PLAUSIBLE_TOKENS,
            "threshold_max_deliverables": MAX_PLAUSIBLE_DELIVERABLES,
            "by_column": dg.MetadataValue.md(
                markdown_table(["column", "negative", "above ceiling", "ceiling"],
                               [[c, v["negative"], v["absurd"], v["ceiling"]] for c, v in found.items()])
            ),
        },
        description="; ".join(offenders) if offenders else f"all counts within 0..{MAX_PLAUSIBLE_TOKENS:,} tokens",
    )


def not_evaluated(reason: str, metadata: dict[str, Any], **check: Any) -> dg.AssetCheckResult:
    """A check that had too little data to compare anything: a WARN that does not pass, and says why."""
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**metadata, "evaluated": False},
        description=f"could not evaluate: {reason}",
        **check,
    )


def _tier1_result(document: dict[str, Any], metric: str, target: float) -> dg.AssetCheckResult:
    tier1 = document["all_events"]["tier1"]
    window = document.get("window", "all events")
    n = int(tier1["total_samples"])
    name = metric.removesuffix("_rate_pct")
    if n == 0:
        return not_evaluated(f"no Builder calls in the window ({window}); collect telemetry first",
                             {"threshold_pct": target, "events": 0})
    observed = float(tier1[metric])
    low, high = tier1[f"{metric}_ci"]
    within = observed <= target
    verdict = "within" if within else "breaches"
    return dg.AssetCheckResult(
        passed=within,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "observed_pct": observed,
            "threshold_pct": target,
            "ci95_low_pct": float(low),
            "ci95_high_pct": float(high),
            "events": n,
            "evaluated": True,
            "window": dg.MetadataValue.text(window),
        },
        description=(
            f"{name} {observed:.1f}% over {n} events (95% interval {low:.1f}-{high:.1f}%) {verdict} the "
            f"Tier-1 target of at most {target:g}% ({window})"
            + ("" if within else "; a finding for calibration to act on, so the path to it is not blocked")
        ),
    )


@dg.asset_check(asset=tier_metrics, name="tier1_underestimation_within_target")
def tier1_underestimation_within_target(tier_metrics: dict[str, Any]) -> dg.AssetCheckResult:
    """Tier 1: underestimation rate (actual > predicted x 1.1) at most 5% over the rolling window. A WARN finding."""
    return _tier1_result(tier_metrics, "underestimation_rate_pct", UNDERESTIMATION_TARGET_PCT)


@dg.asset_check(asset=tier_metrics, name="tier1_truncation_within_target")
def tier1_truncation_within_target(tier_metrics: dict[str, Any]) -> dg.AssetCheckResult:
    """Tier 1: truncation rate at most 2% over the rolling window. A WARN finding."""
    return _tier1_result(tier_metrics, "truncation_rate_pct", TRUNCATION_TARGET_PCT)


@dg.asset_check(asset=tier_metrics, name="tier2_budget_waste_p90_below_3x")
def tier2_budget_waste_p90_below_3x(tier_metrics: dict[str, Any]) -> dg.AssetCheckResult:
    """Tier 2 (advisory): the 90th percentile of budget / actual output stays below 3x."""
    observed = tier_metrics["all_events"]["tier2"].get("budget_waste_p90")
    if observed is None:
        return not_evaluated("no events with a budget and an actual output in the window",
                             {"threshold_ratio": BUDGET_WASTE_P90_TARGET})
    observed = float(observed)
    return dg.AssetCheckResult(
        passed=observed < BUDGET_WASTE_P90_TARGET,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"observed_ratio": observed, "threshold_ratio": BUDGET_WASTE_P90_TARGET, "evaluated": True},
        description=f"budget waste P90 {observed:.2f}x; the Tier-2 target is below {BUDGET_WASTE_P90_TARGET:g}x",
    )


DRIFT_PSI = "log_ratio_psi_drift"
DRIFT_KS = "log_ratio_ks_drift"
DRIFT_CUSUM = "underestimation_cusum_drift"
DRIFT_CHECK_KEYS = [dg.AssetCheckKey(raw_events.key, name) for name in (DRIFT_PSI, DRIFT_KS, DRIFT_CUSUM)]


def _drift_table(report: DriftReport) -> str:
    if not report.groups:
        return "_no group with enough events in both windows_"
    return markdown_table(
        ["group", "reference n", "recent n", "PSI", "KS D", "KS p", "CUSUM peak", "under % ref -> recent", "signals"],
        [
            [g.subject, g.n_reference, g.n_recent, g.psi, g.ks_statistic, f"{g.ks_pvalue:.2g}", g.cusum.max_statistic,
             f"{100 * g.reference_under_rate:.1f} -> {100 * g.recent_under_rate:.1f}", ", ".join(g.signals) or "none"]
            for g in report.groups
        ],
    )


def drift_check_results(report: DriftReport) -> list[dg.AssetCheckResult]:
    """The three drift results (WARN) for one report, each with its observed extreme and threshold."""
    t = report.thresholds
    shared = {
        "groups_compared": len(report.groups),
        "groups_skipped": len(report.skipped),
        "events_considered": report.events_considered,
        "recent_window_start": dg.MetadataValue.timestamp(report.recent_start),
        "threshold_min_events_per_window": t.min_events_per_window,
        "groups": dg.MetadataValue.md(_drift_table(report)),
    }

    def result(name: str, signal: str, metadata: dict[str, Any], what: str) -> dg.AssetCheckResult:
        drifted = report.drifted(signal)
        if not report.groups:
            return not_evaluated(
                f"no group had {t.min_events_per_window} events both in the last {t.recent_days:g} days and before "
                f"({len(report.skipped)} groups too small); {report.summary()}",
                {**shared, **metadata, "groups_drifted": 0},
                check_name=name, asset_key=raw_events.key,
            )
        if drifted:
            description = f"{what} flags {', '.join(g.subject for g in drifted)}"
        else:
            description = f"{what}: no drift in {len(report.groups)} groups"
        return dg.AssetCheckResult(
            check_name=name,
            asset_key=raw_events.key,
            passed=not drifted,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**shared, **metadata, "groups_drifted": len(drifted), "evaluated": True},
            description=description,
        )

    groups = report.groups
    return [
        result(
            DRIFT_PSI,
            "psi",
            {"observed_max_psi": max((g.psi for g in groups), default=0.0), "threshold_psi": t.psi_threshold},
            f"PSI of log(actual/predicted) above {t.psi_threshold}",
        ),
        result(
            DRIFT_KS,
            "ks",
            {
                "observed_min_ks_pvalue": min((g.ks_pvalue for g in groups), default=1.0),
                "observed_max_ks_statistic": max((g.ks_statistic for g in groups), default=0.0),
                "threshold_ks_alpha": t.ks_alpha,
                "threshold_ks_min_statistic": t.ks_min_statistic,
            },
            f"KS test (p < {t.ks_alpha}, D >= {t.ks_min_statistic})",
        ),
        result(
            DRIFT_CUSUM,
            "cusum",
            {
                "observed_max_cusum": max((g.cusum.max_statistic for g in groups), default=0.0),
                "threshold_cusum_h": t.cusum_h,
            },
            f"Bernoulli CUSUM on underestimation above h={t.cusum_h}",
        ),
    ]


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(DRIFT_PSI, asset=raw_events,
                          description="PSI of log(actual/predicted): last 7 days against before, per group"),
        dg.AssetCheckSpec(DRIFT_KS, asset=raw_events,
                          description="Two-sample KS test of log(actual/predicted): last 7 days against before"),
        dg.AssetCheckSpec(DRIFT_CUSUM, asset=raw_events,
                          description="Bernoulli CUSUM of the underestimation indicator over the last 7 days"),
    ],
)
def estimator_drift(context: dg.AssetCheckExecutionContext, telemetry_db: TelemetryDatabase):
    """Drift of the estimator's error per (category, complexity), on the telemetry database as it is now.

    Groups need 30 events in each window; the others are counted as skipped. The events come through
    the columnar copy, refreshed first (only new rows are read from the database).
    """
    snapshot, _refresh, fallback = snapshot_events(telemetry_db.engine())
    if fallback:
        context.log.warning(fallback)
    report = workflows.drift_for_run(snapshot, context.run.run_id)
    context.log.info("drift: %s", report.summary())
    yield from drift_check_results(report)


DATA_QUALITY_CHECKS = [events_exist, not_all_failures, token_counts_plausible]
TIER_CHECKS = [tier1_underestimation_within_target, tier1_truncation_within_target, tier2_budget_waste_p90_below_3x]
ALL_CHECKS = [*DATA_QUALITY_CHECKS, *TIER_CHECKS, estimator_drift]
