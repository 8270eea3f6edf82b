"""`db-check` and `db upgrade`: which database, what is in it, and bringing its schema up to date."""

from __future__ import annotations

import argparse
from typing import Any

from autopack_pipeline.cli.common import EXIT_OK, identity_line, open_engine, print_json


def cmd_db_check(args: argparse.Namespace) -> int:
    from autopack_pipeline.storage.summary import database_summary

    engine = open_engine(args)
    summary = database_summary(engine)
    if args.json:
        print_json(summary)
        return EXIT_OK
    print(identity_line(engine))
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
    print(identity_line(engine))
    print(f"Schema is at revision {revision}.")
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("db-check", help="database identity, row counts, phase states, event counts")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_db_check)
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=parser_class)
    p = db_sub.add_parser("upgrade", help="bring the schema to the newest revision, in place")
    p.set_defaults(func=cmd_db_upgrade)
