"""An existing Autopack database (tables and rows, no alembic_version) upgraded in place.

The schema below is written by hand the way Autopack's SQLAlchemy models create it, in the older
vintage of Autopack's real ``autopack.db``: ``token_estimation_v2_events`` without
``actual_max_tokens`` (added later by a script) nor the SOT columns (``is_sot_file``,
``sot_file_name``, ``sot_entry_count_hint``), ``phases`` without ``phase_type`` and
``deployment_config``, an ``llm_usage_events`` table lacking ``phase_type`` and ``intent``, no
``phase_outcome_events`` table at all, and on PostgreSQL the native enum types Autopack's ``Enum``
columns produce there.

``AUTOPACK_COLUMNS`` is every column of Autopack's current models (hshk99/Autopack c81c7189) for the
tables its telemetry scripts read: Autopack's ORM selects every mapped column, so a database we
create or upgrade must hold each of them.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from autopack_pipeline.cli import main
from autopack_pipeline.storage import spool
from autopack_pipeline.storage.events import ensure_run_and_phase, read_events, record_estimation_event
from autopack_pipeline.storage.migrate import (
    SchemaOutOfDate,
    alembic_config,
    current_revision,
    head_revision,
    migration_connection,
    prepare_database,
    upgrade_database,
)
from autopack_pipeline.storage.summary import database_summary
from autopack_pipeline_tests.support.databases import count_rows, fetch_all

NN, NULL = True, False
AUTOPACK_COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "runs": [
        ("id", "VARCHAR", NN), ("state", "VARCHAR", NN), ("created_at", "DATETIME", NN),
        ("updated_at", "DATETIME", NN), ("started_at", "DATETIME", NULL), ("completed_at", "DATETIME", NULL),
        ("safety_profile", "VARCHAR", NN), ("run_scope", "VARCHAR", NN), ("token_cap", "INTEGER", NN),
        ("max_phases", "INTEGER", NN), ("max_duration_minutes", "INTEGER", NN),
        ("max_minor_issues_total", "INTEGER", NULL), ("tokens_used", "INTEGER", NN),
        ("ci_runs_used", "INTEGER", NN), ("minor_issues_count", "INTEGER", NN),
        ("major_issues_count", "INTEGER", NN), ("promotion_eligible_to_main", "VARCHAR", NN),
        ("debt_status", "VARCHAR", NULL), ("failure_reason", "TEXT", NULL), ("goal_anchor", "TEXT", NULL),
    ],
    "tiers": [
        ("id", "INTEGER", NN), ("tier_id", "VARCHAR", NN), ("run_id", "VARCHAR", NN), ("tier_index", "INTEGER", NN),
        ("name", "VARCHAR", NN), ("description", "TEXT", NULL), ("state", "VARCHAR", NN),
        ("token_cap", "INTEGER", NULL), ("ci_run_cap", "INTEGER", NULL),
        ("max_minor_issues_tolerated", "INTEGER", NULL), ("max_major_issues_tolerated", "INTEGER", NN),
        ("tokens_used", "INTEGER", NN), ("ci_runs_used", "INTEGER", NN), ("minor_issues_count", "INTEGER", NN),
        ("major_issues_count", "INTEGER", NN), ("cleanliness", "VARCHAR", NN), ("created_at", "DATETIME", NN),
        ("updated_at", "DATETIME", NN), ("started_at", "DATETIME", NULL), ("completed_at", "DATETIME", NULL),
    ],
    "phases": [
        ("id", "INTEGER", NN), ("phase_id", "VARCHAR", NN), ("run_id", "VARCHAR", NN), ("tier_id", "INTEGER", NN),
        ("phase_index", "INTEGER", NN), ("name", "VARCHAR", NN), ("description", "TEXT", NULL),
        ("state", "VARCHAR", NN), ("task_category", "VARCHAR", NULL), ("complexity", "VARCHAR", NULL),
        ("builder_mode", "VARCHAR", NULL), ("phase_type", "VARCHAR", NULL), ("scope", "JSON", NULL),
        ("deployment_config", "JSON", NULL), ("max_builder_attempts", "INTEGER", NULL),
        ("max_auditor_attempts", "INTEGER", NULL), ("incident_token_cap", "INTEGER", NULL),
        ("builder_attempts", "INTEGER", NN), ("auditor_attempts", "INTEGER", NN), ("tokens_used", "INTEGER", NN),
        ("minor_issues_count", "INTEGER", NN), ("major_issues_count", "INTEGER", NN),
        ("issue_state", "VARCHAR", NN), ("quality_level", "VARCHAR", NULL), ("quality_blocked", "BOOLEAN", NN),
        ("retry_attempt", "INTEGER", NN), ("revision_epoch", "INTEGER", NN), ("escalation_level", "INTEGER", NN),
        ("last_attempt_timestamp", "DATETIME", NULL), ("last_failure_reason", "VARCHAR", NULL),
        ("created_at", "DATETIME", NN), ("updated_at", "DATETIME", NN), ("started_at", "DATETIME", NULL),
        ("completed_at", "DATETIME", NULL),
    ],
    "token_estimation_v2_events": [
        ("event_id", "INTEGER", NN), ("run_id", "VARCHAR", NN), ("phase_id", "VARCHAR", NN),
        ("timestamp", "DATETIME", NN), ("category", "VARCHAR", NN), ("complexity", "VARCHAR", NN),
        ("deliverable_count", "INTEGER", NN), ("deliverables_json", "TEXT", NN),
        ("predicted_output_tokens", "INTEGER", NN), ("actual_output_tokens", "INTEGER", NN),
        ("selected_budget", "INTEGER", NN), ("actual_max_tokens", "INTEGER", NULL), ("success", "BOOLEAN", NN),
        ("truncated", "BOOLEAN", NN), ("stop_reason", "VARCHAR", NULL), ("model", "VARCHAR", NN),
        ("smape_percent", "FLOAT", NULL), ("waste_ratio", "FLOAT", NULL), ("underestimated", "BOOLEAN", NULL),
        ("is_truncated_output", "BOOLEAN", NN), ("api_reference_required", "BOOLEAN", NULL),
        ("examples_required", "BOOLEAN", NULL), ("research_required", "BOOLEAN", NULL),
        ("usage_guide_required", "BOOLEAN", NULL), ("context_quality", "VARCHAR", NULL),
        ("is_sot_file", "BOOLEAN", NULL), ("sot_file_name", "VARCHAR", NULL),
        ("sot_entry_count_hint", "INTEGER", NULL), ("created_at", "DATETIME", NN),
    ],
    "token_budget_escalation_events": [
        ("event_id", "INTEGER", NN), ("run_id", "VARCHAR", NN), ("phase_id", "VARCHAR", NN),
        ("timestamp", "DATETIME", NN), ("attempt_index", "INTEGER", NN), ("reason", "VARCHAR", NN),
        ("was_truncated", "BOOLEAN", NN), ("output_utilization", "FLOAT", NULL),
        ("escalation_factor", "FLOAT", NN), ("base_value", "INTEGER", NN), ("base_source", "VARCHAR", NN),
        ("retry_max_tokens", "INTEGER", NN), ("selected_budget", "INTEGER", NULL),
        ("actual_max_tokens", "INTEGER", NULL), ("tokens_used", "INTEGER", NULL),
    ],
    "llm_usage_events": [
        ("id", "INTEGER", NN), ("provider", "VARCHAR", NN), ("model", "VARCHAR", NN), ("run_id", "VARCHAR", NULL),
        ("phase_id", "VARCHAR", NULL), ("role", "VARCHAR", NN), ("total_tokens", "INTEGER", NN),
        ("prompt_tokens", "INTEGER", NULL), ("completion_tokens", "INTEGER", NULL),
        ("created_at", "DATETIME", NN), ("client_id", "VARCHAR", NULL), ("is_doctor_call", "BOOLEAN", NN),
        ("doctor_model", "VARCHAR", NULL), ("doctor_action", "VARCHAR", NULL), ("phase_type", "VARCHAR", NULL),
        ("intent", "VARCHAR", NULL),
    ],
}
# What each of Autopack's column types holds, to compare with the reflected type of our column
# (TEXT and VARCHAR both hold strings; PostgreSQL reflects FLOAT as DOUBLE PRECISION).
_PYTHON_TYPES = {"VARCHAR": str, "TEXT": str, "INTEGER": int, "FLOAT": float, "BOOLEAN": bool,
                 "DATETIME": datetime, "JSON": dict}


def autopack_column_mismatches(engine: Engine) -> list[str]:
    """Every way ``engine``'s tables differ from ``AUTOPACK_COLUMNS`` (empty when they hold all of it).

    A column of ours that Autopack lacks must be nullable or have a server default, otherwise
    Autopack's writer (which fills only its own columns) breaks.
    """
    inspector = sa.inspect(engine)
    present_tables = set(inspector.get_table_names())
    problems: list[str] = []
    for table, expected in AUTOPACK_COLUMNS.items():
        if table not in present_tables:
            problems.append(f"table {table} missing")
            continue
        live = {column["name"]: column for column in inspector.get_columns(table)}
        for name, type_name, not_null in expected:
            column = live.get(name)
            if column is None:
                problems.append(f"{table}.{name} missing")
                continue
            if column["type"].python_type is not _PYTHON_TYPES[type_name]:
                problems.append(f"{table}.{name} is {column['type']}, Autopack has {type_name}")
            if column["nullable"] == not_null:
                problems.append(f"{table}.{name} nullable={column['nullable']}, Autopack has not-null={not_null}")
        ours = set(live) - {name for name, _type, _nn in expected}
        for name in sorted(ours):
            if not live[name]["nullable"] and live[name]["default"] is None:
                problems.append(f"{table}.{name} (ours) is NOT NULL without a default")
    return problems


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
            usage_guide_required BOOLEAN, context_quality VARCHAR, created_at {ts} NOT NULL, PRIMARY KEY (event_id),
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
        f"""CREATE TABLE llm_usage_events (
            id {serial} NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL, run_id VARCHAR,
            phase_id VARCHAR, role VARCHAR NOT NULL, total_tokens INTEGER NOT NULL, prompt_tokens INTEGER,
            completion_tokens INTEGER, created_at {ts} NOT NULL, client_id VARCHAR,
            is_doctor_call BOOLEAN NOT NULL, doctor_model VARCHAR, doctor_action VARCHAR, PRIMARY KEY (id))""",
    ]
    return statements


ORIGINAL_TABLES = {
    "runs": "id",
    "tiers": "id",
    "phases": "id",
    "token_estimation_v2_events": "event_id",
    "token_budget_escalation_events": "event_id",
    "generated_tasks": "id",
    "llm_usage_events": "id",
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
    connection.execute(sa.text(
        "INSERT INTO llm_usage_events (provider, model, run_id, phase_id, role, total_tokens, prompt_tokens,"
        " completion_tokens, created_at, is_doctor_call) VALUES ('anthropic', 'claude-sonnet-4-5',"
        " 'telemetry-collection-v4', 'telemetry-p1-string-util', 'builder', 9100, 6200, 2900, :ts, :no)"
    ), {"ts": T0, "no": False})


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

    assert upgrade_database(autopack_engine) == head_revision()
    assert current_revision(autopack_engine) == head_revision()
    assert autopack_column_mismatches(autopack_engine) == []

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


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _cli(capsys: pytest.CaptureFixture, engine: Engine, *argv: str) -> tuple[int, str, str]:
    code = main(["--database-url", _url(engine), *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and spool of the test's own, for the commands run in-process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return tmp_path


def test_created_database_holds_every_autopack_column(engine: Engine) -> None:
    assert autopack_column_mismatches(engine) == []


_SAMPLE_VALUES = {"VARCHAR": "x", "TEXT": "text", "INTEGER": 1, "FLOAT": 1.5, "BOOLEAN": False,
                  "DATETIME": T0, "JSON": "{}"}
_KEYS = {"run_id": "ap-run", "phase_id": "ap-phase", "tier_id": 1, "state": "QUEUED"}
_AUTOPACK_ROWS = {  # table -> the values that tie its sample row to the others
    "runs": {"id": "ap-run", "state": "RUN_CREATED"},
    "tiers": {"id": 1, "run_id": "ap-run", "state": "PENDING"},
    "phases": {"id": 1, **_KEYS},
    "token_estimation_v2_events": {"event_id": 1, "run_id": "ap-run", "phase_id": "ap-phase"},
    "token_budget_escalation_events": {"event_id": 1, "run_id": "ap-run", "phase_id": "ap-phase"},
    "llm_usage_events": {"id": 1, "run_id": "ap-run", "phase_id": "ap-phase"},
}


def test_autopack_orm_shaped_writes_and_reads_work_on_a_created_database(engine: Engine) -> None:
    """Autopack's ORM inserts and selects exactly its mapped columns; each table must take both."""
    with engine.begin() as connection:
        for table, keys in _AUTOPACK_ROWS.items():
            names = [name for name, _type, _nn in AUTOPACK_COLUMNS[table]]
            values = {name: _SAMPLE_VALUES[type_name] for name, type_name, _nn in AUTOPACK_COLUMNS[table]}
            values.update(keys)
            connection.execute(sa.text(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
            ), values)
    with engine.connect() as connection:
        for table, columns in AUTOPACK_COLUMNS.items():
            names = ", ".join(f'{table}."{name}"' for name, _type, _nn in columns)
            rows = connection.execute(sa.text(f"SELECT {names} FROM {table}")).all()
            assert len(rows) == 1 and len(rows[0]) == len(columns), table
    assert len(read_events(engine)) == 1  # and our reader takes the row Autopack's writer left


