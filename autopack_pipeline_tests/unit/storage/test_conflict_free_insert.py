"""``insert_ignoring_conflicts``: one row, written once, with the values SQLAlchemy's own insert would store
(column types' conversions and Python-side defaults), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from autopack_pipeline.storage import database
from autopack_pipeline.storage.database import insert_ignoring_conflicts
from autopack_pipeline.storage.events import ensure_run_and_phase
from autopack_pipeline.storage.models import Base

RUNS = Base.metadata.tables["runs"]
EVENTS = Base.metadata.tables["token_estimation_v2_events"]


def _event_row(uid: str, run_id: str) -> dict:
    return {"run_id": run_id, "phase_id": "p-1", "timestamp": datetime(2026, 12, 7, 10, 30, 15, 250_000),
            "category": "implementation", "complexity": "low", "deliverable_count": 1,
            "deliverables_json": '["src/a.py"]', "predicted_output_tokens": 1200, "actual_output_tokens": 900,
            "selected_budget": 8192, "actual_max_tokens": 8192, "success": True, "truncated": False,
            "model": "claude-sonnet-4-5", "underestimated": None, "is_truncated_output": False,
            "created_at": datetime(2026, 12, 7, 10, 30, 16), "event_uid": uid}


def _stored(connection, uid: str) -> dict:
    row = connection.execute(sa.select(EVENTS).where(EVENTS.c.event_uid == uid)).mappings().one()
    return {k: v for k, v in row.items() if k != "event_id"}


def test_a_row_is_inserted_once_and_reads_back_as_sqlalchemys_insert_stores_it(engine):
    ensure_run_and_phase(engine, "run-a", "p-1", category="implementation", complexity="low")
    with engine.begin() as connection:
        assert insert_ignoring_conflicts(connection, EVENTS, _event_row("uid-ours", "run-a"), ["event_uid"]) == 1
        assert insert_ignoring_conflicts(connection, EVENTS, _event_row("uid-ours", "run-a"), ["event_uid"]) == 0
        connection.execute(sa.insert(EVENTS).values(**_event_row("uid-orm", "run-a")))
        ours, theirs = _stored(connection, "uid-ours"), _stored(connection, "uid-orm")
        assert {**ours, "event_uid": None} == {**theirs, "event_uid": None}
        assert ours["success"] is True and ours["timestamp"] == datetime(2026, 12, 7, 10, 30, 15, 250_000)
        assert connection.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar_one() == 2
        if engine.dialect.name == "sqlite":  # the very text SQLite holds: the DateTime type's own format
            texts = connection.exec_driver_sql(
                "SELECT timestamp, success FROM token_estimation_v2_events ORDER BY event_uid").all()
            assert texts[0] == texts[1]


def test_columns_left_out_get_their_python_side_defaults(engine):
    with engine.begin() as connection:
        before = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        assert insert_ignoring_conflicts(connection, RUNS, {"id": "run-defaults"}, ["id"]) == 1
        run = connection.execute(sa.select(RUNS).where(RUNS.c.id == "run-defaults")).mappings().one()
    assert run["state"] == "RUN_CREATED" and run["token_cap"] == 5_000_000 and run["max_phases"] == 25
    assert run["created_at"] >= before


def test_the_statement_is_made_once_per_table_and_columns(engine):
    made = database._one_row_conflict_free_insert
    made.cache_clear()
    with engine.begin() as connection:
        for run in ("run-1", "run-2", "run-3"):
            insert_ignoring_conflicts(connection, RUNS, {"id": run}, ["id"])
    assert (made.cache_info().misses, made.cache_info().hits) == (1, 2)


def test_a_default_that_needs_sqlalchemys_context_goes_through_its_insert(tmp_path):
    metadata = sa.MetaData()
    table = sa.Table("notes", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("key", sa.String, unique=True, nullable=False),
                     sa.Column("echo", sa.String, default=lambda context: context.current_parameters["key"] * 2))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'notes.db'}")
    metadata.create_all(engine)
    with engine.begin() as connection:
        assert insert_ignoring_conflicts(connection, table, {"key": "ab"}, ["key"]) == 1
        assert insert_ignoring_conflicts(connection, table, {"key": "ab"}, ["key"]) == 0
        assert connection.execute(sa.select(table.c.echo)).scalar_one() == "abab"
    engine.dispose()
