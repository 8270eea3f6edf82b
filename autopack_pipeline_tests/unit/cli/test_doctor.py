"""`doctor`: each troubleshooting finding of the Telemetry Guide, as pure checks and as a command."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.cli import main
from autopack_pipeline.domain import doctor
from autopack_pipeline.storage.events import ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import current_revision
from autopack_pipeline_tests.unit.storage.test_autopack_upgrade import autopack_engine  # noqa: F401 - fixture

SQLITE = {"url": "sqlite:////data/autopack.db", "backend": "sqlite", "sqlite_path": "/data/autopack.db",
          "sqlite_mtime": "2025-12-29T22:28:12+00:00"}


def healthy_facts() -> dict[str, Any]:
    """Facts of a database that passes every check."""
    return {
        "database": dict(SQLITE),
        "database_url_env": "sqlite:////data/autopack.db",
        "telemetry_flag": "1",
        "telemetry_enabled": True,
        "file_exists": True,
        "connect_error": None,
        "summary": {
            "schema": {"revision": "0002", "head": "0002", "up_to_date": True},
            "row_counts": {"runs": 1, "phases": 30},
            "missing_tables": [],
            "is_empty": False,
            "phase_states": {"COMPLETE": 30, "TOTAL": 30},
            "events": {"total": 40, "success": 36, "truncated": 2, "success_pct": 90.0, "truncated_pct": 5.0},
        },
        "clean_samples": 30,
        "group_counts": {"implementation/low": 12, "tests/low": 10, "docs/low": 8},
        "flag_disagreements": 0,
        "fallback_rows": 0,
        "spooled_events": 0,
    }


def by_name(facts: dict[str, Any]) -> dict[str, doctor.Check]:
    return {check.name: check for check in doctor.run_checks(facts)}


def test_a_healthy_database_passes_every_check() -> None:
    checks = doctor.run_checks(healthy_facts())
    assert [c.name for c in checks] == [
        "database_identity", "schema", "empty_database", "events_collected", "success_samples", "truncation_rate",
        "clean_samples", "group_samples", "truncation_flags", "fallback_rows", "unreadable_timestamps",
        "unfinished_synthetic_runs", "spool"]
    assert {c.status for c in checks} == {"ok"} and doctor.overall_status(checks) == "ok"


def test_missing_sqlite_file_fails_and_stops_there() -> None:
    facts = healthy_facts() | {"file_exists": False, "database_url_env": None, "summary": None}
    checks = doctor.run_checks(facts)
    assert len(checks) == 1 and checks[0].status == "fail"
    assert "/data/autopack.db does not exist" in checks[0].observed
    assert any("DATABASE_URL is not set" in line for line in checks[0].advice)


def test_unreachable_database_fails_with_the_error() -> None:
    facts = healthy_facts() | {"connect_error": "OperationalError: connection refused", "summary": None}
    check = doctor.run_checks(facts)[0]
    assert check.status == "fail" and "connection refused" in check.observed
    assert any("DATABASE_URL is set to sqlite:////data/autopack.db" in line for line in check.advice)


def test_old_schema_fails_with_the_upgrade_command() -> None:
    facts = healthy_facts()
    facts["summary"]["schema"] = {"revision": None, "head": "0002", "up_to_date": False}
    check = by_name(facts)["schema"]
    assert check.status == "fail" and check.observed.startswith("no revision")
    assert "autopack-telemetry db upgrade" in check.advice[0]


def test_empty_database_warns_with_likely_causes() -> None:
    facts = healthy_facts()
    facts["summary"].update(is_empty=True, row_counts={"runs": 0, "phases": 0})
    check = by_name(facts)["empty_database"]
    assert check.status == "warn" and check.observed == {"runs": 0, "phases": 0}
    assert "DATABASE_URL" in check.advice[0] and "collect" in check.advice[1]


@pytest.mark.parametrize(
    ("flag", "enabled", "expected"),
    [(None, False, "is not set"), ("0", False, "which means off"), ("1", True, "(on)")],
)
def test_no_events_fails_with_the_guides_four_causes(flag, enabled, expected) -> None:
    facts = healthy_facts() | {"telemetry_flag": flag, "telemetry_enabled": enabled, "spooled_events": 3}
    facts["summary"]["events"] = {"total": 0, "success": 0, "truncated": 0, "success_pct": 0.0, "truncated_pct": 0.0}
    facts["summary"]["phase_states"] = {"FAILED": 4, "QUEUED": 6, "TOTAL": 10}
    checks = by_name(facts)
    check = checks["events_collected"]
    assert check.status == "fail" and check.observed == 0
    assert len(check.advice) == 4 and expected in check.advice[0] and "TELEMETRY_DB_ENABLED" in check.advice[0]
    assert "FAILED 4, QUEUED 6" in check.advice[1]
    assert "DATABASE_URL" in check.advice[2]
    assert "3 events wait in the spool" in check.advice[3]
    assert "success_samples" not in checks  # nothing to judge without events


def test_all_failures_fail() -> None:
    facts = healthy_facts()
    facts["summary"]["events"].update(success=0, success_pct=0.0)
    check = by_name(facts)["success_samples"]
    assert check.status == "fail" and check.observed.startswith("0 of 40")


@pytest.mark.parametrize(("pct", "status"), [(10.0, "ok"), (10.1, "warn"), (35.0, "warn")])
def test_truncation_above_ten_percent_warns(pct: float, status: str) -> None:
    facts = healthy_facts()
    facts["summary"]["events"]["truncated_pct"] = pct
    check = by_name(facts)["truncation_rate"]
    assert check.status == status and f"{pct:.1f}%" in check.observed
    if status == "warn":
        assert any("--success-only" in line for line in check.advice)


@pytest.mark.parametrize(("clean", "status"), [(19, "warn"), (20, "ok")])
def test_fewer_than_twenty_clean_samples_warn(clean: int, status: str) -> None:
    check = by_name(healthy_facts() | {"clean_samples": clean})["clean_samples"]
    assert check.status == status and check.observed == clean


def test_groups_below_five_samples_are_listed() -> None:
    facts = healthy_facts() | {"group_counts": {"implementation/low": 12, "docs/low": 3, "tests/medium": 4}}
    check = by_name(facts)["group_samples"]
    assert check.status == "warn"
    assert check.observed["below_minimum"] == {"docs/low": 3, "tests/medium": 4}


def test_data_quality_findings_warn() -> None:
    checks = by_name(healthy_facts() | {"flag_disagreements": 2, "fallback_rows": 5, "spooled_events": 7})
    assert (checks["truncation_flags"].status, checks["truncation_flags"].observed) == ("warn", 2)
    assert (checks["fallback_rows"].status, checks["fallback_rows"].observed) == ("warn", 5)
    assert checks["spool"].status == "warn" and "spool replay" in checks["spool"].advice[0]
    assert doctor.overall_status(list(checks.values())) == "warn"


def test_synthetic_runs_left_loading_warn_with_what_removes_them() -> None:
    check = by_name(healthy_facts() | {"unfinished_synthetic_runs": 3})["unfinished_synthetic_runs"]
    assert (check.status, check.observed) == ("warn", 3)
    assert "next `autopack-telemetry synth`" in check.advice[1]


def test_check_to_dict_is_json_ready() -> None:
    document = [c.to_dict() for c in doctor.run_checks(healthy_facts())]
    assert json.loads(json.dumps(document))[0]["status"] == "ok"
    assert set(document[0]) == {"name", "title", "status", "observed", "threshold", "advice"}


# The command, against real databases.

@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TELEMETRY_DB_ENABLED", raising=False)


def run_doctor(capsys, url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["--database-url", url, "doctor", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_doctor_on_a_missing_file_does_not_create_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "nowhere.db"
    code, document = run_doctor(capsys, f"sqlite:///{path}")
    assert code == 1 and document["status"] == "fail" and document["checks"][0]["name"] == "database_identity"
    assert not path.exists()


def test_doctor_on_a_healthy_database(seeded: Engine, make_event, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "1")
    for phase in range(25):
        ensure_run_and_phase(seeded, "run-1", f"ph-{phase}")
        assert record_estimation_event(seeded, make_event(phase_id=f"ph-{phase}"), respect_flag=False)
    code, document = run_doctor(capsys, seeded.url.render_as_string(hide_password=False))
    statuses = {c["name"]: c["status"] for c in document["checks"]}
    assert code == 0 and document["status"] == "ok", statuses
    assert {c["name"]: c["observed"] for c in document["checks"]}["clean_samples"] == 25


def test_doctor_finds_failures_truncation_and_data_quality_problems(seeded: Engine, make_event, capsys) -> None:
    events = [make_event(success=False, truncated=True, stop_reason="max_tokens", actual_output_tokens=8192)] * 3
    events += [make_event(success=False, actual_is_total_tokens=True)]
    for item in events:
        assert record_estimation_event(seeded, item, respect_flag=False)
    with seeded.begin() as connection:  # a row from before is_truncated_output existed
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET is_truncated_output = :no "
                                   "WHERE event_id = (SELECT MIN(event_id) FROM token_estimation_v2_events)"),
                           {"no": False})
    code, document = run_doctor(capsys, seeded.url.render_as_string(hide_password=False))
    checks = {c["name"]: c for c in document["checks"]}
    assert code == 1
    assert checks["success_samples"]["status"] == "fail"
    assert checks["truncation_rate"]["status"] == "warn" and checks["truncation_rate"]["observed"].startswith("75.0%")
    assert (checks["truncation_flags"]["status"], checks["truncation_flags"]["observed"]) == ("warn", 1)
    assert (checks["fallback_rows"]["status"], checks["fallback_rows"]["observed"]) == ("warn", 1)
    assert checks["clean_samples"]["observed"] == 0


def test_doctor_reports_an_autopack_database_without_migrating_it(autopack_engine: Engine, capsys) -> None:  # noqa: F811
    code, document = run_doctor(capsys, autopack_engine.url.render_as_string(hide_password=False))
    checks = {c["name"]: c for c in document["checks"]}
    assert code == 1 and checks["schema"]["status"] == "fail"
    assert checks["events_collected"]["observed"] == 3  # the data checks still run on Autopack's rows
    assert "fallback_rows" in checks and checks["fallback_rows"]["observed"] == 0
    assert current_revision(autopack_engine) is None  # read-only


def test_doctor_text_output_and_empty_database(engine: Engine, capsys) -> None:
    code = main(["--database-url", engine.url.render_as_string(hide_password=False), "doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[warn] Database has runs and phases" in out and "[FAIL] Telemetry events collected: 0" in out
    assert "TELEMETRY_DB_ENABLED is not set" in out and "checks: 1 failed, 1 warnings." in out


@pytest.mark.postgres
def test_doctor_on_an_unreachable_server_hides_the_password(capsys) -> None:
    code, document = run_doctor(capsys, "postgresql://bob:pa55-w0rd@127.0.0.1:1/nothing?connect_timeout=2")
    text = json.dumps(document)
    assert code == 1 and document["checks"][0]["status"] == "fail" and "pa55-w0rd" not in text
    assert "***" in document["database"]["url"]


def test_facts_are_not_mutated_by_the_checks() -> None:
    facts = healthy_facts()
    before = copy.deepcopy(facts)
    doctor.run_checks(facts)
    assert facts == before  # the checks are pure
