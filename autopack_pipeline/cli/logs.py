"""`analyze-logs`: Autopack's log-based telemetry analyser (its V3 script), on our metric code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import EXIT_OK, UsageError, positive_float, print_json
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


def cmd_analyze_logs(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.log_analysis import analyse_log_directory
    from autopack_pipeline.services.reporting import write_atomic_text

    log_dir = Path(args.log_dir)
    if not log_dir.is_dir():
        raise UsageError(f"--log-dir {log_dir} is not a directory")
    analysis = analyse_log_directory(log_dir, args.pattern, success_only=args.success_only, stratify=args.stratify,
                                     under_multiplier=args.under_multiplier, include_fallback=args.include_fallback)
    if args.output:
        write_atomic_text(Path(args.output), analysis.report())
    if args.json:
        print_json(analysis.as_dict())
    elif args.output:
        print(f"Report: {Path(args.output).resolve()}")
    else:
        sys.stdout.write(analysis.report())
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
