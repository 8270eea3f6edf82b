"""`collect`: a telemetry collection run from a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from collections.abc import Callable

from autopack_pipeline.cli.common import EXIT_OK, identity_line, open_engine, positive_int, print_json


def cmd_collect(args: argparse.Namespace) -> int:
    from autopack_pipeline import workflows
    from autopack_pipeline.collection.phases import load_phase_file
    from autopack_pipeline.collection.run import default_run_id, run_collection
    from autopack_pipeline.domain.estimator import TokenEstimator
    from autopack_pipeline.llm.builder import Builder
    from autopack_pipeline.llm.factory import make_backend
    from autopack_pipeline.settings import load_settings

    settings = load_settings()
    engine = open_engine(args)
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
        print_json(summary.as_dict())
    else:
        print(identity_line(engine))
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


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("collect", help="run a telemetry collection run")
    p.add_argument("--run-id", help="resume or name a run (default: telemetry-collection-<UTC time>)")
    p.add_argument("--backend", choices=["simulated", "anthropic"], help="default: $AUTOPACK_LLM_BACKEND or simulated")
    p.add_argument("--concurrency", type=positive_int, default=4)
    p.add_argument("--phases", help="a phases YAML file, or with --category/--complexity a number of phases")
    p.add_argument("--category", help="targeted run: phases for one category (with --complexity)")
    p.add_argument("--complexity", help="targeted run: phases for one complexity (with --category)")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_collect)
