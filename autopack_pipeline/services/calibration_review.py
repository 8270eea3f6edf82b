"""What a person reviews before a calibration is applied: the changes, the diff, the backtest, and
how to apply a patch. The CLI prints these; the Dagster layer shows them as metadata.
"""

from __future__ import annotations

import difflib
from typing import Any

from autopack_pipeline.domain.calibration_window import window_line  # noqa: F401 (the CLI prints it from here)
from autopack_pipeline.domain.group_economics import economics_line
from autopack_pipeline.services.calibration_apply import CalibrationApplication

UI_JOB = "apply_calibration_job"


def change_lines(application: CalibrationApplication) -> list[str]:
    """What the patch changes per group, old -> new, as lines a person reads."""
    patch, old, new = application.patch, application.old, application.new
    if application.through_calibration_section:
        lines = ["Changes (calibration section, by the estimate's category): prediction multiplier, budget margin, "
                 "budget floor"]
        for (category, complexity), setting in patch.settings.items():
            before = old.group_setting(category, complexity)
            was_m = 1.0 if before is None else before.prediction_multiplier
            was_floor = old.budget_floor(category, complexity) if before is None or before.budget_floor is None \
                else before.budget_floor
            was_margin = "rules" if before is None or before.budget_margin is None else f"x{before.budget_margin:.3f}"
            margin = "rules" if setting.budget_margin is None else f"x{setting.budget_margin:.3f}"
            lines.append(f"  {category}/{complexity}: multiplier x{was_m:.3f} -> x{setting.prediction_multiplier:.3f}, "
                         f"margin {was_margin} -> {margin}, floor {was_floor} -> {setting.budget_floor}")
        return lines
    overhead_changes = application.overhead_changes
    lines = ["Changes (PHASE_OVERHEAD, canonical category): proposed prediction multiplier, overhead multiplier"]
    for change in patch.changes:
        group = (change.category, change.complexity)
        before, after = old.overhead(*group), new.overhead(*group)
        k = overhead_changes.get(group)
        applied = "not applicable: a doc model prices this group, PHASE_OVERHEAD does not" if k is None else (
            f"overhead x{k:.3f}  {before} -> {after}")
        lines.append(f"  {change.category}/{change.complexity}: x{change.multiplier:.3f}  {applied}"
                     + (f"  (n={change.sample_count}, confidence {change.confidence})" if change.sample_count else ""))
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_backtest(result: dict[str, Any]) -> str:
    """The backtest, old versus new, over all events and per group, as text."""
    rows = [("underestimation", "underestimation_pct", ".1f", "%"), ("truncation", "truncation_pct", ".1f", "%"),
            ("  unresolved truncated", "truncation_unresolved", "d", ""),
            ("budget waste P50", "budget_waste_p50", ".2f", "x"), ("budget waste P90", "budget_waste_p90", ".2f", "x"),
            ("mean budget", "mean_budget", ".0f", ""), ("mean prediction", "mean_predicted", ".0f", "")]
    lines = [f"Backtest on {result['events']} stored events ({result['skipped']['no_deliverables']} without "
             f"deliverables skipped); underestimation = actual > {result['tolerance']:g} x prediction.",
             f"The re-run reproduced the recorded prediction for {_fmt(result['rerun_match_pct'], '.1f')}% of events."]

    def table(title: str, block: dict[str, Any]) -> None:
        lines.append(f"{title} ({block['events']} events)       {result['old_version']:>22}  {result['new_version']:>28}")
        for label, key, spec, unit in rows:
            lines.append(f"  {label:<24}{_fmt(block['old'][key], spec) + unit:>22}  {_fmt(block['new'][key], spec) + unit:>28}")

    table("All events", result)
    for group in result["groups"]:
        table(f"{group['category']}/{group['complexity']}", group)
        scale, wanted = group.get("prediction_scale_median"), group.get("multiplier")
        if scale is not None and wanted is not None:
            lines.append(f"  predictions scaled by x{scale:.3f} (median) for a proposed x{wanted:.3f}")
            if abs(scale - wanted) > 0.05 * wanted:
                lines.append("  NOTE: the PHASE_OVERHEAD change moves only the overhead part of these estimates "
                             "(or nothing, for the doc models); the projected figures above are what it achieves.")
    lines.append("Unresolved: truncated events whose new budget exceeds the ceiling they hit; whether it would "
                 "have been enough is unknown.")
    return "\n".join(lines)


