"""Tier checks on tier_metrics (the rolling window): findings, severity WARN, never blocking.

A Tier-1 breach is exactly what calibration exists to fix, so it must neither stop the calibration
path nor paint the catalog red; each result states the observed rate, its Wilson 95% interval and the
target. Tier-2 budget waste is advisory. A check with no events to judge says so and does not pass.
"""

import dagster as dg

from autopack_pipeline.defs.metrics.assets import tier_metrics
from autopack_pipeline.defs.shared.not_evaluated import not_evaluated
from autopack_pipeline.domain.analysis.rates import budget_waste_within_target
from autopack_pipeline.domain.targets import BUDGET_WASTE_P90_TARGET, TRUNCATION_TARGET_PCT, UNDERESTIMATION_TARGET_PCT
from autopack_pipeline.services.analysis import TierMetrics


def _tier1_result(metrics: TierMetrics, metric: str, target: float) -> dg.AssetCheckResult:
    tier1 = metrics.tier1
    window = metrics.window
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
def tier1_underestimation_within_target(tier_metrics: TierMetrics) -> dg.AssetCheckResult:
    """Tier 1: underestimation rate (actual > predicted x 1.1) at most 5% over the rolling window. A WARN finding."""
    return _tier1_result(tier_metrics, "underestimation_rate_pct", UNDERESTIMATION_TARGET_PCT)


@dg.asset_check(asset=tier_metrics, name="tier1_truncation_within_target")
def tier1_truncation_within_target(tier_metrics: TierMetrics) -> dg.AssetCheckResult:
    """Tier 1: truncation rate at most 2% over the rolling window. A WARN finding."""
    return _tier1_result(tier_metrics, "truncation_rate_pct", TRUNCATION_TARGET_PCT)


@dg.asset_check(asset=tier_metrics, name="tier2_budget_waste_p90_below_3x")
def tier2_budget_waste_p90_below_3x(tier_metrics: TierMetrics) -> dg.AssetCheckResult:
    """Tier 2 (advisory): the 90th percentile of budget / actual output stays below 3x."""
    within = budget_waste_within_target(tier_metrics.tier2)
    if within is None:
        return not_evaluated("no events with a budget and an actual output in the window",
                             {"threshold_ratio": BUDGET_WASTE_P90_TARGET})
    observed = float(tier_metrics.tier2["budget_waste_p90"])
    return dg.AssetCheckResult(
        passed=within,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"observed_ratio": observed, "threshold_ratio": BUDGET_WASTE_P90_TARGET, "evaluated": True},
        description=f"budget waste P90 {observed:.2f}x; the Tier-2 target is below {BUDGET_WASTE_P90_TARGET:g}x",
    )


TIER_CHECKS = [tier1_underestimation_within_target, tier1_truncation_within_target, tier2_budget_waste_p90_below_3x]
