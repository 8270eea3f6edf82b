"""An existing Autopack database (tables and rows, no alembic_version) upgraded in place.

The schema below is written by hand the way Autopack's SQLAlchemy models create it, in an older
vintage: ``token_estimation_v2_events`` without ``actual_max_tokens`` (added later by a script),
``phases`` without ``phase_type``, no ``phase_outcome_events`` table at all, and on PostgreSQL the
native enum types Autopack's ``Enum`` columns produce there.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.events import ensure_run_and_phase, read_events, record_estimation_event
from autopack_pipeline.storage.migrate import current_revision, upgrade_database
from autopack_pipeline.storage.summary import database_summary
from autopack_pipeline_tests.storage.conftest import count_rows, fetch_all

RUN_STATES = ("QUEUED", "RUN_CREATED", "PHASE_EXECUTION", "DONE_SUCCESS", "DONE_FAILED_ENVIRONMENT")
TIER_STATES = ("PENDING", "IN_PROGRESS", "COMPLETE", "FAILED", "SKIPPED")
PHASE_STATES = ("QUEUED", "EXECUTING", "GATE", "CI_RUNNING", "COMPLETE", "FAILED", "SKIPPED")


def autopack_ddl(backend: str) -> list[str]:
    """CREATE statements for an Autopack-built database on ``backend``."""
    pg = backend == "postgresql"
    ts = "TIMESTAMP WITHOUT TIME ZONE" if pg else "DATETIME"
    serial = "SERIAL" if pg else "INTEGER"

    def enum(name: str, values: tuple[str, ...]) -> str:
        return name if pg else f"VARCHAR({max(map(len, values))})"

    statements: list[str] = []
    if pg:
        for name, values in (("runstate", RUN_STATES), ("tierstate", TIER_STATES), ("phasestate", PHASE_STATES)):
            statements.append(f"CREATE TYPE {name} AS ENUM ({', '.join(repr(v) for v in values)})")
    counters = "minor_issues_count INTEGER NOT NULL, major_issues_count INTEGER NOT NULL"
    stamps = f"created_at {ts} NOT NULL, updated_at {ts} NOT NULL, started_at {ts}, completed_at {ts}"
    statements += [
        f"""CREATE TABLE runs (
            id VARCHAR NOT NULL, state {enum('runstate', RUN_STATES)} NOT NULL, {stamps},
            safety_profile VARCHAR NOT NULL, run_scope VARCHAR NOT NULL, token_cap INTEGER NOT NULL,
            max_phases INTEGER NOT NULL, max_duration_minutes INTEGER NOT NULL, max_minor_issues_total INTEGER,
            tokens_used INTEGER NOT NULL, ci_runs_used INTEGER NOT NULL, {counters},
            promotion_eligible_to_main VARCHAR NOT NULL, debt_status VARCHAR, failure_reason TEXT,
            goal_anchor TEXT, PRIMARY KEY (id))""",
        "CREATE INDEX ix_runs_id ON runs (id)",
        "CREATE INDEX ix_runs_state_created ON runs (state, created_at)",
        f"""CREATE TABLE tiers (
            id {serial} NOT NULL, tier_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, tier_index INTEGER NOT NULL,
            name VARCHAR NOT NULL, description TEXT, state {enum('tierstate', TIER_STATES)} NOT NULL,
            token_cap INTEGER, ci_run_cap INTEGER, max_minor_issues_tolerated INTEGER,
            max_major_issues_tolerated INTEGER NOT NULL, tokens_used INTEGER NOT NULL,
            ci_runs_used INTEGER NOT NULL, {counters}, cleanliness VARCHAR NOT NULL, {stamps},
            PRIMARY KEY (id), FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE)""",
        f"""CREATE TABLE phases (
            id {serial} NOT NULL, phase_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, tier_id INTEGER NOT NULL,
            phase_index INTEGER NOT NULL, name VARCHAR NOT NULL, description TEXT,
            state {enum('phasestate', PHASE_STATES)} NOT NULL, task_category VARCHAR, complexity VARCHAR,
            builder_mode VARCHAR, scope JSON, max_builder_attempts INTEGER, max_auditor_attempts INTEGER,
            incident_token_cap INTEGER, builder_attempts INTEGER NOT NULL, auditor_attempts INTEGER NOT NULL,
            tokens_used INTEGER NOT NULL, {counters}, issue_state VARCHAR NOT NULL, quality_level VARCHAR,
            quality_blocked BOOLEAN NOT NULL, retry_attempt INTEGER NOT NULL, revision_epoch INTEGER NOT NULL,
            escalation_level INTEGER NOT NULL, last_attempt_timestamp {ts}, last_failure_reason VARCHAR, {stamps},
            PRIMARY KEY (id), CONSTRAINT uq_phases_run_id_phase_id UNIQUE (run_id, phase_id),
            FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE, FOREIGN KEY(tier_id) REFERENCES tiers (id))""",
        "CREATE INDEX ix_phases_phase_id ON phases (phase_id)",
        f"""CREATE TABLE token_estimation_v2_events (
            event_id {serial} NOT NULL, run_id VARCHAR NOT NULL, phase_id VARCHAR NOT NULL, timestamp {ts} NOT NULL,
            category VARCHAR NOT NULL, complexity VARCHAR NOT NULL, deliverable_count INTEGER NOT NULL,
            deliverables_json TEXT NOT NULL, predicted_output_tokens INTEGER NOT NULL,
            actual_output_tokens INTEGER NOT NULL, selected_budget INTEGER NOT NULL, success BOOLEAN NOT NULL,
            truncated BOOLEAN NOT NULL, stop_reason VARCHAR, model VARCHAR NOT NULL, smape_percent FLOAT,
            waste_ratio FLOAT, underestimated BOOLEAN, is_truncated_output BOOLEAN NOT NULL,
            api_reference_required BOOLEAN, examples_required BOOLEAN, research_required BOOLEAN,
            usage_guide_required BOOLEAN, context_quality VARCHAR, is_sot_file BOOLEAN, sot_file_name VARCHAR,
            sot_entry_count_hint INTEGER, created_at {ts} NOT NULL, PRIMARY KEY (event_id),
            CONSTRAINT fk_token_est_v2_run_phase FOREIGN KEY(run_id, phase_id)
                REFERENCES phases (run_id, phase_id) ON DELETE CASCADE,
            FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE)""",
        "CREATE INDEX ix_telemetry_run_category ON token_estimation_v2_events (run_id, category)",
        f"""CREATE TABLE token_budget_escalation_events (
            event_id {serial} NOT NULL, run_id VARCHAR NOT NULL, phase_id VARCHAR NOT NULL, timestamp {ts} NOT NULL,
            attempt_index INTEGER NOT NULL, reason VARCHAR NOT NULL, was_truncated BOOLEAN NOT NULL,
            output_utilization FLOAT, escalation_factor FLOAT NOT NULL, base_value INTEGER NOT NULL,
            base_source VARCHAR NOT NULL, retry_max_tokens INTEGER NOT NULL, selected_budget INTEGER,
            actual_max_tokens INTEGER, tokens_used INTEGER, PRIMARY KEY (event_id),
            CONSTRAINT fk_token_budget_escalation_run_phase FOREIGN KEY(run_id, phase_id)
                REFERENCES phases (run_id, phase_id) ON DELETE CASCADE,
            FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE)""",
        f"""CREATE TABLE generated_tasks (
            id {serial} NOT NULL, task_id VARCHAR(50) NOT NULL, title VARCHAR(255) NOT NULL, description TEXT,
            priority VARCHAR(20) NOT NULL, source_insights JSON, suggested_files JSON,
            estimated_effort VARCHAR(10), created_at {ts} NOT NULL, status VARCHAR(20) NOT NULL,
            run_id VARCHAR(50), completed_at {ts}, executed_in_run_id VARCHAR(50), updated_at {ts},
            failure_reason TEXT, retry_count INTEGER NOT NULL, max_retries INTEGER NOT NULL, failure_runs JSON,
            PRIMARY KEY (id))""",
        "CREATE UNIQUE INDEX ix_generated_tasks_task_id ON generated_tasks (task_id)",
    ]
    return statements


ORIGINAL_TABLES = {
    "runs": "id",
    "tiers": "id",
    "phases": "id",
    "token_estimation_v2_events": "event_id",
    "token_budget_escalation_events": "event_id",
    "generated_tasks": "id",
}
T0 = datetime(2025, 12, 29, 22, 28, 12)


def autopack_rows(connection: sa.Connection) -> None:
    """Rows as Autopack writes them (enum names in the state columns)."""
    stamps = {"created_at": T0, "updated_at": T0}
    counters = {"minor_issues_count": 0, "major_issues_count": 0, "tokens_used": 0, "ci_runs_used": 0}
    run = sa.text(
        "INSERT INTO runs (id, state, created_at, updated_at, safety_profile, run_scope, token_cap, max_phases,"
        " max_duration_minutes, tokens_used, ci_runs_used, minor_issues_count, major_issues_count,"
        " promotion_eligible_to_main) VALUES (:id, :state, :created_at, :updated_at, 'normal', 'multi_tier',"
        " 500000, 15, 120, :tokens_used, :ci_runs_used, :minor_issues_count, :major_issues_count, 'false')"
    )
    connection.execute(run, {"id": "telemetry-collection-v4", "state": "RUN_CREATED", **stamps, **counters})
    tier = sa.text(
        "INSERT INTO tiers (tier_id, run_id, tier_index, name, state, token_cap, ci_run_cap,"
        " max_major_issues_tolerated, tokens_used, ci_runs_used, minor_issues_count, major_issues_count,"
        " cleanliness, created_at, updated_at) VALUES ('T1', 'telemetry-collection-v4', 0,"
        " 'Telemetry Collection Tier', 'PENDING', 500000, 20, 0, :tokens_used, :ci_runs_used,"
        " :minor_issues_count, :major_issues_count, 'clean', :created_at, :updated_at)"
    )
    connection.execute(tier, {**stamps, **counters})
    tier_pk = connection.execute(sa.text("SELECT id FROM tiers")).scalar_one()
    phase = sa.text(
        "INSERT INTO phases (phase_id, run_id, tier_id, phase_index, name, state, task_category, complexity,"
        " scope, max_builder_attempts, builder_attempts, auditor_attempts, tokens_used, minor_issues_count,"
        " major_issues_count, issue_state, quality_blocked, retry_attempt, revision_epoch, escalation_level,"
        " created_at, updated_at) VALUES (:phase_id, 'telemetry-collection-v4', :tier, :index, :phase_id, :state,"
        " :category, :complexity, :scope, 3, 0, 0, 0, 0, 0, 'no_issues', :no, 0, 0, 0, :created_at, :updated_at)"
    )
    for index, (phase_id, state, category, complexity) in enumerate(
        [("telemetry-p1-string-util", "COMPLETE", "implementation", "low"),
         ("telemetry-p6-string-tests", "FAILED", "tests", "medium"),
         ("telemetry-p9-readme", "QUEUED", "docs", "low")]
    ):
        connection.execute(phase, {"phase_id": phase_id, "tier": tier_pk, "index": index, "state": state,
                                   "category": category, "complexity": complexity, "no": False,
                                   "scope": '{"paths": ["examples/telemetry_utils/"]}', **stamps})
    event = sa.text(
        "INSERT INTO token_estimation_v2_events (run_id, phase_id, timestamp, category, complexity,"
        " deliverable_count, deliverables_json, predicted_output_tokens, actual_output_tokens, selected_budget,"
        " success, truncated, stop_reason, model, smape_percent, waste_ratio, underestimated,"
        " is_truncated_output, created_at) VALUES ('telemetry-collection-v4', :phase, :ts, :category, :complexity,"
        " 1, :deliverables, :p, :a, :budget, :success, :truncated, :stop, 'claude-sonnet-4-5', :smape, :waste,"
        " :under, :truncated, :ts)"
    )
    for phase_id, category, complexity, p, a, success, truncated in [
        ("telemetry-p1-string-util", "implementation", "low", 3424, 2900, True, False),
        ("telemetry-p6-string-tests", "testing", "medium", 4420, 6144, False, True),
        ("telemetry-p9-readme", "documentation", "low", 2600, 1800, True, False),
    ]:
        connection.execute(event, {
            "phase": phase_id, "ts": T0, "category": category, "complexity": complexity,
            "deliverables": '["examples/telemetry_utils/x.py"]', "p": p, "a": a, "budget": 8192,
            "success": success, "truncated": truncated, "stop": "max_tokens" if truncated else "end_turn",
            "smape": abs(a - p) / ((a + p) / 2) * 100, "waste": p / a, "under": a > p,
        })
    connection.execute(sa.text(
        "INSERT INTO token_budget_escalation_events (run_id, phase_id, timestamp, attempt_index, reason,"
        " was_truncated, output_utilization, escalation_factor, base_value, base_source, retry_max_tokens,"
        " selected_budget, actual_max_tokens, tokens_used) VALUES ('telemetry-collection-v4',"
        " 'telemetry-p6-string-tests', :ts, 1, 'truncation', :yes, 100.0, 1.25, 8192, 'selected_budget',"
        " 10240, 8192, 8192, 6144)"
    ), {"ts": T0, "yes": True})
    connection.execute(sa.text(
        "INSERT INTO generated_tasks (task_id, title, priority, created_at, status, retry_count, max_retries,"
        " failure_runs) VALUES ('TASK-0A1B2C3D', 'Fix recurring cost_sink issues', 'high', :ts, 'in_progress',"
        " 1, 3, :runs)"
    ), {"ts": T0, "runs": '["run-a"]'})


@pytest.fixture
def autopack_engine(blank_engine: Engine, backend: str) -> Engine:
    with blank_engine.begin() as connection:
        for statement in autopack_ddl(backend):
            connection.exec_driver_sql(statement)
        autopack_rows(connection)
    return blank_engine


def test_autopack_database_reads_before_any_migration(autopack_engine: Engine) -> None:
    assert current_revision(autopack_engine) is None
    frame = read_events(autopack_engine)
    assert len(frame) == 3
    assert frame["actual_max_tokens"].isna().all() and frame["attempt"].isna().all()
    assert list(frame["actual_output_tokens"]) == [2900, 6144, 1800]
    assert list(frame["truncated"]) == [False, True, False]


def test_autopack_database_upgrades_in_place_without_losing_a_row(autopack_engine: Engine) -> None:
    before = {table: fetch_all(autopack_engine, table, key) for table, key in ORIGINAL_TABLES.items()}
    assert all(before.values())

    assert upgrade_database(autopack_engine) == "0002"
    assert current_revision(autopack_engine) == "0002"

    for table, key in ORIGINAL_TABLES.items():
        after = fetch_all(autopack_engine, table, key)
        assert len(after) == len(before[table])
        for old, new in zip(before[table], after):
            assert {column: new[column] for column in old} == old, table
    events = fetch_all(autopack_engine, "token_estimation_v2_events", "event_id")
    for column in ("attempt", "event_uid", "actual_is_total_tokens", "phase_completed", "actual_max_tokens"):
        assert all(row[column] is None for row in events), column
    tasks = fetch_all(autopack_engine, "generated_tasks", "id")
    assert tasks[0]["status"] == "in_progress" and tasks[0]["fingerprint"] is None
    assert "phase_type" in fetch_all(autopack_engine, "phases", "id")[0]
    assert count_rows(autopack_engine, "phase_outcome_events") == 0  # missing table was created


def test_upgraded_autopack_database_takes_our_writes(autopack_engine: Engine, make_event) -> None:
    upgrade_database(autopack_engine)
    existing = {"run_id": "telemetry-collection-v4", "phase_id": "telemetry-p9-readme"}
    assert record_estimation_event(autopack_engine, make_event(**existing, attempt=2), respect_flag=False)
    # New run and phase rows go into Autopack's state columns (native enums on PostgreSQL).
    ensure_run_and_phase(autopack_engine, "run-new", "phase-new", phase_state="EXECUTING")
    assert record_estimation_event(autopack_engine, make_event(run_id="run-new", phase_id="phase-new"),
                                   respect_flag=False)
    frame = read_events(autopack_engine)
    assert len(frame) == 5
    assert frame["attempt"].iloc[3] == 2
    summary = database_summary(autopack_engine)
    assert summary["phase_states"] == {"COMPLETE": 1, "EXECUTING": 1, "FAILED": 1, "QUEUED": 1, "TOTAL": 4}
    # Autopack's "testing"/"documentation" are counted under the canonical names.
    assert summary["events"]["by_category"] == {"docs": 1, "implementation": 3, "tests": 1}
