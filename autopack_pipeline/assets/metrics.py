"""Tier metrics: does the estimator meet its targets?"""


import dagster as dg

from autopack_pipeline import workflows
from autopack_pipeline.assets.metadata import group_tier1_metadata, markdown_table, strata_table, tier1_rows
from autopack_pipeline.domain.fast_metrics import group_tier1_arrays
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
    arrays = raw_events.arrays()
    document = workflows.tier_metrics_document(arrays, success_samples.count, under_multiplier=config.under_multiplier)
    overall = document["all_events"]
    tier1, tier2, strata = overall["tier1"], overall["tier2"], overall.get("strata", {})
    return dg.MaterializeResult(
        value=document,
        metadata={
            "underestimation_rate_pct": float(tier1["underestimation_rate_pct"]),
            "truncation_rate_pct": float(tier1["truncation_rate_pct"]),
            "success_rate_pct": float(tier1["success_rate_pct"]),
            "total_samples": int(tier1["total_samples"]),
            "clean_samples": int(document["clean_samples"]),
            "needs_tuning": bool(overall["needs_tuning"]),
            "tier1": dg.MetadataValue.md(markdown_table(["metric", "value", "95% interval", "target"], tier1_rows(tier1))),
            "tier1_breached": bool(overall["needs_tuning"]),  # Autopack's decision: a Tier-1 target breached
            **{f"tier1_by_{dimension}": dg.MetadataValue.md(strata_table(dimension, strata.get(dimension, {})))
               for dimension in ("category", "complexity", "deliverables")},
            # Each group's Tier-1 counts: the gate sensor opens for a group whose breach is certain.
            "group_tier1": group_tier1_metadata(group_tier1_arrays(arrays, under_multiplier=config.under_multiplier)),
            # Only numbers go in: the UI plots numeric metadata across materialisations.
            **{key: float(tier2[key]) for key in ("waste_ratio_p90", "budget_waste_p90") if tier2.get(key) is not None},
        },
    )

