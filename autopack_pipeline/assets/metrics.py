"""Tier metrics: does the estimator meet its targets?"""

from typing import Any

import dagster as dg

from autopack_pipeline import workflows
from autopack_pipeline.assets.metadata import markdown_table, strata_table, tier1_rows
from autopack_pipeline.domain.metrics import TRUNCATION_TARGET_PCT, UNDERESTIMATION_TARGET_PCT
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
    document = workflows.tier_metrics_document(raw_events.arrays(), success_samples.count,
                                               under_multiplier=config.under_multiplier)
    overall = document["all_events"]
    tier1, tier2 = overall["tier1"], overall["tier2"]
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
            "tier1_breached": bool(
                tier1["underestimation_rate_pct"] > UNDERESTIMATION_TARGET_PCT
                or tier1["truncation_rate_pct"] > TRUNCATION_TARGET_PCT
            ),
            "tier1_by_category": dg.MetadataValue.md(_strata_table(overall.get("strata", {}).get("category", {}))),
            "tier1_by_complexity": dg.MetadataValue.md(
                strata_table("complexity", overall.get("strata", {}).get("complexity", {}))
            ),
            "tier1_by_deliverables": dg.MetadataValue.md(
                strata_table("deliverables", overall.get("strata", {}).get("deliverables", {}))
            ),
            # Only numbers go in: the UI plots numeric metadata across materialisations.
            **{key: float(tier2[key]) for key in ("waste_ratio_p90", "budget_waste_p90") if tier2.get(key) is not None},
        },
    )


def _strata_table(strata: dict[str, dict[str, Any]]) -> str:
    rows = [
        [name, block["total_samples"], block["underestimation_rate_pct"], block["truncation_rate_pct"], block["success_rate_pct"]]
        for name, block in strata.items()
    ]
    return markdown_table(["category", "events", "underestimation %", "truncation %", "success %"], rows)
