"""``metrics``: the Tier-1/Tier-2 figures, diagnostics and spend of the stored events, and the JSON
contract of DESIGN §10 they are published under."""

from __future__ import annotations

from typing import Any

from autopack_pipeline.domain.analysis import EventArrays, compute_metrics_arrays, success_flags
from autopack_pipeline.domain.group_economics import spend_of_events
from autopack_pipeline.services.seed_files import load_prices_for
from autopack_pipeline.settings import Settings

# The `metrics --json` contract of DESIGN §10, key for key. The domain returns more (counts behind
# each rate, truncated lower bounds); the text report shows those, the JSON stays to the contract.
TIER1_KEYS = (
    "underestimation_rate_pct", "underestimation_rate_pct_ci", "truncation_rate_pct", "truncation_rate_pct_ci",
    "success_rate_pct", "success_rate_pct_ci", "under_multiplier", "total_samples",
)
TIER2_KEYS = ("waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90")
DIAGNOSTICS_KEYS = ("smape_mean", "smape_median", "non_truncated_count", "truncated_count")


def _pick(block: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: block[key] for key in keys}


def metrics_json(document: dict[str, Any]) -> dict[str, Any]:
    """``compute_metrics``'s document trimmed to exactly the keys DESIGN §10 promises."""
    out = {
        "tier1": _pick(document["tier1"], TIER1_KEYS),
        "tier2": _pick(document["tier2"], TIER2_KEYS),
        "diagnostics": _pick(document["diagnostics"], DIAGNOSTICS_KEYS),
        "needs_tuning": bool(document["needs_tuning"]),
    }
    if "strata" in document:
        out["strata"] = {
            dimension: {value: _pick(block, TIER1_KEYS) for value, block in blocks.items()}
            for dimension, blocks in document["strata"].items()
        }
    return out


def measure(events: EventArrays, *, success_only: bool, under_multiplier: float, stratify: bool) -> dict[str, Any]:
    """Tier 1 (with intervals), Tier 2 and the diagnostics of ``events``: every Builder call, or the
    successful ones only; by category, complexity and deliverables too when ``stratify``."""
    return compute_metrics_arrays(events, rows=success_flags(events) if success_only else None,
                                  under_multiplier=under_multiplier, stratify=stratify)


def spend_line(events: EventArrays, settings: Settings) -> str:
    """Spend per model over every stored attempt (not only the analysis set: every attempt was billed)."""
    return spend_of_events(events, load_prices_for(settings)).line()
