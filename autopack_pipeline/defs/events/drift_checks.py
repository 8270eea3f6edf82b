"""Drift checks on raw_events (PSI, KS, CUSUM of the estimator's error), advisory (severity WARN).

They read the telemetry database as it is now (through the columnar copy, refreshed first), not the
last raw_events materialisation, so the daily drift_check_job needs no analysis run before it; the
events come through raw_events' IO manager, so in a run that just materialised raw_events (nothing new
since) the arrays it read are used, not read again, and their drift report is the one generated_tasks
uses (computed once per run). A check with no group to compare says so and does
not pass: a green check must mean something was compared.
"""

from typing import Any

import dagster as dg

from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.events.io_manager import EventSnapshotIOManager
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import markdown_table
from autopack_pipeline.defs.shared.not_evaluated import not_evaluated
from autopack_pipeline.domain.drift import DriftReport
from autopack_pipeline.storage.snapshot import snapshot_events

DRIFT_PSI = "log_ratio_psi_drift"
DRIFT_KS = "log_ratio_ks_drift"
DRIFT_CUSUM = "underestimation_cusum_drift"
DRIFT_CHECK_KEYS = [dg.AssetCheckKey(raw_events.key, name) for name in (DRIFT_PSI, DRIFT_KS, DRIFT_CUSUM)]


def _drift_table(report: DriftReport) -> str:
    if not report.groups:
        return "_no group with enough events in both windows_"
    return markdown_table(
        ["group", "reference n", "recent n", "PSI", "KS D", "KS p", "CUSUM peak / h", "under % ref -> recent", "signals"],
        [
            [g.subject, g.n_reference, g.n_recent, g.psi, g.ks_statistic, f"{g.ks_pvalue:.2g}",
             f"{g.cusum.max_statistic:.2f} / {g.cusum.h:.2f}",
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
        # The reference starts when the coefficients in force were applied (before the recent window), else
        # with the first event.
        **({"reference_window_start": dg.MetadataValue.timestamp(report.reference_start)}
           if report.reference_start is not None else {}),
        **({"coefficients_unread": report.coefficients_unread} if report.coefficients_unread is not None else {}),
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
            description = f"{what} flags {', '.join(g.subject for g in drifted)}" + report.calibration_note()
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
    # Each group's h grows with its recent window: the group shown is the one nearest its own h.
    nearest = max(groups, key=lambda g: g.cusum.max_statistic / g.cusum.h, default=None)
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
                "observed_max_cusum": nearest.cusum.max_statistic if nearest else 0.0,
                "threshold_cusum_h": nearest.cusum.h if nearest else t.cusum_h,
                "observed_group": nearest.subject if nearest else "",
                "threshold_cusum_false_alarm": t.cusum_false_alarm,
                "threshold_cusum_least_h": t.cusum_h,
            },
            f"Bernoulli CUSUM on underestimation (odds x{t.cusum_odds_ratio:g}) above each group's h (at least "
            f"{t.cusum_h:g}; at most {t.cusum_false_alarm:.0%} false alarms over its recent window)",
        ),
    ]


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(DRIFT_PSI, asset=raw_events,
                          description="PSI of log(actual/predicted): last 7 days against before, per group"),
        dg.AssetCheckSpec(DRIFT_KS, asset=raw_events,
                          description="Two-sample KS test of log(actual/predicted): last 7 days against before"),
        dg.AssetCheckSpec(DRIFT_CUSUM, asset=raw_events,
                          description="Bernoulli CUSUM of the underestimation indicator over the last 7 days, "
                                      "one event per phase"),
    ],
)
def estimator_drift(context: dg.AssetCheckExecutionContext, telemetry_db: TelemetryDatabase,
                    event_snapshot_io_manager: dg.ResourceParam[EventSnapshotIOManager]):
    """Drift of the estimator's error per (category, complexity), on the telemetry database as it is now.

    Each phase counts once, by its last attempt. Groups need 30 events in each window; the others are
    counted as skipped. The events come through the columnar copy, refreshed first (only new rows are
    read from the database).
    """
    snapshot, _refresh, fallback = snapshot_events(telemetry_db.engine())
    if fallback:
        context.log.warning(fallback)
    # Through raw_events' IO manager: in a run that read these very events already (raw_events
    # materialised in the same process, nothing new since), they are not read again.
    report = event_snapshot_io_manager.drift_of(event_snapshot_io_manager.arrays_of(snapshot))
    context.log.info("drift: %s", report.summary())
    if report.coefficients_unread is not None:
        context.log.warning("drift: the coefficients in force could not be read, so no calibration is known to "
                            "explain a shift: %s", report.coefficients_unread)
    yield from drift_check_results(report)
