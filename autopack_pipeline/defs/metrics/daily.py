"""Tier metrics per day of the events' timestamps: the series the UI plots, one point per day."""

from datetime import date
from typing import Any

import dagster as dg

from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.automation import ON_NEW_EVENTS_PER_DAY
from autopack_pipeline.defs.shared.metadata import database_metadata
from autopack_pipeline.defs.shared.partitions import event_days
from autopack_pipeline.defs.shared.series import refuse_another_database
from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.targets import TRUNCATION_TARGET_PCT, UNDER_TOLERANCE, UNDERESTIMATION_TARGET_PCT
from autopack_pipeline.domain.windows import day_window, events_in_window
from autopack_pipeline.services.analysis import TierMetrics, summarise_samples


class DailyMetricsConfig(dg.Config):
    under_multiplier: float = UNDER_TOLERANCE


def day_figures(metrics: TierMetrics) -> dict[str, Any]:
    """Tier 1 with its Wilson 95% bounds and targets, and Tier 2, as numbers: each one a plot in the UI."""
    tier1, tier2 = metrics.tier1, metrics.tier2
    figures: dict[str, Any] = {"events": int(tier1["total_samples"]), "clean_samples": metrics.clean_samples}
    for metric, target in (("underestimation_rate_pct", UNDERESTIMATION_TARGET_PCT),
                           ("truncation_rate_pct", TRUNCATION_TARGET_PCT), ("success_rate_pct", None)):
        if not tier1["total_samples"]:
            continue  # no point for an empty day: a 0% rate would be a figure nobody measured
        low, high = tier1[f"{metric}_ci"]
        figures |= {metric: float(tier1[metric]), f"{metric}_ci95_low": float(low), f"{metric}_ci95_high": float(high)}
        if target is not None:
            figures[f"{metric}_target"] = float(target)
    for key in ("waste_ratio_p90", "budget_waste_p90"):
        if tier2.get(key) is not None:
            figures[key] = float(tier2[key])
    return figures


@dg.asset(
    group_name="metrics",
    kinds={"numpy"},
    partitions_def=event_days,
    automation_condition=ON_NEW_EVENTS_PER_DAY,
    ins={"raw_events": dg.AssetIn(raw_events.key)},
)
def daily_tier_metrics(
    context: dg.AssetExecutionContext,
    config: DailyMetricsConfig,
    telemetry_db: TelemetryDatabase,
    raw_events: EventArrays,
) -> dg.MaterializeResult:
    """Tier 1 (underestimation, truncation, success, each with its Wilson 95% interval and target)
    and Tier 2 for the Builder calls of one UTC day, by the same functions as tier_metrics. A day
    without events materialises as an empty day (0 events), not an error. Recomputed for today and
    yesterday when new events arrive; older days by a backfill. The series holds one telemetry
    database: a day of another database fails with the way out, instead of mixing two in one plot.
    """
    day = date.fromisoformat(context.partition_key)
    identity = telemetry_db.identity()
    refuse_another_database(context.instance, context.asset_key, identity, " and backfill it")
    events = events_in_window(raw_events, day_window(day))
    metrics = TierMetrics.of(events, summarise_samples(events).count, under_multiplier=config.under_multiplier,
                             window=day.isoformat())
    if not len(events):
        context.log.info(f"no events on {day}: an empty day")
    return dg.MaterializeResult(
        value=metrics,
        metadata={
            "day": dg.MetadataValue.text(day.isoformat()),
            "dagster/row_count": len(events),
            **day_figures(metrics),
            "tier1_breached": metrics.needs_tuning if len(events) else False,
            **database_metadata(identity),
        },
    )
