"""``autopack-telemetry``: the product's jobs from a terminal.

Exit codes: 0 success; 1 when the data refuses (empty database, gate closed, nothing to analyse);
2 for bad usage. A user mistake ends in a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or configuration: exit 2 with the message."""


class Refused(Exception):
    """The data refuses the request: exit 1 with the message."""


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _engine(args: argparse.Namespace):
    from autopack_pipeline.storage.database import make_engine, resolve_database_url
    from autopack_pipeline.storage.migrate import upgrade_database

    engine = make_engine(resolve_database_url(args.database_url))
    upgrade_database(engine)
    return engine


def _identity_line(engine) -> str:
    from autopack_pipeline.storage.database import describe_database

    identity = describe_database(engine)
    return f"Telemetry database: {identity.url}" + (f" ({identity.sqlite_path})" if identity.sqlite_path else "")


def _load_events(engine, args: argparse.Namespace, run_ids: list[str] | None = None):
    from autopack_pipeline.storage.events import read_events
    from autopack_pipeline.storage.database import describe_database

    events = read_events(engine, run_ids=run_ids or None)
    if events.empty and not getattr(args, "allow_empty_db", False):
        raise Refused(
            f"no token-estimation events in {describe_database(engine).url}"
            + (f" for runs {', '.join(run_ids)}" if run_ids else "")
            + ". Likely causes: DATABASE_URL names another database, no collection has run yet "
            "(try `autopack-telemetry collect`), or telemetry was disabled (TELEMETRY_DB_ENABLED) "
            "when Autopack ran. Pass --allow-empty-db to analyse anyway."
        )
    return events


# ---------------------------------------------------------------------------------------- commands


def cmd_db_check(args: argparse.Namespace) -> int:
    from autopack_pipeline.storage.summary import database_summary

    engine = _engine(args)
    summary = database_summary(engine)
    if args.json:
        _print_json(summary)
        return EXIT_OK
    print(_identity_line(engine))
    if summary["database"].get("sqlite_mtime"):
        print(f"  modified: {summary['database']['sqlite_mtime']}")
    print(f"  schema revision: {summary['schema']['revision']} (newest: {summary['schema']['head']})")
    print("Rows per table: " + ", ".join(f"{table} {count}" for table, count in summary["row_counts"].items()))
    print("Phase states: " + ", ".join(f"{state} {n}" for state, n in summary["phase_states"].items()))
    events = summary["events"]
    print(
        f"Events: {events['total']} total, {events['success']} successful ({events['success_pct']:.1f}%), "
        f"{events['truncated']} truncated ({events['truncated_pct']:.1f}%); {summary['escalations']} escalations"
    )
    for key, label in (("success_by_category", "successful by category"), ("success_by_complexity", "successful by complexity")):
        if events.get(key):
            print(f"  {label}: " + ", ".join(f"{name} {n}" for name, n in events[key].items()))
    if summary["is_empty"]:
        print("The database is empty (no runs, no phases). If you expected data, check DATABASE_URL.")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from autopack_pipeline.storage.database import make_engine, resolve_database_url
    from autopack_pipeline.storage.migrate import upgrade_database

    engine = make_engine(resolve_database_url(args.database_url))
    revision = upgrade_database(engine)
    print(_identity_line(engine))
    print(f"Schema is at revision {revision}.")
    return EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    from autopack_pipeline import workflows
    from autopack_pipeline.collection.phases import load_phase_file
    from autopack_pipeline.collection.run import default_run_id, run_collection
    from autopack_pipeline.domain.estimator import TokenEstimator
    from autopack_pipeline.llm.builder import Builder
    from autopack_pipeline.llm.factory import make_backend
    from autopack_pipeline.settings import load_settings

    settings = load_settings()
    engine = _engine(args)
    backend = make_backend(settings, args.backend, args.seed)
    progress = None if args.json or not sys.stderr.isatty() else _progress_printer()
    if args.phases is not None and not args.phases.isdigit():
        run, phases = load_phase_file(Path(args.phases))
        run = run.model_copy(update={"run_id": args.run_id or run.run_id or default_run_id()})
        builder = Builder(TokenEstimator(workflows.load_coefficients_for(settings)), backend, settings.model)
        summary = run_collection(engine, run, phases, builder, concurrency=args.concurrency, progress=progress)
    else:
        summary = workflows.collect(
            engine,
            settings,
            backend,
            run_id=args.run_id,
            concurrency=args.concurrency,
            category=args.category,
            complexity=args.complexity,
            phases=int(args.phases) if args.phases else None,
            progress=progress,
        )
    if args.json:
        _print_json(summary.as_dict())
    else:
        print(_identity_line(engine))
        print(
            f"Collection run {summary.run_id} with the {summary.backend} backend ({summary.model}): "
            f"{summary.phases_completed} phases completed, {summary.phases_failed} failed, "
            f"{summary.phases_skipped_complete} already complete; {summary.events_written} events written, "
            f"{summary.escalations} escalations."
        )
        for phase_id, reason in sorted(summary.failures.items()):
            print(f"  FAILED {phase_id}: {reason}")
    return EXIT_OK


