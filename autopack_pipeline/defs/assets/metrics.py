"""Tier metrics: does the estimator meet its targets?"""


import dagster as dg

from autopack_pipeline.defs.assets.metadata import (
    database_metadata,
    group_tier1_metadata,
    metrics_next_step,
    rounded,
    spend_metadata,
    strata_table,
    tier1_table,
)
from autopack_pipeline.defs.automation import ON_NEW_EVENTS_OR_NEW_DAY
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.domain.fast_metrics import group_tier1_arrays
from autopack_pipeline.domain.group_economics import spend_of_events
from autopack_pipeline.domain.windows import SHORT_WINDOW_DAYS, events_in_window, latest_day, trailing_days
from autopack_pipeline.services import workflows
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.snapshot import EventSnapshot


class MetricsConfig(dg.Config):
    under_multiplier: float = 1.1


@dg.asset(group_name="metrics", kinds={"numpy"}, automation_condition=ON_NEW_EVENTS_OR_NEW_DAY)
def tier_metrics(
    config: MetricsConfig,
    telemetry_db: TelemetryDatabase,
    raw_events: EventSnapshot,
    success_samples: workflows.SampleSummary,
) -> dg.MaterializeResult:
    """Tier 1 (underestimation, truncation, success, with Wilson 95% intervals), Tier 2 (waste) and
    SMAPE diagnostics over the Builder calls of the rolling window the calibration gate reads (the
    last 28 UTC days; AUTOPACK_METRICS_WINDOW_DAYS, 0 = all events), stratified by category,
    complexity and deliverables; plus the same over successful calls only, and Tier 1 over the last
    7 days. Per-day figures are in daily_tier_metrics.
    """
    events = raw_events.arrays()
    window = workflows.analysis_window(load_settings(), events)
    windowed = events_in_window(events, window)
    document = workflows.tier_metrics_document(windowed, success_samples.count,
                                               under_multiplier=config.under_multiplier)
    document["window"] = workflows.window_label(window)
    short = trailing_days(SHORT_WINDOW_DAYS, latest_day(events))
    recent = workflows.tier_metrics_document(events_in_window(events, short), 0,
                                             under_multiplier=config.under_multiplier)["all_events"]["tier1"]
    document["last_7_days"] = {"window": workflows.window_label(short), "tier1": recent}
    overall = document["all_events"]
    tier1, tier2, strata = overall["tier1"], overall["tier2"], overall.get("strata", {})
    spend = spend_of_events(windowed, workflows.load_prices_for(load_settings()))  # the Tier-1 figures' window
    return dg.MaterializeResult(
        value=document,
        metadata={
            "window": dg.MetadataValue.text(document["window"]),
            **metrics_next_step(overall["needs_tuning"], tier1),
            # Rounded to what they mean: a tenth of a percent; the UI plots these across materialisations.
            "underestimation_rate_pct": rounded(tier1["underestimation_rate_pct"]),
            "truncation_rate_pct": rounded(tier1["truncation_rate_pct"]),
            "success_rate_pct": rounded(tier1["success_rate_pct"]),
            "total_samples": int(tier1["total_samples"]),
            "clean_samples": int(document["clean_samples"]),
            "needs_tuning": bool(overall["needs_tuning"]),
            "tier1": tier1_table(tier1),
            "tier1_breached": bool(overall["needs_tuning"]),  # Autopack's decision: a Tier-1 target breached
            **spend_metadata(spend),
            **{f"tier1_by_{dimension}": dg.MetadataValue.md(strata_table(dimension, strata.get(dimension, {})))
               for dimension in ("category", "complexity", "deliverables")},
            # Each group's Tier-1 counts: the gate sensor opens for a group whose breach is certain.
            "group_tier1": group_tier1_metadata(group_tier1_arrays(windowed, under_multiplier=config.under_multiplier)),
            # Only numbers go in: the UI plots numeric metadata across materialisations.
            **{key: rounded(tier2[key], 2) for key in ("waste_ratio_p90", "budget_waste_p90")
               if tier2.get(key) is not None},
            "events_last_7_days": int(recent["total_samples"]),
            **({f"{key}_last_7_days": rounded(recent[key]) for key in ("underestimation_rate_pct",
                                                                       "truncation_rate_pct")}
               if recent["total_samples"] else {}),
            **database_metadata(telemetry_db.identity()),
        },
    )