def diff_text(application: CalibrationApplication) -> str:
    """The unified diff of the coefficient file, old version -> new."""
    path, old, new = application.path, application.old, application.new
    return "".join(difflib.unified_diff(application.old_text.splitlines(keepends=True),
                                        application.new_text.splitlines(keepends=True),
                                        fromfile=f"{path} ({old.version})", tofile=f"{path} ({new.version})"))


def section_lines(section: dict[str, Any] | None) -> list[str]:
    """The patch's calibration section: what apply-calibration would write per group, and why."""
    if not section or not section.get("groups"):
        return []
    lines = [f"Patch (calibration section, budgets for truncation <= {section['target_truncation_pct']:g}%):"]
    for g in section["groups"]:
        margin = "rules" if g["budget_margin"] is None else f"x{g['budget_margin']:.3f}"
        lines.append(f"  {g['category']}/{g['complexity']}: {g['status']}, multiplier "
                     f"x{g['current_prediction_multiplier']:.3f} -> x{g['prediction_multiplier']:.3f}, "
                     f"margin {margin}, floor {g['previous_budget_floor']} -> {g['budget_floor']}")
    return lines


def frontier_and_cost_lines(economics: list[dict[str, Any]] | None) -> list[str]:
    """Each group's cheapest Tier-1 multiplier and margin, and its money and reserved capacity now and then."""
    if not economics:
        return []
    return (["Frontier and cost (cheapest Tier-1 multiplier and margin; money and reserved capacity now -> then):"]
            + ["  " + economics_line(entry) for entry in economics])


def apply_instructions(patch_path: str) -> list[str]:
    """How to apply a reviewed patch, from a terminal or from the Dagster UI."""
    return [
        f"Review it, then apply: autopack-telemetry apply-calibration {patch_path} --dry-run",
        f"                  then: autopack-telemetry apply-calibration {patch_path} --yes",
        f"  or in the Dagster UI: launch {UI_JOB} with config "
        f"{{ops: {{apply_calibration: {{config: {{patch_path: {patch_path}, confirm: true}}}}}}}}",
    ]


def _changes(group: dict[str, Any]) -> bool:
    return (abs(group["prediction_multiplier"] - group["current_prediction_multiplier"]) > 1e-9
            or group["budget_floor"] != group["previous_budget_floor"] or group["budget_margin"] is not None)


def no_patch_reason(outcome: dict[str, Any]) -> str | None:
    """Why a calibration outcome (``CalibrationOutcome.as_dict()``) leaves nothing to apply; None when
    its patch changes something."""
    if not outcome["gate"]["open"]:
        return f"no patch: {outcome['gate']['summary']}"
    groups = (outcome.get("calibration") or {}).get("groups") or []
    proposed = (outcome.get("result") or {}).get("groups") or []
    if any(g.get("actionable") for g in proposed) or any(_changes(g) for g in groups):
        return None
    result = outcome.get("result") or {}
    threshold = (result.get("parameters") or {}).get("confidence_threshold", 0.7)
    why = [f"{g['category']}/{g['complexity']}: {_why_not(g, threshold)}"
           for g in (*proposed, *(result.get("below_threshold") or [])) if not g.get("actionable")]
    return "no group has a proposal" + (": " + "; ".join(why) if why else " (no group has enough observations)")


def _why_not(group: dict[str, Any], threshold: float) -> str:
    """Why one group of a calibration result has no actionable multiplier."""
    if group.get("note"):
        return group["note"]
    n = group.get("sample_count", 0)
    if "needed" in group:
        return f"{n} clean samples, {group['needed']} more needed"
    details = group.get("method_details") or {}
    if details.get("status") == "unidentifiable":
        return f"{n} clean samples and {details.get('censored_samples', 0)} truncated: no bound yet, collect more"
    return f"{n} clean samples, confidence {group.get('confidence', 0):.2f} below {threshold:g}"