def _progress_printer() -> Callable[..., None]:
    def show(done: int, total: int, result: Any) -> None:
        state = "ok" if result.completed else "failed"
        sys.stderr.write(f"\r[{done}/{total}] {result.phase_id} {state}".ljust(72))
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_metrics(args: argparse.Namespace) -> int:
    from autopack_pipeline.domain.metrics import compute_metrics

    engine = _engine(args)
    events = _load_events(engine, args, args.run_id)
    if args.success_only:
        events = events[events["success"].fillna(False).astype(bool)]
    document = compute_metrics(events, under_multiplier=args.under_multiplier, stratify=args.stratify)
    if args.json:
        _print_json(document)
        return EXIT_OK
    print(_identity_line(engine))
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
    from autopack_pipeline import workflows
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.database import describe_database

    settings = load_settings()
    engine = _engine(args)
    events = _load_events(engine, args, args.include_run_id)
    outcome = workflows.calibrate(
        events,
        settings,
        min_samples=args.min_samples,
        confidence_threshold=args.confidence_threshold,
        dedup=not args.no_dedup,
        force=args.force,
        output_dir=Path(args.output_dir).resolve() if args.output_dir else None,
        database=describe_database(engine).url,
    )
    if args.json:
        _print_json(outcome.as_dict())
    else:
        print(_identity_line(engine))
        print(outcome.gate.summary())
        if outcome.result is not None:
            for group in outcome.result.groups:
                flag = "actionable" if group.actionable else "below confidence threshold"
                print(
                    f"  {group.category}/{group.complexity}: n={group.sample_count} median ratio {group.median_ratio:.3f} "
                    f"confidence {group.confidence:.2f} -> x{group.proposed_multiplier:.3f} ({flag}); {group.action}"
                )
            for group in outcome.result.below_threshold:
                print(f"  {group.category}/{group.complexity}: {group.note}")
            print(f"Report: {outcome.markdown_path}")
            print(f"Patch:  {outcome.json_path}")
    return EXIT_OK if outcome.gate.open else EXIT_REFUSED


def cmd_pipeline(args: argparse.Namespace) -> int:
    from autopack_pipeline.dagster_runner import run_pipeline

    return run_pipeline(collect=not args.skip_collection)


# ------------------------------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default also exits 2, but prints usage noise first
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopack-telemetry", description="Token-budget telemetry and calibration for Autopack.")
    parser.add_argument("--database-url", help="telemetry database (default: $DATABASE_URL, else sqlite:///autopack.db)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("db-check", help="database identity, row counts, phase states, event counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_check)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    p = db_sub.add_parser("upgrade", help="bring the schema to the newest revision, in place")
    p.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("collect", help="run a telemetry collection run")
    p.add_argument("--run-id", help="resume or name a run (default: telemetry-collection-<UTC time>)")
    p.add_argument("--backend", choices=["simulated", "anthropic"], help="default: $AUTOPACK_LLM_BACKEND or simulated")
    p.add_argument("--concurrency", type=_positive_int, default=4)
    p.add_argument("--phases", help="a phases YAML file, or with --category/--complexity a number of phases")
    p.add_argument("--category", help="targeted run: phases for one category (with --complexity)")
    p.add_argument("--complexity", help="targeted run: phases for one complexity (with --category)")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("metrics", help="Tier-1/Tier-2 metrics and diagnostics")
    p.add_argument("--success-only", action="store_true", help="analyse successful Builder calls only")
    p.add_argument("--stratify", action="store_true", help="break Tier 1 down by category, complexity, deliverables")
    p.add_argument("--under-multiplier", type=_positive_float, default=1.1,
                   help="count actual > predicted * X as underestimated (1.0 = Autopack's strict rule)")
    p.add_argument("--run-id", action="append", help="restrict to these runs (repeatable)")
    p.add_argument("--allow-empty-db", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("calibrate", help="gate, then calibrate and write the report and JSON patch")
    p.add_argument("--method", choices=["autopack-median"], default="autopack-median")
    p.add_argument("--min-samples", type=_positive_int, default=5)
    p.add_argument("--confidence-threshold", type=_unit_float, default=0.7)
    p.add_argument("--output-dir", help="where reports go (default: $AUTOPACK_REPORTS_DIR or ./reports)")
    p.add_argument("--include-run-id", action="append", help="only these runs (repeatable)")
    p.add_argument("--no-dedup", action="store_true", help="count every attempt, as Autopack does")
    p.add_argument("--force", action="store_true", help="calibrate even when the gate is closed (the report says so)")
    p.add_argument("--allow-empty-db", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("pipeline", help="materialise the whole Dagster pipeline headlessly and print the results")
    p.add_argument("--skip-collection", action="store_true", help="analyse the events already in the database")
    p.set_defaults(func=cmd_pipeline)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from autopack_pipeline.collection.phases import PhaseSetError
    from autopack_pipeline.settings import SettingsError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"autopack-telemetry: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SettingsError, PhaseSetError, ValueError) as exc:
        print(f"autopack-telemetry: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"autopack-telemetry: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SQLAlchemyError as exc:
        # Show the driver's message without the SQL text or connection parameters.
        print(f"autopack-telemetry: database error: {getattr(exc, 'orig', exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
