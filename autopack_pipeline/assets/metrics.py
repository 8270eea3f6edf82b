"""Tier metrics: does the estimator meet its targets?"""


import dagster as dg

from autopack_pipeline import workflows
from autopack_pipeline.assets.metadata import metrics_next_step, rounded, spend_metadata, strata_table, tier1_table
from autopack_pipeline.domain.group_economics import spend_of_events
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.snapshot import EventSnapshot


class MetricsConfig(dg.Config):
    under_multiplier: float = 1.1


@dg.asset(group_name="metrics", kinds={"numpy"})
def tier_metrics(
    config: MetricsConfig, raw_events: EventSnapshot, success_samples: workflows.SampleSummary
) -> dg.MaterializeResult:
    """Tier 1 (underestimation, truncation, success, with Wilson 95% intervals), Tier 2 (waste) and
    SMAPE diagnostics over all Builder calls, stratified by category, complexity and deliverables;
    plus the same over successful calls only.
    """
    events = raw_events.arrays()
    document = workflows.tier_metrics_document(events, success_samples.count, under_multiplier=config.under_multiplier)
    overall = document["all_events"]
    tier1, tier2, strata = overall["tier1"], overall["tier2"], overall.get("strata", {})
    spend = spend_of_events(events, workflows.load_prices_for(load_settings()))
    return dg.MaterializeResult(
        value=document,
        metadata={
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
            # Only numbers go in: the UI plots numeric metadata across materialisations.
            **{key: rounded(tier2[key], 2) for key in ("waste_ratio_p90", "budget_waste_p90")
               if tier2.get(key) is not None},
        },
    )
