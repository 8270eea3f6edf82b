"""`collect`: a telemetry collection run from a terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Refused,
    UsageError,
    database_url,
    identity_line,
    open_engine,
    positive_int,
    print_json,
)
from autopack_pipeline.cli.progress import progress_bar


def cmd_collect(args: argparse.Namespace) -> int:
    from autopack_pipeline.services import collecting
    from autopack_pipeline.settings import load_settings

    phases_file, phase_count = _phases_argument(args)
    settings = load_settings()
    _refuse_memory_database(args)
    engine = open_engine(args)
    backend = collecting.make_backend(
        settings, args.backend, args.seed, replay_file=args.replay_file, record_file=args.record
    )
    try:
        with progress_bar(args, "Collecting", "phases") as advance:
            summary = collecting.collect(
                engine,
                settings,
                backend,
                run_id=args.run_id,
                concurrency=args.concurrency,
                category=args.category,
                complexity=args.complexity,
                phases=phase_count,
                phases_file=phases_file,
                progress=_phase_progress(advance),
            )
    except collecting.COLLECTION_REFUSALS as exc:
        raise Refused(str(exc)) from None
    if args.json:
        print_json(summary.as_dict())
    else:
        _print_summary(engine, summary)
    # 1 whenever the run did not do what was asked (see CollectionSummary.problems and the README).
    return EXIT_OK if summary.ok else EXIT_REFUSED


def _print_summary(engine: Any, summary: Any) -> None:
    from autopack_pipeline.services.collecting import MIN_VALID_OUTPUT_TOKENS

    print(identity_line(engine))
    print(
        f"Collection run {summary.run_id} with the {summary.backend} backend ({summary.model}): "
        f"{summary.phases_completed} phases completed, {summary.phases_failed} failed, "
        f"{summary.phases_skipped_complete} already complete, {summary.phases_pending} left pending; "
        f"{summary.events_written} events written, {summary.events_spooled} still spooled, "
        f"{summary.escalations} escalations."
        + (f" {summary.short_answers_not_recorded} answer(s) under {MIN_VALID_OUTPUT_TOKENS} output tokens "
           "not recorded (as Autopack's writer)." if summary.short_answers_not_recorded else "")
    )
    for phase_id, reason in sorted(summary.failures.items()):
        print(f"  FAILED {phase_id}: {reason}")
    for problem in summary.problems():
        print(f"error: {problem}", file=sys.stderr)


def _phases_argument(args: argparse.Namespace) -> tuple[Path | None, int | None]:
    """``--phases`` is a count with --category/--complexity, else a phases YAML file."""
    from autopack_pipeline.services.collecting import check_template_phase_count

    if args.phases is None:
        return None, None
    if args.category or args.complexity:
        if not args.phases.isdigit() or int(args.phases) <= 0:
            raise UsageError(f"--phases must be a positive number with --category/--complexity, got {args.phases!r}")
        check_template_phase_count(int(args.phases))
        return None, int(args.phases)
    return Path(args.phases), None


def _refuse_memory_database(args: argparse.Namespace) -> None:
    """A collection run into an in-memory database would be thrown away when the command ends."""
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.handle import describe_database

    engine = make_engine(database_url(args))
    try:
        identity = describe_database(engine)
    finally:
        engine.dispose()
    if identity.backend == "sqlite" and identity.sqlite_path is None:
        raise UsageError(f"collect needs a database that outlives the command, not {identity.url}: "
                         "name a file (sqlite:///autopack.db) or a PostgreSQL database")


def _phase_progress(advance: Callable[..., None] | None) -> Callable[..., None] | None:
    """The collection's per-phase report as a move of the bar, noting the phase just drained."""
    if advance is None:
        return None
    return lambda done, total, result: advance(done, total,
                                               f"{result.phase_id} {'ok' if result.completed else 'failed'}")


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("collect", help="run a telemetry collection run")
    p.add_argument("--run-id", help="resume or name a run (default: telemetry-collection-<UTC time>-<random>)")
    p.add_argument("--backend", choices=["simulated", "anthropic", "replay"],
                   help="default: $AUTOPACK_LLM_BACKEND or simulated")
    p.add_argument("--replay-file", type=Path, help="recorded answers for --backend replay (NDJSON)")
    p.add_argument("--record", type=Path, help="also append every answer to this NDJSON file, for replay later")
    p.add_argument("--concurrency", type=positive_int, default=4, help="phases drained in parallel (default 4)")
    p.add_argument("--phases", help="a phases YAML file, or with --category/--complexity a number of phases")
    p.add_argument("--category", help="targeted run: phases for one category (with --complexity)")
    p.add_argument("--complexity", help="targeted run: phases for one complexity (with --category)")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_collect)
