"""Calibration recommendations: what to change in the estimator's coefficients, with the evidence."""

from pathlib import Path
from typing import Any, Literal

import dagster as dg

from autopack_pipeline.defs.events.io_manager import ANALYSIS_REACH
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import (
    markdown_table,
    next_step_metadata,
    png_markdown,
    rounded,
    table,
)
from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.services.analysis import TierMetrics, events_for_analysis
from autopack_pipeline.services.calibration_review import UI_JOB, apply_instructions, no_patch_reason
from autopack_pipeline.services.pipeline import calibration_stage
from autopack_pipeline.settings import load_settings


class CalibrationConfig(dg.Config):
    method: Literal["coverage", "autopack-median"] = "coverage"
    min_samples: int = 5
    confidence_threshold: float = 0.7
    dedup: bool = True
    force: bool = False
    output_dir: str | None = None


@dg.asset(group_name="calibration", kinds={"numpy"}, ins={"raw_events": dg.AssetIn(metadata=ANALYSIS_REACH)})
def calibration_recommendations(
    context: dg.AssetExecutionContext,
    config: CalibrationConfig,
    telemetry_db: TelemetryDatabase,
    raw_events: EventArrays,
    tier_metrics: TierMetrics,
) -> dg.MaterializeResult:
    """Over the rolling window of tier_metrics (the last 28 UTC days by default):
    per (category, complexity) multipliers by the coverage method (default: the 95% upper bound of
    actual/predicted, truncated events censored) and by Autopack's median method side by side, written
    as token_estimator_calibration_<UTC>.md, .json and .png, only when the calibration gate is open:
    at least 20 clean samples, one group with at least 5, and a Tier-1 target breached. Predictions are
    first re-expressed under the coefficient file in force, as `autopack-telemetry calibrate` does; the
    tolerance is tier_metrics' under_multiplier.
    The metadata shows the patch (per group: multiplier, budget margin, floor, status and why), the
    frontier and cost per group, and the patch JSON's path. Nothing here edits the coefficient file:
    a person applies a reviewed patch with apply_calibration_job (or `apply-calibration`).
    """
    settings = load_settings()
    # The same rolling window as success_samples and tier_metrics, so the gate here and the sensor's agree.
    windowed = events_for_analysis(settings, raw_events)
    # The CLI's `calibrate` runs this same stage: predictions re-expressed under the coefficients in
    # force (the stored prediction inputs and the kept coefficient versions), so nothing compounds; the
    # gate reads tier_metrics' Tier 1, and the coverage bound its under_multiplier.
    outcome = calibration_stage(
        telemetry_db.engine(),
        settings,
        windowed,
        tier_metrics,
        min_samples=config.min_samples,
        confidence_threshold=config.confidence_threshold,
        dedup=config.dedup,
        force=config.force,
        output_dir=Path(config.output_dir).expanduser().resolve() if config.output_dir else None,
        dagster_run_id=context.run.run_id,
        database=telemetry_db.identity().url,
        method=config.method,
    )
    context.log.info(outcome.gate.summary())
    metadata: dict[str, Any] = {
        "gate_open": outcome.gate.open,
        "gate": dg.MetadataValue.text(outcome.gate.summary()),
    }
    if outcome.result is not None:
        groups = outcome.result.groups
        metadata |= {
            "method": outcome.result.method,
            "groups_calibrated": len(groups),
            "actionable_groups": len(outcome.result.actionable_groups),
            "report_markdown": dg.MetadataValue.path(str(outcome.markdown_path)),
            "report_json": dg.MetadataValue.path(str(outcome.json_path)),
            **({"report_plot": dg.MetadataValue.path(str(outcome.plot_path))} if outcome.plot_path else {}),
            **plot_metadata(outcome.plot_path),
            "recommendations": recommendations_table(groups, config.confidence_threshold),
        }
        if outcome.economics:
            metadata["frontier_and_cost"] = dg.MetadataValue.md(frontier_and_cost_table(outcome.economics))
        if outcome.reprediction:
            metadata["predictions_in_force"] = dg.MetadataValue.text(
                ", ".join(f"{n} {way}" for way, n in outcome.reprediction.items() if n) or "none")
        metadata |= patch_metadata(outcome.calibration_section, str(outcome.json_path))
    reason = no_patch_reason(outcome.as_dict())
    if reason:
        metadata["no_patch"] = dg.MetadataValue.text(reason)
    # The next step first, so it is the first line a person reads on the asset page.
    metadata = next_step_metadata(calibration_next_step(reason, str(outcome.json_path))) | metadata
    return dg.MaterializeResult(value=outcome, metadata=metadata)


# A plot bigger than this is not inlined (the event log stores every materialisation's metadata);
# the report's own plot at 1000 px wide is a few tens of kB.
MAX_INLINE_PLOT_BYTES = 1_500_000


