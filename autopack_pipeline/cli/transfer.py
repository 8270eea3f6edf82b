"""`export`, `import` and `spool replay`: moving events in and out of the telemetry database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    database_url,
    identity_line,
    open_engine,
    positive_int,
    print_json,
    warn_unreadable,
)
from autopack_pipeline.cli.progress import progress_bar

_SHOWN_REJECTIONS = 20  # the rest are in the quarantine file


def cmd_export(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.event_transfer import export_events

    engine = open_engine(args)
    # The banner goes to stderr so stdout stays pure NDJSON; it says which database was read (P1).
    print(identity_line(engine), file=sys.stderr)
    if args.output:
        count, unreadable = export_events(engine, Path(args.output), allow_empty=args.allow_empty_db)
        print(f"Exported {count} events to {Path(args.output).resolve()}")
    else:
        count, unreadable = export_events(engine, sys.stdout, allow_empty=args.allow_empty_db)
        sys.stdout.flush()
        print(f"Exported {count} events", file=sys.stderr)
    warn_unreadable(unreadable, what="those rows are exported with the value as stored")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.event_transfer import import_events
    from autopack_pipeline.storage.handle import describe_database

    source = Path(args.file)
    if not source.is_file():
        raise UsageError(f"no such file: {source}")
    quarantine = Path(args.quarantine) if args.quarantine else source.with_name(source.name + ".rejected.ndjson")
    if quarantine.resolve() == source.resolve():
        raise UsageError("the quarantine file must differ from the input file")
    engine = open_engine(args)
    with progress_bar(args, f"Importing {source.name}", "lines") as advance:
        report = import_events(engine, source, quarantine, batch_size=args.batch_size,
                             progress=(lambda lines: advance(lines)) if advance else None)
    if args.json:
        print_json({"database": describe_database(engine).to_dict(), "file": str(source.resolve()), **report.to_dict()})
    else:
        for rejection in report.rejections[:_SHOWN_REJECTIONS]:
            print(f"{source}:{rejection['line']}: rejected: {rejection['reason']}", file=sys.stderr)
        if report.rejected > _SHOWN_REJECTIONS:
            print(f"... and {report.rejected - _SHOWN_REJECTIONS} more rejected lines", file=sys.stderr)
        print(identity_line(engine))
        print(
            f"Read {report.lines} lines from {source}: {report.imported} events imported, "
            f"{report.duplicates} already present, {report.rejected} rejected."
        )
        if report.quarantine_file:
            print(f"Rejected lines, with their line numbers and reasons: {report.quarantine_file}")
        if report.aborted:
            print(f"Stopped early, the database became unavailable: {report.aborted}. "
                  "Run the same import again; lines already imported are skipped.", file=sys.stderr)
    return EXIT_REFUSED if report.rejected or report.aborted else EXIT_OK


def cmd_spool_replay(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.event_transfer import replay_spool

    document, pending = replay_spool(database_url(args))
    if args.json:
        print_json(document)
    else:
        _print_replay(document, pending)
    return EXIT_REFUSED if document["still_failing"] or document["rejected"] else EXIT_OK


def _print_replay(document: dict[str, Any], pending: int) -> None:
    print(f"Telemetry database: {document['database']}")
    if not pending:
        print(f"Nothing to replay: {document['spool_file']} holds no events for this database.")
    else:
        print(
            f"Replayed {document['spool_file']}: {document['written']} written, {document['duplicates']} already "
            f"stored, {document['still_failing']} still failing, {document['rejected']} rejected."
        )
    if document["still_failing"]:
        print(f"The database is still unavailable ({document['error']}); those lines are kept. Run again later.")
    if document["rejected_file"]:
        print(f"Lines the database refused are in {document['rejected_file']} with the reason.")
    for path, count in document["other_spools"].items():
        print(f"Note: {path} holds {count} events for another database; replay it with that DATABASE_URL.")


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser(
        "export",
        help="write every event as NDJSON (newest first)",
        description="Write token_estimation_v2_events as NDJSON, one object per event with the table's column "
        "names (deliverables as a list), newest first. The database banner goes to stderr.",
    )
    p.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    p.add_argument("--allow-empty-db", action="store_true", help="write an empty export instead of refusing")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import",
        help="import events from NDJSON (ours or Autopack's export format)",
        description="Import NDJSON events (this tool's export or Autopack's export_token_estimation_telemetry.py). "
        "Missing run/phase rows are created; rows without event_uid get one derived from their content, so "
        "importing twice adds nothing. Rows are kept as the source had them: the live writer's under-50-token "
        "guard does not apply. Bad lines are reported with their line number and written, with the reason, to "
        "the quarantine file; the good lines are imported. Exit 1 when any line was rejected.",
    )
    p.add_argument("file", help="the NDJSON file")
    p.add_argument("--quarantine", help="where rejected lines go (default: FILE.rejected.ndjson)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="lines per transaction (default 500)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("spool", help="events kept locally while the database was unavailable")
    spool_sub = p.add_subparsers(dest="spool_command", required=True, parser_class=parser_class)
    p = spool_sub.add_parser(
        "replay",
        help="write spooled events to the database now",
        description="Write the events spooled for this database (AUTOPACK_SPOOL_DIR, default .autopack/spool) "
        "to it. Idempotent; lines that still fail are kept. Exit 1 when any line could not be written.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_spool_replay)
