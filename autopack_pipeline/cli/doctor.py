"""`doctor`: the Telemetry Guide's troubleshooting section, run against the configured database.

Unlike other commands this one never creates or migrates the database: a missing file or an old
schema is exactly what it must report, not repair.
"""

from __future__ import annotations

import argparse
from typing import Any

from autopack_pipeline.cli.common import EXIT_OK, EXIT_REFUSED, database_url, print_json, storage_settings

_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def cmd_doctor(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.doctor import FAIL, WARN, run_doctor

    report = run_doctor(database_url(args), storage_settings(args))
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"Telemetry doctor for {report.database['url']}")
        for check in report.checks:
            print(f"{_MARKS[check.status]} {check.title}: {_show(check.observed)} (expected {check.threshold})")
            for line in check.advice:
                print(f"       - {line}")
        print(f"{len(report.checks)} checks: {report.count(FAIL)} failed, {report.count(WARN)} warnings.")
    return EXIT_REFUSED if report.failed else EXIT_OK


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
