"""Tier metrics: does the estimator meet its targets?"""


import dagster as dg

from autopack_pipeline.defs.events.io_manager import ANALYSIS_REACH
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.automation import ON_NEW_EVENTS_OR_NEW_DAY
from autopack_pipeline.defs.shared.metadata import (
    database_metadata,
    group_tier1_metadata,
    metrics_next_step,
    rounded,
    spend_metadata,
    strata_table,
    tier1_table,
)
from autopack_pipeline.defs.shared.series import refuse_another_database
from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.group_economics import spend_of_events
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.services.analysis import SampleSummary, events_for_analysis
from autopack_pipeline.services.pipeline import metrics_stage
from autopack_pipeline.services.seed_files import load_prices_for
from autopack_pipeline.settings import load_settings


class MetricsConfig(dg.Config):
    # The tolerance on "actual > predicted x m": Tier 1 here, and (handed on in the value) the gate and
    # the coverage bound of calibration_recommendations.
    under_multiplier: float = UNDER_TOLERANCE


@dg.asset(group_name="metrics", kinds={"numpy"}, automation_condition=ON_NEW_EVENTS_OR_NEW_DAY,
          ins={"raw_events": dg.AssetIn(metadata=ANALYSIS_REACH)})
def tier_metrics(
    context: dg.AssetExecutionContext,
    config: MetricsConfig,
    telemetry_db: TelemetryDatabase,
    raw_events: EventArrays,
    success_samples: SampleSummary,
) -> dg.MaterializeResult:
    """Tier 1 (underestimation, truncation, success, with Wilson 95% intervals), Tier 2 (waste) and
    SMAPE diagnostics over the Builder calls of the rolling window the calibration gate reads (the
    last 28 UTC days; AUTOPACK_METRICS_WINDOW_DAYS, 0 = all events), stratified by category,
    complexity and deliverables; plus the same over successful calls only, and Tier 1 over the last
    7 days. Per-day figures are in daily_tier_metrics. Its plotted series holds one telemetry database:
    another database's figures fail with the way out, instead of mixing two in one plot.
    """
    identity = telemetry_db.identity()
    refuse_another_database(context.instance, context.asset_key, identity)
    settings = load_settings()
    windowed = events_for_analysis(settings, raw_events)
    metrics = metrics_stage(windowed, success_samples, raw_events, under_multiplier=config.under_multiplier)
    tier1, tier2, recent = metrics.tier1, metrics.tier2, metrics.last_7_days["tier1"]
    spend = spend_of_events(windowed.events, load_prices_for(settings))  # the Tier-1 figures' window
    return dg.MaterializeResult(
        value=metrics,
        metadata={
            "window": dg.MetadataValue.text(metrics.window),
            **metrics_next_step(metrics.needs_tuning, tier1),
            # Rounded to what they mean: a tenth of a percent; the UI plots these across materialisations.
            "underestimation_rate_pct": rounded(tier1["underestimation_rate_pct"]),
            "truncation_rate_pct": rounded(tier1["truncation_rate_pct"]),
            "success_rate_pct": rounded(tier1["success_rate_pct"]),
            "total_samples": int(tier1["total_samples"]),
            "clean_samples": metrics.clean_samples,
            "needs_tuning": metrics.needs_tuning,
            "tier1": tier1_table(tier1),
            "tier1_breached": metrics.needs_tuning,  # Autopack's decision: a Tier-1 target breached
            **spend_metadata(spend),
            **{f"tier1_by_{dimension}": dg.MetadataValue.md(strata_table(dimension, metrics.strata.get(dimension, {})))
               for dimension in ("category", "complexity", "deliverables")},
            # Each group's Tier-1 counts: the gate sensor opens for a group whose breach is certain.
            "group_tier1": group_tier1_metadata(metrics.group_tier1),  # counted beside the document (metrics_stage)
            # Only numbers go in: the UI plots numeric metadata across materialisations.
            **{key: rounded(tier2[key], 2) for key in ("waste_ratio_p90", "budget_waste_p90")
               if tier2.get(key) is not None},
            "events_last_7_days": int(recent["total_samples"]),
            **({f"{key}_last_7_days": rounded(recent[key]) for key in ("underestimation_rate_pct",
                                                                       "truncation_rate_pct")}
               if recent["total_samples"] else {}),
            **database_metadata(identity),
        },
    )
