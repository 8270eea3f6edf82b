"""`doctor`: the Telemetry Guide's troubleshooting section, run against the configured database.

Unlike other commands this one never creates or migrates the database: a missing file or an old
schema is exactly what it must report, not repair.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack_pipeline.cli.common import EXIT_OK, EXIT_REFUSED, database_url, print_json, storage_settings

if TYPE_CHECKING:
    from autopack_pipeline.settings import StorageSettings

_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def gather_facts(database_url: str, settings: StorageSettings) -> dict[str, Any]:
    """Everything the checks need, from the settings (``DATABASE_URL`` as set, the telemetry flag) and
    the database ``database_url`` names (read-only)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from autopack_pipeline.domain.fast_metrics import clean_sample_rows, sample_groups, truncation_disagreements
    from autopack_pipeline.storage import spool
    from autopack_pipeline.storage.database import describe_database, make_engine, safe_error_text
    from autopack_pipeline.storage.events import read_events_checked
    from autopack_pipeline.storage.frames import event_arrays_from_frame
    from autopack_pipeline.storage.summary import count_total_token_fallbacks, database_summary
    from autopack_pipeline.storage.timestamps import unreadable_document

    env_url = settings.database_url
    engine = make_engine(database_url)
    identity = describe_database(engine)
    facts: dict[str, Any] = {
        "database": identity.to_dict(),
        "database_url_env": make_url(env_url).render_as_string(hide_password=True) if env_url else None,
        "telemetry_flag": settings.telemetry_flag,
        "telemetry_enabled": settings.telemetry_db_enabled,
        "file_exists": Path(identity.sqlite_path).exists() if identity.sqlite_path else None,
        "connect_error": None,
        "summary": None,
        "spooled_events": spool.pending_count(engine, settings.spool_dir),
    }
    if facts["file_exists"] is False:  # connecting would create an empty file and hide the problem
        return facts
    try:
        facts["summary"] = summary = database_summary(engine)
        if summary["events"]["total"]:
            events, unreadable = read_events_checked(engine)
            facts["unreadable_timestamps"] = unreadable_document(unreadable)
            arrays = event_arrays_from_frame(events)
            clean = clean_sample_rows(arrays)
            groups = sample_groups(arrays, clean.mask).counts()  # sorted by (category, complexity)
            facts["clean_samples"] = clean.count
            facts["group_counts"] = {f"{cat}/{cpx}": n for (cat, cpx), n in groups.items()}
            facts["flag_disagreements"] = truncation_disagreements(arrays)
            fallback_rows = count_total_token_fallbacks(engine)
            if fallback_rows is not None:  # the column is absent on an Autopack database not yet upgraded
                facts["fallback_rows"] = fallback_rows
    except SQLAlchemyError as exc:
        facts["connect_error"] = safe_error_text(exc)
    finally:
        engine.dispose()
    return facts


def cmd_doctor(args: argparse.Namespace) -> int:
    from autopack_pipeline.domain.doctor import FAIL, overall_status, run_checks

    facts = gather_facts(database_url(args), storage_settings(args))
    checks = run_checks(facts)
    status = overall_status(checks)
    if args.json:
        print_json({"database": facts["database"], "status": status, "checks": [c.to_dict() for c in checks]})
    else:
        print(f"Telemetry doctor for {facts['database']['url']}")
        for check in checks:
            print(f"{_MARKS[check.status]} {check.title}: {_show(check.observed)} (expected {check.threshold})")
            for line in check.advice:
                print(f"       - {line}")
        failed = sum(c.status == FAIL for c in checks)
        warned = sum(c.status == "warn" for c in checks)
        print(f"{len(checks)} checks: {failed} failed, {warned} warnings.")
    return EXIT_REFUSED if status == FAIL else EXIT_OK


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser(
        "doctor",
        help="run the Telemetry Guide's troubleshooting as checks",
        description="Check the telemetry database and environment the way the Telemetry Guide's "
        "troubleshooting section does; each finding has a status, the observed value, the threshold "
        "and what to do. Read-only: never creates or migrates the database. Exit 1 when a check fails.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_doctor)
