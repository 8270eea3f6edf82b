"""`loop`: N rounds of collect -> calibrate -> backtest -> apply on a fresh database and a private seeds copy."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    non_negative_int,
    positive_int,
    print_json,
)


def cmd_loop(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.calibration_loop import (
        LoopOptions,
        open_fresh_database,
        private_seeds,
        round_lines,
        run_loop,
        table_lines,
    )
    from autopack_pipeline.services.collecting import make_backend
    from autopack_pipeline.settings import load_settings

    settings = load_settings()
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="autopack-loop-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.seeds_dir:  # the user asked for these seeds to be edited in place
        seeds = Path(args.seeds_dir)
        if not (seeds / "estimator_coefficients.yaml").exists():
            raise UsageError(f"--seeds-dir {seeds} has no estimator_coefficients.yaml")
    else:
        try:
            seeds = private_seeds(settings.seeds_dir, work_dir)
        except FileExistsError as exc:
            raise UsageError(str(exc)) from None
    settings = settings.model_copy(update={"seeds_dir": seeds.resolve()})
    url = args.database_url or f"sqlite:///{(work_dir / 'loop.db').resolve()}"
    engine = open_fresh_database(url)
    make = lambda number: make_backend(settings, args.backend, args.seed)  # noqa: E731 - one backend per round
    options = LoopOptions(rounds=args.rounds, runs_per_round=args.runs_per_round, world=args.world or args.backend,
                          concurrency=args.concurrency, template_phases_per_group=args.template_phases_per_group,
                          window_versions=args.window_versions)
    if not args.json:
        print(f"Work directory: {work_dir} (database {url.split('@')[-1]}, seeds {seeds})")

    def show(document: dict[str, Any]) -> None:
        if not args.json:
            print("\n".join(round_lines(document)), flush=True)

    rounds = run_loop(engine, settings, make, options, on_round=show)
    if args.json:
        print_json({"work_dir": str(work_dir), "seeds_dir": str(seeds), "rounds": rounds})
    else:
        print("\n".join(table_lines(rounds)))
    problems = sum(d["collection_problems"] for d in rounds)
    if problems:
        print(f"error: {problems} collection problem(s); see the rounds above", file=sys.stderr)
    return EXIT_REFUSED if problems else EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("loop", help="rounds of collect -> calibrate -> backtest -> apply, measured per round")
    p.add_argument("--rounds", type=positive_int, required=True, help="rounds of collect -> calibrate -> apply")
    p.add_argument("--runs-per-round", type=positive_int, required=True, help="collection runs in each round")
    p.add_argument("--backend", choices=["simulated", "anthropic"], default="simulated",
                   help="who answers: the offline simulator (default) or the Messages API (paid)")
    p.add_argument("--world", help="a name for the world answering (default: the backend's); run ids carry it")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--work-dir", help="where the database and the seeds copy go (default: a new temp directory)")
    p.add_argument("--seeds-dir", help="edit these seeds in place instead of a private copy (asked for explicitly)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="phases drained at a time (default 4)")
    p.add_argument("--template-phases-per-group", type=positive_int,
                   help="template phases per group in each run (default: the collection's)")
    p.add_argument("--window-versions", type=non_negative_int,
                   help="calibrate on the events of this many most recent coefficient versions, the older ones "
                        "re-expressed in the newest's world when its error moved; 0 = all "
                        "(default: $AUTOPACK_CALIBRATION_WINDOW_VERSIONS or 2)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=cmd_loop)
