"""The estimation and escalation writers (Autopack's §8 writer tests, plus ours)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import (
    ensure_run_and_phase,
    estimation_metrics,
    record_escalation_event,
    record_estimation_event,
    telemetry_enabled,
)
from autopack_pipeline_tests.support.databases import PHASE_ID, RUN_ID, count_rows, fetch_all

EVENTS = "token_estimation_v2_events"
ESCALATIONS = "token_budget_escalation_events"


def only_event(engine: Engine) -> dict:
    rows = fetch_all(engine, EVENTS, "event_id")
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("Yes", True),
     ("0", False), ("false", False), ("no", False), ("", False), ("on", False)],
)
def test_telemetry_flag_values(value: str, enabled: bool) -> None:
    assert telemetry_enabled({"TELEMETRY_DB_ENABLED": value}) is enabled


def test_telemetry_flag_is_off_by_default() -> None:
    assert telemetry_enabled({}) is False


def test_flag_off_writes_nothing(seeded: Engine, make_event, telemetry_off) -> None:
    assert record_estimation_event(seeded, make_event()) is False
    assert count_rows(seeded, EVENTS) == 0


def test_respect_flag_false_writes_with_the_flag_off(seeded: Engine, make_event, telemetry_off) -> None:
    assert record_estimation_event(seeded, make_event(), respect_flag=False) is True
    assert count_rows(seeded, EVENTS) == 1


def test_overestimate_round_trips_with_autopack_metrics(seeded: Engine, make_event, telemetry_on) -> None:
    event = make_event(
        category="testing", complexity="low_complexity", predicted_output_tokens=1200, actual_output_tokens=800,
        stop_reason="end_turn", attempt=3, phase_completed=True,
    )
    assert record_estimation_event(seeded, event) is True
    row = only_event(seeded)
    assert row["smape_percent"] == pytest.approx(40.0)
    assert row["waste_ratio"] == pytest.approx(1.5)  # a ratio, not 150
    assert row["underestimated"] is False
    assert (row["category"], row["complexity"]) == ("tests", "low")  # canonical vocabulary (P7)
    assert (row["predicted_output_tokens"], row["actual_output_tokens"]) == (1200, 800)
    assert (row["selected_budget"], row["actual_max_tokens"]) == (8192, 16384)
    assert row["success"] is True and row["truncated"] is False and row["is_truncated_output"] is False
    assert (row["stop_reason"], row["model"], row["attempt"]) == ("end_turn", "claude-sonnet-4-5", 3)
    assert row["phase_completed"] is True and row["actual_is_total_tokens"] is False
    assert json.loads(row["deliverables_json"]) == ["src/example.py"] and row["deliverable_count"] == 1


def test_underestimate_metrics(seeded: Engine, make_event, telemetry_on) -> None:
    assert record_estimation_event(seeded, make_event(predicted_output_tokens=500, actual_output_tokens=700))
    row = only_event(seeded)
    assert round(row["smape_percent"], 2) == 33.33
    assert round(row["waste_ratio"], 3) == 0.714
    assert row["underestimated"] is True


def test_truncated_event_marks_both_truncation_columns(seeded: Engine, make_event, telemetry_on) -> None:
    event = make_event(truncated=True, stop_reason="max_tokens", success=False, actual_output_tokens=8192)
    assert record_estimation_event(seeded, event)
    row = only_event(seeded)
    assert row["truncated"] is True and row["is_truncated_output"] is True and row["success"] is False


def test_metrics_are_null_unless_both_counts_are_positive() -> None:
    assert estimation_metrics(0, 700) == (None, None, None)
    assert estimation_metrics(500, 0) == (None, None, None)


def test_deliverables_are_capped_at_20_but_counted_in_full(seeded: Engine, make_event, telemetry_on) -> None:
    deliverables = [f"src/module_{i:02d}.py" for i in range(26)]
    assert record_estimation_event(seeded, make_event(deliverables=deliverables))
    row = only_event(seeded)
    assert json.loads(row["deliverables_json"]) == deliverables[:20]
    assert row["deliverable_count"] == 26


def test_long_deliverable_is_cut_to_200_characters(seeded: Engine, make_event, telemetry_on) -> None:
    long_one, exact = "d" * 250, "e" * 200
    assert record_estimation_event(seeded, make_event(deliverables=[long_one, exact]))
    stored = json.loads(only_event(seeded)["deliverables_json"])
    assert stored[0] == "d" * 197 + "..." and len(stored[0]) == 200
    assert stored[1] == exact


def test_output_below_50_tokens_is_skipped_with_a_warning(
    seeded: Engine, make_event, telemetry_on, caplog: pytest.LogCaptureFixture
) -> None:
    assert record_estimation_event(seeded, make_event(actual_output_tokens=41)) is False
    assert count_rows(seeded, EVENTS) == 0
    assert "Skipping invalid event" in caplog.text
    assert record_estimation_event(seeded, make_event(actual_output_tokens=50)) is True


def test_maintenance_event_with_foreign_keys_enforced(
    seeded: Engine, make_event, telemetry_on, backend: str
) -> None:
    if backend == "sqlite":
        with seeded.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    # Without a phases row the composite FK refuses the event (and the writer reports False).
    assert record_estimation_event(seeded, make_event(phase_id="no-such-phase")) is False
    assert count_rows(seeded, EVENTS) == 0
    event = make_event(complexity="maintenance", predicted_output_tokens=250, actual_output_tokens=100)
    assert record_estimation_event(seeded, event) is True
    row = only_event(seeded)
    assert row["complexity"] == "maintenance"
    assert row["waste_ratio"] == pytest.approx(2.5)
    assert row["smape_percent"] == pytest.approx(85.714, abs=1e-3)


def test_broken_engine_raises_nothing_and_returns_false(
    tmp_path: Path, make_event, telemetry_on, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    try:
        assert record_estimation_event(unreachable, make_event()) is False
    finally:
        unreachable.dispose()
    assert record_estimation_event(None, make_event()) is False  # type: ignore[arg-type]
    assert "Failed to write DB telemetry" in caplog.text


def test_unmigrated_database_returns_false(blank_engine: Engine, make_event, telemetry_on) -> None:
    assert record_estimation_event(blank_engine, make_event()) is False
    assert not sa.inspect(blank_engine).has_table(EVENTS)


@pytest.mark.postgres
def test_failed_postgres_connection_never_logs_the_password(
    make_event, telemetry_on, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 1 refuses connections immediately; the URL carries a password that must stay secret.
    engine = make_engine("postgresql://bob:pa55-w0rd@127.0.0.1:1/nothing?connect_timeout=2")
    try:
        assert record_estimation_event(engine, make_event()) is False
        assert record_escalation_event(
            engine, run_id="r", phase_id="p", attempt_index=1, reason="truncation", was_truncated=True,
            output_utilization=100.0, escalation_factor=1.25, base_value=1, base_source="tokens_used",
            retry_max_tokens=1, selected_budget=None, actual_max_tokens=None, tokens_used=None,
        ) is False
    finally:
        engine.dispose()
    assert "Failed to write DB telemetry" in caplog.text
    assert "pa55-w0rd" not in caplog.text


def test_event_uid_makes_replays_idempotent(seeded: Engine, make_event, telemetry_on) -> None:
    first = make_event(event_uid="collection-run-1/phase-1/1", actual_output_tokens=800)
    assert record_estimation_event(seeded, first) is True
    replay = make_event(event_uid="collection-run-1/phase-1/1", actual_output_tokens=999)
    assert record_estimation_event(seeded, replay) is True  # already stored counts as success
    row = only_event(seeded)
    assert row["actual_output_tokens"] == 800  # the replay did not overwrite the original


def test_event_uid_is_generated_when_missing(seeded: Engine, make_event, telemetry_on) -> None:
    assert record_estimation_event(seeded, make_event())
    assert record_estimation_event(seeded, make_event())
    uids = [row["event_uid"] for row in fetch_all(seeded, EVENTS, "event_id")]
    assert len(set(uids)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", uid) for uid in uids)


def test_writer_accepts_a_plain_mapping(seeded: Engine, make_event, telemetry_on) -> None:
    payload = make_event(actual_is_total_tokens=True).model_dump()
    assert record_estimation_event(seeded, payload) is True
    assert only_event(seeded)["actual_is_total_tokens"] is True


ESCALATION = {
    "run_id": RUN_ID,
    "phase_id": PHASE_ID,
    "attempt_index": 2,
    "reason": "utilization",
    "was_truncated": False,
    "output_utilization": 96.5,
    "escalation_factor": 1.25,
    "base_value": 16384,
    "base_source": "actual_max_tokens",
    "retry_max_tokens": 20480,
    "selected_budget": 8192,
    "actual_max_tokens": 16384,
    "tokens_used": 15811,
}


def test_escalation_event_is_persisted_with_every_field(seeded: Engine) -> None:
    assert record_escalation_event(seeded, **ESCALATION) is True
    rows = fetch_all(seeded, ESCALATIONS, "event_id")
    assert len(rows) == 1
    row = rows[0]
    assert {key: row[key] for key in ESCALATION} == ESCALATION
    assert row["timestamp"] is not None and row["event_id"] >= 1


def test_escalation_respects_the_flag_only_when_asked(seeded: Engine, telemetry_off) -> None:
    assert record_escalation_event(seeded, **ESCALATION, respect_flag=True) is False
    assert count_rows(seeded, ESCALATIONS) == 0
    assert record_escalation_event(seeded, **ESCALATION) is True
    assert count_rows(seeded, ESCALATIONS) == 1


def test_escalation_for_unknown_phase_returns_false(seeded: Engine) -> None:
    assert record_escalation_event(seeded, **{**ESCALATION, "phase_id": "ghost"}) is False
    assert count_rows(seeded, ESCALATIONS) == 0


def test_ensure_run_and_phase_is_idempotent_and_keeps_existing_rows(engine: Engine) -> None:
    first = ensure_run_and_phase(engine, "r", "p1", category="tests", complexity="low")
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE phases SET state = 'COMPLETE' WHERE phase_id = 'p1'")
    assert ensure_run_and_phase(engine, "r", "p1") == first
    second = ensure_run_and_phase(engine, "r", "p2")
    assert second != first
    phases = fetch_all(engine, "phases", "id")
    assert [(p["phase_id"], p["phase_index"], p["state"]) for p in phases] == [("p1", 0, "COMPLETE"), ("p2", 1, "QUEUED")]
    assert phases[0]["task_category"] == "tests" and phases[0]["tier_id"] == phases[1]["tier_id"]
    assert count_rows(engine, "runs") == 1 and count_rows(engine, "tiers") == 1


def test_ensure_run_and_phase_inside_a_caller_session(engine: Engine) -> None:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        ensure_run_and_phase(session, "r", "p")
        session.rollback()  # the caller owns the transaction: nothing is committed behind its back
    assert count_rows(engine, "runs") == 0
    with Session(engine) as session:
        ensure_run_and_phase(session, "r", "p")
        session.commit()
    assert count_rows(engine, "phases") == 1


def test_deleting_a_run_cascades_to_its_events(seeded: Engine, make_event, telemetry_on) -> None:
    ensure_run_and_phase(seeded, "other-run", PHASE_ID)  # same phase_id in another run
    assert record_estimation_event(seeded, make_event())
    assert record_estimation_event(seeded, make_event(run_id="other-run"))
    assert record_escalation_event(seeded, **ESCALATION)
    with seeded.begin() as connection:
        connection.execute(sa.text("DELETE FROM runs WHERE id = :run"), {"run": RUN_ID})
    events = fetch_all(seeded, EVENTS, "event_id")
    assert [row["run_id"] for row in events] == ["other-run"]
    assert count_rows(seeded, ESCALATIONS) == 0
    assert [row["run_id"] for row in fetch_all(seeded, "phases", "id")] == ["other-run"]


def test_warning_log_for_write_failures_is_at_warning_level(
    blank_engine: Engine, make_event, telemetry_on, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="autopack_pipeline.storage.events")
    record_estimation_event(blank_engine, make_event())
    failures = [r for r in caplog.records if "Failed to write DB telemetry" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
