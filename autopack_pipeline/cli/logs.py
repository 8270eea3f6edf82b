"""`analyze-logs`: Autopack's log-based telemetry analyser (its V3 script), on our metric code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import EXIT_OK, Refused, UsageError, positive_float, print_json
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

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


def cmd_analyze_logs(args: argparse.Namespace) -> int:
    from autopack_pipeline.domain.logparse import analyse_logs, parse_log_dir, source_counts
    from autopack_pipeline.services.reporting import write_atomic_text

    log_dir = Path(args.log_dir)
    if not log_dir.is_dir():
        raise UsageError(f"--log-dir {log_dir} is not a directory")
    parsed = parse_log_dir(log_dir, args.pattern)
    sources = source_counts(parsed)
    if not parsed.records:
        raise Refused(f"no [TokenEstimationV2] or [TokenEstimation] records in {len(sources)} file(s) matching "
                      f"{args.pattern!r} under {log_dir} ({parsed.unreadable_lines} unreadable lines)")
    document = analyse_logs(parsed, success_only=args.success_only, stratify=args.stratify,
                            under_multiplier=args.under_multiplier, include_fallback=args.include_fallback)
    if document["records"]["analysed"] == 0:
        raise Refused("records were found, but none is left in the analysis set "
                      "(--success-only keeps successful V2 records only)")
    config = {"log_dir": str(log_dir.resolve()), "pattern": args.pattern, "success_only": args.success_only,
              "under_multiplier": args.under_multiplier, "include_fallback": args.include_fallback}
    if args.output:
        write_atomic_text(Path(args.output), render_log_report(document, config, sources))
    if args.json:
        print_json({**document, "config": config, "sources": sources})
    elif args.output:
        print(f"Report: {Path(args.output).resolve()}")
    else:
        sys.stdout.write(render_log_report(document, config, sources))
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser(
        "analyze-logs",
        help="metrics from Autopack's [TokenEstimationV2] and V1 [TokenEstimation] log lines",
        description="Reads Autopack's token-estimation log lines recursively and reports Tier-1/Tier-2 metrics "
                    "with the same code as `metrics`, following Autopack's V3 analyser: V1 lines are never "
                    "successful, truncation and success rates count V2 records only. Exit 1 when no record is found.",
    )
    p.add_argument("--log-dir", required=True, help="directory scanned recursively (Autopack: .autonomous_runs)")
    p.add_argument("--pattern", default="*.log", help="file name glob (default *.log)")
    p.add_argument("--success-only", action="store_true", help="successful V2 records only (drops every V1 line)")
    p.add_argument("--stratify", action="store_true", help="Tier 1 by category, complexity, deliverables (V2 only)")
    p.add_argument("--under-multiplier", type=positive_float, default=UNDER_TOLERANCE,
                   help=f"count actual > predicted * X as underestimated (default {UNDER_TOLERANCE:g}, as the database path; "
                        "Autopack's analyser defaulted to 1.0, its strict actual > predicted)")
    p.add_argument("--include-fallback", action="store_true",
                   help="also analyse fallback lines (actual_total=, i.e. input + output tokens)")
    p.add_argument("--output", help="write the markdown report to this file (atomically) instead of stdout")
    p.add_argument("--json", action="store_true", help="print the metrics, record counts and sources as JSON")
    p.set_defaults(func=cmd_analyze_logs)
