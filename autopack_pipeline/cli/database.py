"""`db-check`, `db upgrade` and `db backup`: which database, what is in it, bringing its schema up to date, and
a safe copy of it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    EXIT_OK,
    UsageError,
    database_url,
    extraction_progress,
    identity_line,
    open_engine,
    print_json,
)


def cmd_db_check(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.telemetry_database import summarise

    engine = open_engine(args)
    summary = summarise(engine, extraction_progress(args))
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
    from autopack_pipeline.services.telemetry_database import upgrade

    engine, revision = upgrade(database_url(args))
    print(identity_line(engine))
    print(f"Schema is at revision {revision}.")
    return EXIT_OK


def cmd_db_backup(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.telemetry_database import BackupNotPossible, back_up

    try:
        report = back_up(database_url(args), Path(args.file))
    except BackupNotPossible as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"Backed up {report.database} to {report.backup_file}: {report.events} events, {report.bytes} bytes, "
              "one self-contained file (recent rows still in the WAL included).")
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("db-check", help="database identity, row counts, phase states, event counts")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_db_check)
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=parser_class)
    p = db_sub.add_parser("upgrade", help="bring the schema to the newest revision, in place")
    p.set_defaults(func=cmd_db_upgrade)
    p = db_sub.add_parser(
        "backup", help="a consistent copy of a SQLite database (WAL included), safe while others write",
        description="Copies the SQLite telemetry database through SQLite's backup API into FILE (atomically), "
                    "including rows still in the -wal file that a plain copy of the .db file would miss. The copy "
                    "is one self-contained file. For PostgreSQL it prints the pg_dump command to use instead.")
    p.add_argument("file", metavar="FILE", help="where the copy goes")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=cmd_db_backup)
