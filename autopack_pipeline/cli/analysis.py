"""`metrics` and `calibrate`: is the estimator within its targets, and what to change if not."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    CALIBRATION_METHOD_CHOICES,
    EXIT_OK,
    EXIT_REFUSED,
    collector_paused,
    identity_line,
    load_event_arrays,
    non_negative_int,
    open_handle,
    positive_float,
    positive_int,
    print_json,
    unit_float,
)
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


def cmd_metrics(args: argparse.Namespace) -> int:
    with collector_paused():  # as calibrate: no collections during the measure, none over its objects at exit
        return _metrics(args)


def _metrics(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.metrics_report import measure, metrics_json, spend_line
    from autopack_pipeline.settings import load_settings

    database = open_handle(args)
    events, unreadable = load_event_arrays(database, args, args.run_id)
    document = measure(events, success_only=args.success_only, under_multiplier=args.under_multiplier,
                       stratify=args.stratify)
    if args.json:
        print_json(metrics_json(document) | {"unreadable_timestamps": unreadable})
        return EXIT_OK
    print(identity_line(database))
    print(f"Analysis set: {'successful calls only' if args.success_only else 'all Builder calls'}")
    _print_tier1(document["tier1"], "Tier 1")
    tier2 = document["tier2"]
    print(
        "Tier 2: waste ratio median {} / P90 {} / mean {}; budget waste P90 {} (target < 3x)".format(
            *(_num(tier2.get(k)) for k in ("waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90"))
        )
    )
    diag = document["diagnostics"]
    print(
        f"Diagnostics: SMAPE mean {_num(diag.get('smape_mean'))}% median {_num(diag.get('smape_median'))}% over "
        f"{diag.get('non_truncated_count')} untruncated events; {diag.get('truncated_count')} truncated (lower bounds)"
    )
    print(spend_line(events, load_settings()))
    print("Verdict: " + ("TUNING NEEDED (a Tier-1 target is breached)" if document["needs_tuning"] else "WITHIN TARGETS"))
    for dimension, blocks in document.get("strata", {}).items():
        print(f"By {dimension}:")
        for value, block in blocks.items():
            _print_tier1(block, f"  {value}")
    return EXIT_OK


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _print_tier1(tier1: dict[str, Any], label: str) -> None:
    parts = []
    for key, name in (("underestimation_rate_pct", "underestimation"), ("truncation_rate_pct", "truncation"),
                      ("success_rate_pct", "success")):
        low, high = tier1[f"{key}_ci"]
        parts.append(f"{name} {tier1[key]:.1f}% [{low:.1f}-{high:.1f}]")
    print(f"{label} over {tier1['total_samples']} events: " + ", ".join(parts))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.pipeline import analyse
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.handle import describe_database

    with collector_paused():
        settings = load_settings()
        database = open_handle(args)
        events, unreadable = load_event_arrays(database, args, args.include_run_id)
        # The one composition and window rule the calibration_recommendations asset uses: the last
        # AUTOPACK_METRICS_WINDOW_DAYS days of telemetry, ending on the newest event (0 = every event).
        outcome = analyse(
            database,
            settings,
            events,
            min_samples=args.min_samples,
            confidence_threshold=args.confidence_threshold,
            dedup=not args.no_dedup,
            force=args.force,
            output_dir=Path(args.output_dir).resolve() if args.output_dir else None,
            database=describe_database(database).url,
            method=args.method,
            window_versions=args.window_versions,
            gate_metrics_only=True,  # only the gate reads the metrics here
            # Every run's events came through the columnar copy, refreshed just now: the prediction inputs are
            # read from it without refreshing it again.
            store_refreshed=not args.include_run_id,
        ).calibration
        if args.json:
            print_json(outcome.as_dict() | {"unreadable_timestamps": unreadable})
        else:
            # The review's wording (and difflib) only for the text: --json prints none of it.
            from autopack_pipeline.services.calibration_review import (
                frontier_and_cost_lines,
                section_lines,
                window_line,
            )

            print(identity_line(database))
            print(outcome.gate.summary())
            if outcome.reprediction:
                print("Predictions re-expressed under the coefficients in force: "
                      + ", ".join(f"{n} {way}" for way, n in outcome.reprediction.items() if n))
            if outcome.window:
                print(window_line(outcome.window))
            if outcome.result is not None:
                others = [r for name, r in (outcome.results or {}).items() if name != outcome.result.method]
                for result in (outcome.result, *others):
                    chosen = " (chosen: its actionable groups are the patch)" if result is outcome.result else ""
                    print(f"Method {result.method}{chosen}:")
                    for group in result.groups:
                        _print_group(group)
                    for group in result.below_threshold:
                        print(f"  {group.category}/{group.complexity}: {group.note}")
                for line in frontier_and_cost_lines(outcome.economics):
                    print(line)
                for line in section_lines(outcome.calibration_section):
                    print(line)
                print(f"Report: {outcome.markdown_path}")
                print(f"Patch:  {outcome.json_path}")
                if outcome.plot_path:
                    print(f"Plot:   {outcome.plot_path}")
    return EXIT_OK if outcome.gate.open else EXIT_REFUSED


def _print_group(group: Any) -> None:
    flag = "actionable" if group.actionable else "below confidence threshold"
    details = group.method_details
    if details.get("status") == "unidentifiable":
        figure = f"unidentifiable ({details['censored_samples']} truncated)"
    elif details.get("status"):
        figure = (f"95% bound {details['upper_ratio_bound']:.3f} ({details['status']}) -> "
                  f"x{group.proposed_multiplier:.3f} ({flag})")
    else:
        figure = f"median ratio {group.median_ratio:.3f} -> x{group.proposed_multiplier:.3f} ({flag})"
    print(f"  {group.category}/{group.complexity}: n={group.sample_count} confidence {group.confidence:.2f}, "
          f"{figure}; {group.action}")


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("metrics", help="Tier-1/Tier-2 metrics and diagnostics")
    p.add_argument("--success-only", action="store_true", help="analyse successful Builder calls only")
    p.add_argument("--stratify", action="store_true", help="break Tier 1 down by category, complexity, deliverables")
    p.add_argument("--under-multiplier", type=positive_float, default=UNDER_TOLERANCE,
                   help="count actual > predicted * X as underestimated (1.0 = Autopack's strict rule)")
    p.add_argument("--run-id", action="append", help="restrict to these runs (repeatable)")
    p.add_argument("--allow-empty-db", action="store_true",
                   help="analyse an empty database instead of refusing with exit 1")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("calibrate", help="gate, then calibrate and write the report and JSON patch")
    p.add_argument("--method", choices=CALIBRATION_METHOD_CHOICES, default="coverage",
                   help="whose recommendations form the patch (default coverage: a 95%%-coverage upper bound with "
                        "truncated events censored; autopack-median: Autopack's median ratio). Both are reported.")
    p.add_argument("--min-samples", type=positive_int, default=5,
                   help="clean samples a (category, complexity) group needs to be calibrated (default 5)")
    p.add_argument("--confidence-threshold", type=unit_float, default=0.7,
                   help="smallest confidence, 0..1, for a recommendation to be actionable (default 0.7)")
    p.add_argument("--output-dir", help="where reports go (default: $AUTOPACK_REPORTS_DIR or ./reports)")
    p.add_argument("--include-run-id", action="append", help="only these runs (repeatable)")
    p.add_argument("--no-dedup", action="store_true", help="count every attempt, as Autopack does")
    p.add_argument("--window-versions", type=non_negative_int,
                   help="learn from the events of this many most recent coefficient versions, the older ones "
                        "re-expressed in the newest's world when its error moved; 0 = all "
                        "(default: $AUTOPACK_CALIBRATION_WINDOW_VERSIONS or 2)")
    p.add_argument("--force", action="store_true", help="calibrate even when the gate is closed (the report says so)")
    p.add_argument("--allow-empty-db", action="store_true",
                   help="analyse an empty database instead of refusing with exit 1")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_calibrate)