def plot_metadata(plot_path: Path | None) -> dict[str, Any]:
    """The calibration plot inside the asset page, as an image in Markdown."""
    if plot_path is None or not Path(plot_path).exists():
        return {}
    png = Path(plot_path).read_bytes()
    if len(png) > MAX_INLINE_PLOT_BYTES:
        return {"plot": dg.MetadataValue.md(f"_the plot is {len(png):,} bytes, too big to show here; see report_plot_")}
    return {"plot": png_markdown(png, "ratio distributions and proposed multipliers per group")}


def calibration_next_step(no_patch: str | None, patch_path: str) -> str:
    """What a person does with this result: nothing to apply and why, or review and apply the patch."""
    if no_patch:
        return f"Nothing to apply: {no_patch.removeprefix('no patch: ')}"
    return (f"Review `plot`, `recommendations` and `patch`, then launch **{UI_JOB}** with `patch_path: {patch_path}` "
            "(first with `confirm: false`: it shows the diff and the backtest and writes nothing).")


_RECOMMENDATION_COLUMNS = [
    ("category", "string", ""),
    ("complexity", "string", ""),
    ("samples", "int", "observations: clean samples plus truncated calls"),
    ("median_ratio", "float", "actual / predicted output tokens"),
    ("confidence", "float", "weight of the group's own bound"),
    ("multiplier", "float", "empty when none is proposed"),
    ("status", "string", "proposed, advisory (below the confidence threshold) or unidentifiable"),
    ("why", "string", ""),
]


def recommendation_status(group: Any, confidence_threshold: float) -> str:
    """``proposed`` (actionable), ``unidentifiable`` (no bound: no multiplier at all) or ``advisory``."""
    if (group.method_details or {}).get("status") == "unidentifiable":
        return "unidentifiable"
    if group.actionable:
        return "proposed"
    return f"advisory: confidence {group.confidence:.2f} < {confidence_threshold:g}"


def recommendations_table(groups: list[Any], confidence_threshold: float) -> dg.MetadataValue:
    """One row per group; a group the report calls unidentifiable shows no multiplier."""
    records = []
    for g in groups:
        status = recommendation_status(g, confidence_threshold)
        records.append({
            "category": g.category, "complexity": g.complexity, "samples": int(g.sample_count),
            "median_ratio": rounded(g.median_ratio, 2), "confidence": rounded(g.confidence, 2),
            "multiplier": None if status == "unidentifiable" else rounded(g.proposed_multiplier, 3),
            "status": status, "why": g.action,
        })
    return table(_RECOMMENDATION_COLUMNS, records)


def patch_metadata(section: dict[str, Any] | None, patch_path: str) -> dict[str, Any]:
    """The patch a person reviews: per group what apply_calibration_job would write, and how to apply it."""
    groups = (section or {}).get("groups") or []
    rows = [[g["category"], g["complexity"], g["status"],
             f"x{g['current_prediction_multiplier']:.3f} -> x{g['prediction_multiplier']:.3f}",
             "rules" if g["budget_margin"] is None else f"x{g['budget_margin']:.3f}",
             f"{g['previous_budget_floor']} -> {g['budget_floor']}", g["note"]] for g in groups]
    return {
        "patch_json": dg.MetadataValue.path(patch_path),
        "patch_groups": len(groups),
        "patch": dg.MetadataValue.md(
            markdown_table(["category", "complexity", "status", "multiplier", "margin", "floor", "why"], rows)
            if rows else "_no group has enough observations for settings of its own_"),
        "apply": dg.MetadataValue.md("\n\n".join(f"`{line.strip()}`" for line in apply_instructions(patch_path))),
    }


def frontier_and_cost_table(economics: list[dict[str, Any]]) -> str:
    """Per group: the cheapest Tier-1 (m, b), Tier 2, certification, and the frontier proposal's cost change."""
    rows = []
    for entry in economics:
        f, cost = entry["frontier"], entry["cost"]
        proposal = next((p for p in cost["proposals"] if p["label"] == "frontier"), None)
        rows.append([
            entry["category"], entry["complexity"], f["observations"], f["censored"],
            f["multiplier"] if f["reachable"] else "out of reach", f["margin"] if f["reachable"] else "-",
            f["budget_waste_p90"] if f["budget_waste_p90"] is not None else "-",
            "-" if f["tier2_holds"] is None else ("holds" if f["tier2_holds"] else "Tier 1 wins"),
            "yes" if f["certified"] else f"~{f['observations_needed']} needed",
            round(cost["now"]["dollars_per_1000_calls"], 2),
            round(proposal["proposed"]["dollars_per_1000_calls"], 2) if proposal else "-",
            round(cost["now"]["reserved_output_tokens_per_1000_calls"]),
            round(proposal["proposed"]["reserved_output_tokens_per_1000_calls"]) if proposal else "-",
        ])
    return markdown_table(["category", "complexity", "N", "truncated", "m", "b", "budget waste P90", "Tier 2",
                           "certified", "$/1k calls now", "$/1k then", "reserved/1k now", "reserved/1k then"], rows)
