"""Calibration reports on disk: Autopack's markdown and JSON layout, plus our provenance.

The JSON keeps every key Autopack's ``calibrate_token_estimator.py`` writes (``metadata`` and
``proposed_changes``, high-confidence groups only) so tools reading its reports keep working, and
adds ours beside them: ``method``, ``parameters``, ``provenance``, ``all_groups`` and
``below_threshold``, and, when several methods ran, ``methods`` with each one's figures side by side.
Files are written atomically, so a reader (or a crash) never sees half a report, and their names are
checked so that no stem can put a file outside the output directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from autopack_pipeline.domain.analysis import CalibrationResult, GroupCalibration
from autopack_pipeline.domain.targets import UNDER_TOLERANCE, UNDERESTIMATION_TARGET_PCT

# The one writer of user-facing files (atomic, umask modes, special files refused), re-exported here
# because the report writers grew up in this module.
from autopack_pipeline.output_files import ensure_directory, write_atomic_text, write_atomic_with  # noqa: F401
from autopack_pipeline.services.json_text import indented_json
from autopack_pipeline.services.report_cells import cell as _cell
from autopack_pipeline.services.report_cells import frontier_and_cost_lines
from autopack_pipeline.services.report_cells import pct_text as _pct_text
from autopack_pipeline.services.report_cells import waste as _waste

REPORT_PREFIX = "token_estimator_calibration_"
REPORT_TIME_FORMAT = "%Y%m%d_%H%M%S"
# A stem is one plain file-name component: no separators, no leading dot, nothing but these characters.
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def _utc(moment: datetime | None) -> datetime:
    """``moment`` in UTC; a naive value is taken to be UTC already, ``None`` means now."""
    if moment is None:
        return datetime.now(timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def report_stem(now: datetime | None = None) -> str:
    """``token_estimator_calibration_<UTC %Y%m%d_%H%M%S>``, the shared name of both report files."""
    return REPORT_PREFIX + _utc(now).strftime(REPORT_TIME_FORMAT)


def safe_stem(stem: str) -> str:
    """``stem`` if it is a plain file-name component, else ``ValueError``: no ``/``, ``\\``, ``..``."""
    if not isinstance(stem, str) or not _SAFE_STEM.fullmatch(stem) or ".." in stem:
        raise ValueError(f"unsafe report file name {stem!r}: use letters, digits, '_', '-' and '.' only")
    return stem


def _inside(directory: Path, name: str) -> Path:
    """``directory / name``, refusing any result whose parent is not ``directory`` itself."""
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise ValueError(f"report file {name!r} would leave {directory}")
    return path


def _reasoning(group: GroupCalibration) -> str:
    details = group.method_details
    if details.get("status") is None:
        return f"Actual tokens are {group.median_ratio:.2f}x estimated (median)"
    if details.get("multiplier_is_lower_bound"):
        return "Unidentifiable: too many truncated observations for a 95% bound"
    return (
        f"95% of actual/predicted at or below {details['upper_ratio_bound']:.2f} ({details['status']}); "
        f"x{group.proposed_multiplier:.3f} keeps actual > {details['tolerance']:g}x estimate to about "
        f"{details['target_underestimation_pct']:g}% of calls"
    )


def _proposed_change(group: GroupCalibration) -> dict[str, Any]:
    """One entry of Autopack's ``proposed_changes``: exactly its keys, figures to 3 decimals."""
    return {
        "category": group.category,
        "complexity": group.complexity,
        "sample_count": group.sample_count,
        "confidence": round(group.confidence, 3),
        "median_ratio": round(group.median_ratio, 3),
        "proposed_multiplier": round(group.proposed_multiplier, 3),
        "action": (
            f"multiply PHASE_OVERHEAD[('{group.category}', '{group.complexity}')] "
            f"by {group.proposed_multiplier:.3f}"
        ),
        "reasoning": _reasoning(group),
    }


def _method_block(result: CalibrationResult) -> dict[str, Any]:
    return {
        "parameters": dict(result.parameters),
        "proposed_changes": [_proposed_change(g) for g in result.actionable_groups],
        "groups": [g.model_dump(mode="json") for g in result.groups],
        "below_threshold": [{**g.model_dump(mode="json"), "note": g.note} for g in result.below_threshold],
    }


