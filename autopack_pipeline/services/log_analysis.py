"""Autopack's log-based telemetry analysis (its V3 script) on our metric code: parse a log directory,
analyse the records, render the markdown report. Called by ``analyze-logs``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack_pipeline.domain.logparse import analyse_logs, parse_log_dir, source_counts
from autopack_pipeline.services.refusals import Refused

TARGETS = "underestimation <= 5%, truncation <= 2%"


def _num(value: Any, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def _rate(block: dict[str, Any], key: str) -> str:
    low, high = block[f"{key}_ci"]
    return f"{block[key]:.1f}% (95% CI {low:.1f}-{high:.1f}%)"


def render_log_report(document: dict[str, Any], config: dict[str, Any], sources: dict[str, dict]) -> str:
    """The markdown report: the V3 analyser's sections, with intervals and per-file counts."""
    tier1, tier2, diag = document["tier1"], document["tier2"], document["diagnostics"]
    records = document["records"]
    found = records["found"]
    lines = [
        "# Token Estimation Telemetry Analysis", "",
        "## Configuration", "",
        f"- Log directory: {config['log_dir']} (pattern `{config['pattern']}`, recursive)",
        f"- Analysis set: {'successful V2 records only' if config['success_only'] else 'all records'}",
        f"- Underestimation: actual > predicted x {config['under_multiplier']:g}",
        f"- Records found: {found['v2']} V2, {found['v1']} V1, {found['v2-fallback']} V2 fallback (actual_total); "
        f"{records['analysed']} analysed; {records['unreadable_lines']} unreadable lines",
    ]
    if records["fallback_left_out"]:
        lines.append(f"- {records['fallback_left_out']} fallback lines left out: their 'actual' is input + output "
                     "tokens (Autopack pitfall P10); --include-fallback analyses them anyway")
    lines += [
        "", "## Tier 1: risk (tuning gates)", "",
        f"- Underestimation rate: {_rate(tier1, 'underestimation_rate_pct')} over {tier1['total_samples']} records",
        f"- Truncation rate: {_rate(tier1, 'truncation_rate_pct')} over {tier1['v2_samples']} V2 records",
        f"- Success rate: {_rate(tier1, 'success_rate_pct')} over {tier1['v2_samples']} V2 records (monitoring only)",
        f"- Targets: {TARGETS}",
        "", "## Tier 2: cost (advisory)", "",
        f"- Waste ratio (predicted/actual): median {_num(tier2['waste_ratio_median'])}, "
        f"P90 {_num(tier2['waste_ratio_p90'])}, mean {_num(tier2['waste_ratio_mean'])}",
        f"- Budget waste (selected_budget/actual) P90: {_num(tier2['budget_waste_p90'], 'x')} (target < 3x)",
        "", "## Diagnostics", "",
        f"- SMAPE over {diag['non_truncated_count']} non-truncated records: mean {_num(diag['smape_mean'], '%')}, "
        f"median {_num(diag['smape_median'], '%')} (recomputed from the token counts)",
        f"- Mean of the logged error figures (Autopack's V3 number, V1 'Error' included): "
        f"{_num(diag['logged_error_mean'], '%')}",
        f"- Truncated records (lower bounds only): {diag['truncated_count']}",
        "", "## Tuning decision", "",
    ]
    if document["needs_tuning"]:
        lines.append("**TUNING NEEDED**: a Tier-1 target is breached.")
        if tier1["underestimation_rate_pct"] > 5.0:
            lines.append("- Underestimation: raise the base estimates, or target an upper quantile "
                         "(`calibrate --method coverage`).")
        if tier1["truncation_rate_pct"] > 2.0:
            lines.append("- Truncation: raise the safety margins or the budget floors; review selected_budget.")
    else:
        lines.append("**WITHIN TARGETS**: keep monitoring.")
    if "strata" in document:
        lines += ["", "## Stratified analysis (V2 records)", ""]
        for dimension, blocks in document["strata"].items():
            lines += [f"### By {dimension}", "", "| value | n | underestimation | truncation | success |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {value} | {b['total_samples']} | {b['underestimation_rate_pct']:.1f}% | "
                      f"{b['truncation_rate_pct']:.1f}% | {b['success_rate_pct']:.1f}% |" for value, b in blocks.items()]
            lines.append("")
    lines += ["", "## Next steps", ""]
    if not config["success_only"]:
        lines.append("- These figures include failed calls; failure-mode outputs are not representative of what a "
                     "phase needs. Re-run with --success-only before tuning.")
    lines += ["- Calibrate from the database with `autopack-telemetry calibrate` (gated, with provenance).", "",
              "## Data sources", "", "| file | V2 | V1 | fallback | unreadable |", "|---|---:|---:|---:|---:|"]
    for name, counts in sources.items():
        if "error" in counts:
            lines.append(f"| {name} | could not be read: {counts['error']} | | | |")
        else:
            lines.append(f"| {name} | {counts['v2']} | {counts['v1']} | {counts['v2-fallback']} | "
                         f"{counts['unreadable']} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LogAnalysis:
    """The metrics of one log directory, the options they were computed with, and the per-file counts."""

    document: dict[str, Any]
    config: dict[str, Any]
    sources: dict[str, dict]

    def report(self) -> str:
        return render_log_report(self.document, self.config, self.sources)

    def as_dict(self) -> dict[str, Any]:
        return {**self.document, "config": self.config, "sources": self.sources}


def analyse_log_directory(log_dir: Path, pattern: str, *, success_only: bool, stratify: bool,
                          under_multiplier: float, include_fallback: bool) -> LogAnalysis:
    """Parse every file matching ``pattern`` under ``log_dir`` and analyse the records; refused when no
    record is found, or none is left in the analysis set."""
    parsed = parse_log_dir(log_dir, pattern)
    sources = source_counts(parsed)
    if not parsed.records:
        raise Refused(f"no [TokenEstimationV2] or [TokenEstimation] records in {len(sources)} file(s) matching "
                      f"{pattern!r} under {log_dir} ({parsed.unreadable_lines} unreadable lines)")
    document = analyse_logs(parsed, success_only=success_only, stratify=stratify,
                            under_multiplier=under_multiplier, include_fallback=include_fallback)
    if document["records"]["analysed"] == 0:
        raise Refused("records were found, but none is left in the analysis set "
                      "(--success-only keeps successful V2 records only)")
    config = {"log_dir": str(log_dir.resolve()), "pattern": pattern, "success_only": success_only,
              "under_multiplier": under_multiplier, "include_fallback": include_fallback}
    return LogAnalysis(document, config, sources)
