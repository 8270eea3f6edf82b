"""read_events, generated tasks, and the db-check summary."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.events import ensure_run_and_phase, read_events, record_estimation_event
from autopack_pipeline.storage.frames import EVENT_COLUMNS
from autopack_pipeline.storage.summary import database_summary
from autopack_pipeline.storage.tasks import list_generated_tasks, save_generated_tasks
from autopack_pipeline_tests.support.databases import PHASE_ID, RUN_ID, fetch_all

WHEN = datetime(2025, 12, 29, 12, 0, tzinfo=timezone.utc)


def _write(engine: Engine, make_event, **fields) -> None:
    assert record_estimation_event(engine, make_event(**fields), respect_flag=False)


def test_read_events_has_the_domain_shape(seeded: Engine, make_event) -> None:
    ensure_run_and_phase(seeded, "run-2", "phase-9")
    _write(seeded, make_event, attempt=1, timestamp=WHEN, truncated=True, stop_reason="max_tokens")
    _write(seeded, make_event, run_id="run-2", phase_id="phase-9", category="documentation",
           timestamp=WHEN + timedelta(hours=1))
    frame = read_events(seeded)
    assert list(frame.columns) == list(EVENT_COLUMNS)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EVENT_COLUMNS
    assert list(frame["run_id"]) == [RUN_ID, "run-2"]
    assert list(frame["category"]) == ["implementation", "docs"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp(WHEN)
    assert frame["attempt"].iloc[0] == 1 and pd.isna(frame["attempt"].iloc[1])
    assert list(frame["truncated"]) == [True, False]
    assert list(frame["actual_max_tokens"]) == [16384, 16384]


def test_read_events_filters_by_run(seeded: Engine, make_event) -> None:
    ensure_run_and_phase(seeded, "run-2", PHASE_ID)
    _write(seeded, make_event)
    _write(seeded, make_event, run_id="run-2")
    assert list(read_events(seeded, run_ids=["run-2"])["run_id"]) == ["run-2"]
    assert read_events(seeded, run_ids=[]).empty
    assert len(read_events(seeded)) == 2


def test_read_events_on_an_empty_database(engine: Engine) -> None:
    frame = read_events(engine)
    assert frame.empty
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EVENT_COLUMNS


def test_read_events_on_a_database_without_the_table(blank_engine: Engine) -> None:
    assert not sa.inspect(blank_engine).has_table("token_estimation_v2_events")
    frame = read_events(blank_engine)
    assert frame.empty
    assert list(frame.columns) == list(EVENT_COLUMNS)


def _task(task_id: str, **fields) -> dict:
    return {"task_id": task_id, "title": f"Task {task_id}", **fields}


def test_save_generated_tasks_inserts_new_and_leaves_existing_alone(engine: Engine) -> None:
    first = [
        _task("T-1", priority="low", fingerprint="f" * 64, evidence={"group": ["tests", "low"], "n": 7},
              suggested_files=["seeds/coefficients.yaml"], confidence=0.82, requires_approval=True,
              estimated_cost=30000, kind="collect_samples"),
        _task("T-2", priority="critical"),
    ]
    assert save_generated_tasks(engine, first) == 2
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE generated_tasks SET status = 'in_progress', retry_count = 1 WHERE task_id = 'T-1'")

    again = [_task("T-1", title="changed", status="pending"), _task("T-3", priority="high")]
    assert save_generated_tasks(engine, again) == 1
    tasks = {task["task_id"]: task for task in list_generated_tasks(engine)}
    assert set(tasks) == {"T-1", "T-2", "T-3"}
    kept = tasks["T-1"]
    assert (kept["title"], kept["status"], kept["retry_count"]) == ("Task T-1", "in_progress", 1)
    assert kept["evidence"] == {"group": ["tests", "low"], "n": 7}
    assert kept["suggested_files"] == ["seeds/coefficients.yaml"]
    assert (kept["confidence"], kept["requires_approval"], kept["estimated_cost"]) == (0.82, True, 30000)
    assert tasks["T-3"]["status"] == "pending" and tasks["T-3"]["failure_runs"] == []
    json.dumps(list_generated_tasks(engine))  # JSON-ready as returned


def test_list_generated_tasks_orders_by_priority_then_age_and_filters(engine: Engine) -> None:
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    save_generated_tasks(engine, [
        _task("old-medium", priority="medium", created_at=base),
        _task("new-critical", priority="critical", created_at=base + timedelta(days=2)),
        _task("old-critical", priority="critical", created_at=base + timedelta(days=1)),
        _task("done", priority="high", status="completed", created_at=base),
    ])
    ordered = [task["task_id"] for task in list_generated_tasks(engine)]
    assert ordered == ["old-critical", "new-critical", "done", "old-medium"]
    assert [task["task_id"] for task in list_generated_tasks(engine, status="completed")] == ["done"]
    assert list_generated_tasks(engine)[0]["created_at"] == "2025-01-02T00:00:00+00:00"


def test_save_generated_tasks_rejects_unknown_keys_before_writing(engine: Engine) -> None:
    with pytest.raises(ValueError, match="priorty"):
        save_generated_tasks(engine, [_task("ok"), _task("typo", priorty="high")])
    assert list_generated_tasks(engine) == []
    with pytest.raises(ValueError, match="task_id and a title"):
        save_generated_tasks(engine, [{"task_id": "no-title"}])
    with pytest.raises(ValueError, match="at most 50 characters"):
        save_generated_tasks(engine, [_task("x" * 51)])
    assert save_generated_tasks(engine, [_task("x" * 50)]) == 1


def test_database_summary_counts(seeded: Engine, make_event) -> None:
    ensure_run_and_phase(seeded, RUN_ID, "phase-2", phase_state="COMPLETE")
    ensure_run_and_phase(seeded, RUN_ID, "phase-3", phase_state="COMPLETE")
    _write(seeded, make_event, category="testing", complexity="low")
    _write(seeded, make_event, category="tests", complexity="medium", success=False)
    _write(seeded, make_event, phase_id="phase-2", category="docs", complexity="low", truncated=True)
    _write(seeded, make_event, phase_id="phase-3", category="documentation", complexity="high", success=False,
           truncated=True)
    summary = database_summary(seeded)
    json.dumps(summary)
    assert summary["row_counts"]["token_estimation_v2_events"] == 4
    assert summary["row_counts"]["phases"] == 3 and summary["row_counts"]["runs"] == 1
    assert summary["missing_tables"] == [] and summary["is_empty"] is False
    assert summary["schema"] == {"revision": "0004", "head": "0004", "up_to_date": True}
    assert summary["phase_states"] == {"COMPLETE": 2, "QUEUED": 1, "TOTAL": 3}
    assert summary["events"] == {
        "total": 4, "success": 2, "truncated": 2, "success_pct": 50.0, "truncated_pct": 50.0,
        "by_category": {"docs": 2, "tests": 2}, "success_by_category": {"docs": 1, "tests": 1},
        "by_complexity": {"high": 1, "low": 2, "medium": 1}, "success_by_complexity": {"low": 2},
    }
    assert summary["escalations"] == 0
    assert summary["database"]["backend"] in {"sqlite", "postgresql"}


def test_database_summary_of_an_empty_unmigrated_database(blank_engine: Engine) -> None:
    summary = database_summary(blank_engine)
    assert summary["row_counts"] == {}
    assert summary["missing_tables"][0] == "runs" and len(summary["missing_tables"]) == 8
    assert summary["is_empty"] is True
    assert summary["schema"]["revision"] is None and summary["schema"]["up_to_date"] is False
    assert summary["events"]["total"] == 0 and summary["phase_states"] == {"TOTAL": 0}


def test_timestamps_are_stored_as_utc(seeded: Engine, make_event) -> None:
    plus_two = timezone(timedelta(hours=2))
    _write(seeded, make_event, timestamp=datetime(2025, 6, 1, 14, 0, tzinfo=plus_two))
    stored = fetch_all(seeded, "token_estimation_v2_events", "event_id")[0]["timestamp"]
    assert stored == datetime(2025, 6, 1, 12, 0)
    assert read_events(seeded)["timestamp"].iloc[0] == pd.Timestamp("2025-06-01T12:00:00Z")