def calibration_report_payload(
    result: CalibrationResult, generated_at: datetime | None = None, *, others: Sequence[CalibrationResult] = (),
    economics: Sequence[dict[str, Any]] | None = None,
    calibration_section: dict[str, Any] | None = None,
    method_sections: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON report as a plain dict. ``result`` is the chosen method: Autopack's keys carry its
    figures; with ``others``, ``methods`` holds every method's figures under its name, and, given
    ``method_sections``, each method's own calibration section (``apply-calibration --method``)."""
    actionable = result.actionable_groups
    payload = {
        "metadata": {
            "generated_at": _utc(generated_at).isoformat(),
            "confidence_threshold": result.confidence_threshold,
            "total_samples": result.total_samples,
            "high_confidence_groups": len(actionable),
        },
        "proposed_changes": [_proposed_change(g) for g in actionable],
        "method": result.method,
        "parameters": dict(result.parameters),
        "provenance": result.provenance.model_dump(mode="json"),
        "all_groups": [g.model_dump(mode="json") for g in result.groups],
        "below_threshold": [{**g.model_dump(mode="json"), "note": g.note} for g in result.below_threshold],
    }
    if others:
        payload["methods"] = {r.method: _method_block(r) for r in (result, *others)}
        for name, section in (method_sections or {}).items():
            if name in payload["methods"]:
                payload["methods"][name]["calibration"] = section
    if economics is not None:
        payload["frontier_and_cost"] = list(economics)
    if calibration_section is not None:
        # What apply-calibration writes into the coefficient file's calibration section.
        payload["calibration"] = calibration_section
    return payload


def _recommendation(group: GroupCalibration) -> list[str]:
    return [
        f"### {group.category}/{group.complexity}",
        "",
        f"- Samples: {group.sample_count}",
        f"- Confidence: {group.confidence:.2f}",
        f"- Current avg estimate: {group.avg_estimated:.0f} tokens",
        f"- Actual avg: {group.avg_actual:.0f} tokens",
        f"- Median ratio: {group.median_ratio:.3f}",
        f"- Proposed multiplier: {group.proposed_multiplier:.3f}",
        f"- Budget waste: median {_waste(group.median_budget_waste)}, P90 {_waste(group.p90_budget_waste)}",
        *_coverage_lines(group.method_details),
        f"- **Action**: {group.action}",
        "",
    ]


def _multiplier(group: GroupCalibration) -> str:
    # An unidentifiable coverage group carries only a lower bound, never a proposal.
    prefix = ">= " if group.method_details.get("multiplier_is_lower_bound") else ""
    return f"{prefix}{group.proposed_multiplier:.3f}"


def _coverage_lines(details: dict[str, Any]) -> list[str]:
    if details.get("status") is None:
        return []
    bound = details.get("upper_ratio_bound")
    how = {"identifiable": f"the group's own finite-sample bound (order statistic k={details['order_statistic_k']})",
           "thin": "borrowed from its category (too few observations for a bound of its own)",
           "unidentifiable": "unidentifiable"}[details["status"]]
    return [
        f"- Observations: {details['clean_samples']} clean, {details['censored_samples']} truncated (censored)",
        f"- 95% upper bound of actual/predicted: {'none' if bound is None else f'{bound:.3f}'} ({how})",
        f"- Underestimation on these observations: now {_pct_text(details['underestimation_pct_now'])}, "
        f"with the multiplier {_pct_text(details['underestimation_pct_projected'])}",
        f"- Budget waste P50/P90: now {_waste(details['budget_waste_p50_now'])}/{_waste(details['budget_waste_p90_now'])}, "
        f"projected {_waste(details['budget_waste_p50_projected'])}/{_waste(details['budget_waste_p90_projected'])}",
    ]


def _side_by_side(results: Sequence[CalibrationResult]) -> list[str]:
    """One row per group, one column per method: how far apart the methods' answers are."""
    by_method = {r.method: {(g.category, g.complexity): g for g in r.groups} for r in results}
    keys = sorted({key for groups in by_method.values() for key in groups})
    header = "| Category | Complexity | " + " | ".join(f"{m} (confidence)" for m in by_method)
    header += " | Coverage status | Underestimation now -> projected | Budget waste P90 now -> projected |"
    lines = ["## Methods side by side", "",
             "Multipliers marked * are actionable (confidence at or above the threshold); - means the "
             "method had too few samples for the group.", "", header,
             "|---|---|" + "---:|" * len(by_method) + "---|---:|---:|"]
    for key in keys:
        cells = []
        for groups in by_method.values():
            g = groups.get(key)
            cells.append("-" if g is None else
                         f"{g.proposed_multiplier:.3f}{'*' if g.actionable else ''} ({g.confidence:.2f})")
        cov = by_method.get("coverage", {}).get(key)
        d = cov.method_details if cov is not None else {}
        if d.get("multiplier_is_lower_bound") and cells:
            cells[list(by_method).index("coverage")] = f">= {cov.proposed_multiplier:.3f} ({cov.confidence:.2f})"
        extra = [d.get("status", "-"),
                 f"{_pct_text(d.get('underestimation_pct_now'))} -> {_pct_text(d.get('underestimation_pct_projected'))}"
                 if d else "-",
                 f"{_waste(d.get('budget_waste_p90_now'))} -> {_waste(d.get('budget_waste_p90_projected'))}" if d else "-"]
        lines.append(f"| {_cell(key[0])} | {_cell(key[1])} | " + " | ".join(cells + extra) + " |")
    return lines + [""]


def _notes(result: CalibrationResult) -> list[str]:
    common = [
        "- Budget waste = (actual_max_tokens or selected_budget) / actual output tokens.",
        "- Nothing edits the coefficient file automatically: review, then run `apply-calibration`.",
    ]
    if result.method != "coverage":
        return [
            "- Ratio = actual / predicted output tokens, over clean samples only (successful, not truncated, "
            "at least 50 output tokens).",
            "- Median ratio is the upper-middle value, sorted(ratios)[n // 2], as in Autopack's script.",
            "- Confidence = 0.6 * min(1, n / 12) + 0.4 / (1 + population std of ratios).",
            *common,
        ]
    p = result.parameters
    return [
        "- Ratio = actual / predicted output tokens over clean samples; truncated events are censored "
        "observations that count as exceeding every candidate multiplier (never dropped).",
        f"- 95% upper bound = the k-th smallest of N observations, k = ceil((N + 1) * (1 - "
        f"{p.get('target_underestimation_pct', UNDERESTIMATION_TARGET_PCT):g}/100)); groups too small for it borrow from their category "
        "(and categories from the global bound) with weight w = clean / (clean + "
        f"{p.get('prior_weight', 8):g}), and borrowing never lowers a group's own figure.",
        f"- Proposed multiplier = bound / {p.get('tolerance', UNDER_TOLERANCE):g}: predictions scaled by it leave about "
        f"{p.get('target_underestimation_pct', UNDERESTIMATION_TARGET_PCT):g}% of calls above {p.get('tolerance', UNDER_TOLERANCE):g}x the estimate. "
        "Confidence is the weight w.",
        "- Projected budget waste scales today's budgets by the multiplier (floors and caps aside); "
        "`backtest` re-runs the estimator exactly.",
        *common,
    ]


def _provenance_lines(result: CalibrationResult) -> list[str]:
    prov = result.provenance
    params = ", ".join(f"{k}={v}" for k, v in result.parameters.items())
    ids = "none" if prov.event_id_min is None else f"{prov.event_id_min} to {prov.event_id_max}"
    window = (
        "none" if prov.time_window_start is None
        else f"{prov.time_window_start.isoformat()} to {prov.time_window_end.isoformat()}"
    )
    reasons = ", ".join(f"{k}: {v}" for k, v in prov.exclusions.items() if v) or "none"
    lines = [
        f"- Method: `{result.method}` ({params})",
        f"- Event ids: {ids}",
        f"- Time window (UTC): {window}",
        f"- Samples kept: {prov.samples_kept}; excluded: {prov.samples_excluded} ({reasons})",
        f"- Coefficient file version: {prov.coefficient_file_version or 'unknown'}",
        f"- Dagster run id: {prov.dagster_run_id or 'not run by Dagster'}",
        f"- Forced: {'yes, the calibration gate was overridden with --force' if prov.forced else 'no'}",
    ]
    if prov.dedup is not None:
        lines.append(f"- One sample per phase (dedup): {'yes' if prov.dedup else 'no, every attempt counted'}")
    if prov.run_ids:
        lines.append(f"- Runs included: {', '.join(prov.run_ids)}")
    if prov.database:
        lines.append(f"- Database: {prov.database}")
    if prov.gate_summary:
        lines.append(f"- Gate: {prov.gate_summary}")
    return lines


def calibration_section_lines(section: dict[str, Any] | None) -> list[str]:
    """The patch's calibration section as a markdown table (what apply-calibration would write)."""
    if not section or not section.get("groups"):
        return []
    lines = ["## Coefficient file calibration section (the patch)", "",
             f"Against coefficients `{section['coefficient_file_version']}`; budgets aim at truncation <= "
             f"{section['target_truncation_pct']:g}%.", "",
             "| Group | Status | N (truncated) | Multiplier now -> new | Budget margin | Budget floor (was) | Note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for g in section["groups"]:
        margin = "rules" if g["budget_margin"] is None else f"x{g['budget_margin']:.3f}"
        lines.append(f"| {_cell(g['category'])}/{_cell(g['complexity'])} | {g['status']} | {g['observations']} "
                     f"({g['censored']}) | x{g['current_prediction_multiplier']:.3f} -> x{g['prediction_multiplier']:.3f}"
                     f" | {margin} | {g['budget_floor']} ({g['previous_budget_floor']}) | {_cell(g['note'])} |")
    return [*lines, ""]


def render_calibration_markdown(
    result: CalibrationResult, *, generated_at: datetime | None = None, others: Sequence[CalibrationResult] = (),
    economics: Sequence[dict[str, Any]] | None = None,
    calibration_section: dict[str, Any] | None = None,
) -> str:
    """The markdown report of ``result``, the chosen method; with ``others``, a side-by-side section.

    Pure: without ``generated_at`` the time line says it was not stamped.
    """
    threshold = result.confidence_threshold
    min_samples = result.parameters.get("min_samples")
    stamp = _utc(generated_at).isoformat() if generated_at is not None else "not stamped"
    actionable = result.actionable_groups

    lines = ["# Token Estimator Calibration Report", "", f"Generated: {stamp}", "", "## Summary", ""]
    lines += [
        f"- Method: `{result.method}`",
        f"- Total samples: {result.total_samples} (in groups with at least {min_samples} samples)",
        f"- Total groups: {len(result.groups)}",
        f"- High-confidence groups (confidence >= {threshold:.2f}): {len(actionable)}",
        f"- Groups below the sample threshold: {len(result.below_threshold)}",
    ]
    lines += [f"  - {g.category}/{g.complexity}: {g.note}" for g in result.below_threshold]
    if result.provenance.forced:
        lines.append("- **Forced**: the calibration gate was overridden with --force; see Provenance.")

    lines += ["", "## Recommendations", ""]
    if actionable:
        for group in actionable:
            lines += _recommendation(group)
    else:
        lines += [f"No group reached confidence {threshold:.2f}; no coefficient change is proposed.", ""]
    blocked = [g for g in result.groups if g.method_details.get("multiplier_is_lower_bound")]
    if blocked:
        # These need a decision as much as the recommendations do, so they get their own section.
        lines += ["## Groups needing data", ""]
        lines += [f"- {g.category}/{g.complexity} (n={g.sample_count}): {g.action}" for g in blocked]
        lines.append("")

    lines += [
        "## Detailed Results",
        "",
        "| Category | Complexity | Samples | Avg Actual | Avg Est | Median Ratio | Confidence | Proposed Mult |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_cell(g.category)} | {_cell(g.complexity)} | {g.sample_count} | {g.avg_actual:.0f} | "
        f"{g.avg_estimated:.0f} | {g.median_ratio:.3f} | {g.confidence:.2f} | {_multiplier(g)} |"
        for g in sorted(result.groups, key=lambda g: (-g.sample_count, g.category, g.complexity))
    ]

    lines.append("")
    lines += calibration_section_lines(calibration_section)
    if others:
        lines += _side_by_side([result, *others])
    if economics is not None:
        lines += frontier_and_cost_lines(economics)
    lines += [
        "## Notes",
        "",
        *_notes(result),
        "",
        "## Provenance",
        "",
        *_provenance_lines(result),
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path
    plot: Path | None = None


def write_calibration_report_set(
    result: CalibrationResult,
    output_dir: Path,
    now: datetime | None = None,
    *,
    others: Sequence[CalibrationResult] = (),
    stem: str | None = None,
    plot: Callable[[IO[bytes]], None] | None = None,
    economics: Sequence[dict[str, Any]] | None = None,
    calibration_section: dict[str, Any] | None = None,
    method_sections: Mapping[str, dict[str, Any]] | None = None,
) -> ReportFiles:
    """Write ``<stem>.json``, ``<stem>.md`` and, given a ``plot`` writer, ``<stem>.png`` into
    ``output_dir`` (created if missing), each atomically.

    ``stem`` defaults to ``token_estimator_calibration_<UTC %Y%m%d_%H%M%S>`` from ``now``; a caller's
    stem must pass :func:`safe_stem`. A second report in the same second replaces the first.
    """
    moment = _utc(now)
    directory = Path(output_dir)
    name = safe_stem(stem if stem is not None else report_stem(moment))
    ensure_directory(directory)
    markdown_path, json_path = _inside(directory, f"{name}.md"), _inside(directory, f"{name}.json")
    payload = calibration_report_payload(result, moment, others=others, economics=economics,
                                         calibration_section=calibration_section, method_sections=method_sections)
    write_atomic_text(json_path, indented_json(payload) + "\n")  # a NaN is null (json_text)
    write_atomic_text(markdown_path, render_calibration_markdown(result, generated_at=moment, others=others,
                                                                 economics=economics,
                                                                 calibration_section=calibration_section))
    plot_path = None
    if plot is not None:
        plot_path = _inside(directory, f"{name}.png")
        write_atomic_with(plot_path, plot)
    return ReportFiles(markdown_path, json_path, plot_path)


def write_calibration_reports(
    result: CalibrationResult, output_dir: Path, now: datetime | None = None
) -> tuple[Path, Path]:
    """Write the markdown and JSON reports of one method; returns ``(markdown_path, json_path)``."""
    files = write_calibration_report_set(result, output_dir, now)
    return files.markdown, files.json