def _stamp_with_the_old_upgrade(engine: Engine) -> None:
    """What ``db upgrade`` did before revision 0003: migrate to 0002, which never added the SOT columns."""
    with migration_connection(engine) as connection:
        command.upgrade(alembic_config(connection), "0002")


def test_database_stamped_by_the_old_upgrade_is_repaired_and_usable(
    autopack_engine: Engine, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    before = {table: fetch_all(autopack_engine, table, key) for table, key in ORIGINAL_TABLES.items()}
    _stamp_with_the_old_upgrade(autopack_engine)
    assert current_revision(autopack_engine) == "0002"
    assert "token_estimation_v2_events.is_sot_file missing" in autopack_column_mismatches(autopack_engine)

    code, _out, err = _cli(capsys, autopack_engine, "db", "upgrade")
    assert code == 0, err
    assert current_revision(autopack_engine) == head_revision()
    assert autopack_column_mismatches(autopack_engine) == []
    for table, key in ORIGINAL_TABLES.items():
        after = fetch_all(autopack_engine, table, key)
        assert [{column: row[column] for column in old} for row, old in zip(after, before[table])] == before[table]

    code, out, err = _cli(capsys, autopack_engine, "export")
    assert code == 0, err
    exported = [json.loads(line) for line in out.splitlines()]
    assert len(exported) == 3
    line = {key: value for key, value in exported[0].items() if key != "event_uid"}
    line["phase_id"] = "imported-phase"
    (workdir / "events.ndjson").write_text(json.dumps(line) + "\n")
    code, _out, err = _cli(capsys, autopack_engine, "import", str(workdir / "events.ndjson"))
    assert code == 0, err
    assert count_rows(autopack_engine, "token_estimation_v2_events") == 4

    code, _out, err = _cli(capsys, autopack_engine, "collect", "--run-id", "after-upgrade", "--category",
                           "implementation", "--complexity", "low", "--phases", "2")
    assert code == 0, err
    assert spool.pending_count(_url(autopack_engine)) == 0  # written, not spooled for ever
    with autopack_engine.connect() as connection:
        collected = connection.execute(sa.text(
            "SELECT count(*) FROM token_estimation_v2_events WHERE run_id = 'after-upgrade'")).scalar_one()
    assert collected >= 2


def _drop_columns(engine: Engine, columns: dict[str, str]) -> None:
    with engine.begin() as connection:
        for table, column in columns.items():
            connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")


def test_database_at_head_missing_columns_is_refused_named_and_repaired(
    engine: Engine, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    ensure_run_and_phase(engine, "run-1", "phase-1")
    _drop_columns(engine, {"token_estimation_v2_events": "is_sot_file", "phases": "deployment_config"})
    assert current_revision(engine) == head_revision()

    with pytest.raises(SchemaOutOfDate) as refused:
        prepare_database(engine)
    message = str(refused.value)
    assert "token_estimation_v2_events.is_sot_file" in message and "phases.deployment_config" in message
    assert "autopack-telemetry db upgrade" in message
    code, _out, err = _cli(capsys, engine, "export", "--allow-empty-db")
    assert code == 1 and "token_estimation_v2_events.is_sot_file" in err

    code, out, _err = _cli(capsys, engine, "doctor", "--json")
    schema = next(check for check in json.loads(out)["checks"] if check["name"] == "schema")
    assert code == 1 and schema["status"] == "fail"
    assert "token_estimation_v2_events.is_sot_file" in str(schema["observed"])
    assert "phases.deployment_config" in str(schema["observed"])
    assert any("db upgrade" in advice for advice in schema["advice"])

    code, _out, err = _cli(capsys, engine, "db", "upgrade")
    assert code == 0, err
    assert autopack_column_mismatches(engine) == []
    assert count_rows(engine, "phases") == 1
    prepare_database(engine)  # no longer refused
    code, out, _err = _cli(capsys, engine, "doctor", "--json")
    schema = next(check for check in json.loads(out)["checks"] if check["name"] == "schema")
    assert schema["status"] == "ok"
