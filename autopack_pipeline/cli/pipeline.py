"""`pipeline`: the Dagster job, headless, with a summary of what it found."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_pipeline(args: argparse.Namespace) -> int:
    from autopack_pipeline.cli.common import storage_settings
    from autopack_pipeline.defs.dagster_runner import run_pipeline

    return run_pipeline(collect=not args.skip_collection, settings=storage_settings(args))


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("pipeline", help="materialise the whole Dagster pipeline headlessly and print the results")
    p.add_argument("--skip-collection", action="store_true", help="analyse the events already in the database")
    p.set_defaults(func=cmd_pipeline)
