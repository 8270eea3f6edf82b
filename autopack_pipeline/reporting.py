"""Calibration reports on disk: Autopack's markdown and JSON layout, plus our provenance.

The JSON keeps every key Autopack's ``calibrate_token_estimator.py`` writes (``metadata`` and
``proposed_changes``, high-confidence groups only) so tools reading its reports keep working, and
adds ours beside them: ``method``, ``parameters``, ``provenance``, ``all_groups`` and
``below_threshold``. Files are written atomically, so a reader (or a crash) never sees half a report.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autopack_pipeline.domain.calibration import CalibrationResult, GroupCalibration

REPORT_PREFIX = "token_estimator_calibration_"
REPORT_TIME_FORMAT = "%Y%m%d_%H%M%S"


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
        "reasoning": f"Actual tokens are {group.median_ratio:.2f}x estimated (median)",
    }


def calibration_report_payload(result: CalibrationResult, generated_at: datetime | None = None) -> dict[str, Any]:
    """The JSON report as a plain dict (also what ``calibrate --json`` prints)."""
    actionable = result.actionable_groups
    return {
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


def _cell(value: Any) -> str:
    # A pipe inside a value would split the markdown table cell.
    return str(value).replace("|", "\\|")


def _waste(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


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
        f"- **Action**: {group.action}",
        "",
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


def render_calibration_markdown(result: CalibrationResult, *, generated_at: datetime | None = None) -> str:
    """The markdown report. Pure: without ``generated_at`` the time line says it was not stamped."""
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

    lines += [
        "## Detailed Results",
        "",
        "| Category | Complexity | Samples | Avg Actual | Avg Est | Median Ratio | Confidence | Proposed Mult |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_cell(g.category)} | {_cell(g.complexity)} | {g.sample_count} | {g.avg_actual:.0f} | "
        f"{g.avg_estimated:.0f} | {g.median_ratio:.3f} | {g.confidence:.2f} | {g.proposed_multiplier:.3f} |"
        for g in sorted(result.groups, key=lambda g: (-g.sample_count, g.category, g.complexity))
    ]

    lines += [
        "",
        "## Notes",
        "",
        "- Ratio = actual / predicted output tokens, over clean samples only (successful, not truncated, "
        "at least 50 output tokens).",
        "- Median ratio is the upper-middle value, sorted(ratios)[n // 2], as in Autopack's script.",
        "- Confidence = 0.6 * min(1, n / 12) + 0.4 / (1 + population std of ratios).",
        "- Budget waste = (actual_max_tokens or selected_budget) / actual output tokens.",
        "- Nothing edits the coefficient file automatically: review, then run `apply-calibration`.",
        "",
        "## Provenance",
        "",
        *_provenance_lines(result),
        "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_calibration_reports(
    result: CalibrationResult, output_dir: Path, now: datetime | None = None
) -> tuple[Path, Path]:
    """Write the markdown and JSON reports into ``output_dir`` (created if missing).

    Returns ``(markdown_path, json_path)``. Both carry the same UTC timestamp, taken from ``now``
    (default: the current time); a second report in the same second replaces the first.
    """
    moment = _utc(now)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = report_stem(moment)
    markdown_path = directory / f"{stem}.md"
    json_path = directory / f"{stem}.json"
    payload = calibration_report_payload(result, moment)
    # allow_nan=False: a NaN would make the file unreadable for strict JSON parsers; fail here instead.
    _write_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    _write_atomic(markdown_path, render_calibration_markdown(result, generated_at=moment))
    return markdown_path, json_path
