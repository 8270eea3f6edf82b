"""`synth`: fill the telemetry database with realistic synthetic events, in bulk."""

from __future__ import annotations

import argparse
from typing import Any

from autopack_pipeline.cli.common import EXIT_OK, UsageError, identity_line, open_engine, positive_int, print_json
from autopack_pipeline.cli.progress import progress_bar


def cmd_synth(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.synthetic_data import LoadInProgress, RunsAlreadyPresent, synthesise

    if args.runs is not None and args.runs > args.events:
        raise UsageError(f"--runs ({args.runs}) cannot exceed --events ({args.events})")
    engine = open_engine(args)
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise UsageError(f"synth loads SQLite and PostgreSQL databases, not {engine.dialect.name}")
    try:
        with progress_bar(args, "Synthesising", "events") as advance:
            summary = synthesise(engine, args.events, runs=args.runs, seed=args.seed, phase_ids=args.phase_ids,
                                 progress=advance)
    except (RunsAlreadyPresent, LoadInProgress) as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print_json(summary.as_dict())
        return EXIT_OK
    print(identity_line(engine))
    for removed in summary.interrupted_loads_removed:
        print(f"Removed {removed['runs']} runs of seed {removed['seed']} left by an interrupted earlier load "
              "(killed between two of its commits).")
    print(
        f"Synthesised {summary.events} events in {summary.phases} phases of {summary.runs} runs "
        f"({summary.first_run_id} .. {summary.last_run_id}), seed {summary.seed}, "
        f"timestamps {summary.first_timestamp} .. {summary.last_timestamp}."
    )
    if summary.ends_before_now:
        print("Dated to end before now, among the stored events: after the newest of them the batch could have "
              "run into the future, where the drift checks would not see it.")
    print(f"{summary.seconds:.1f} s, {summary.events_per_second:,.0f} events/s ({summary.method}).")
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser(
        "synth",
        help="fill the telemetry database with realistic synthetic events, in bulk",
        description=(
            "Generate runs, tiers, phases and token-estimation events like the simulated backend's, "
            "priced by the real estimator, and load them in bulk (SQLite through ADBC, PostgreSQL COPY). "
            "The same --seed gives the same rows; a seed's runs can be loaded once per database."
        ),
    )
    p.add_argument("--events", type=positive_int, required=True, help="number of events to create")
    p.add_argument("--runs", type=positive_int,
                   help="number of runs they belong to (default: one per 34 events, as in a database Autopack "
                        "wrote; one per 2,000 with --phase-ids reused)")
    p.add_argument("--phase-ids", choices=("per-run", "reused"), default="per-run",
                   help="per-run (default): every run has its own phase ids and runs differ in size, as "
                        "Autopack's; reused: phase-00001... again in every run of equal size")
    p.add_argument("--seed", type=int, default=1, help="random seed; runs are named synth-<seed>-rNNNNN (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_synth)
