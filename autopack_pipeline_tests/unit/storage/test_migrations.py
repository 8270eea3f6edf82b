"""Alembic migrations from an empty database, schema checks, and the out-of-date error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import ensure_run_and_phase
from autopack_pipeline.storage.migrate import (
    HEAD_REVISION,
    SchemaOutOfDate,
    alembic_config,
    current_revision,
    head_revision,
    migration_connection,
    require_current_schema,
    upgrade_database,
)
from autopack_pipeline.storage.model_columns import MODEL_COLUMNS
from autopack_pipeline.storage.models import (
    TELEMETRY_TABLES,
    Base,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
)
from autopack_pipeline_tests.support.databases import PHASE_ID, RUN_ID, count_rows, fetch_all

OUR_EVENT_COLUMNS = {"attempt", "event_uid", "actual_is_total_tokens", "phase_completed"}
OUR_TASK_COLUMNS = {"requires_approval", "estimated_cost", "kind", "evidence", "confidence", "fingerprint"}


def _columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns(table)}


def _migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with migration_connection(engine) as connection:
        config = alembic_config(connection)
        (command.downgrade if down else command.upgrade)(config, revision)


def test_head_is_0004() -> None:
    assert head_revision() == "0004"


def test_the_head_spelled_out_for_opening_a_database_is_alembics() -> None:
    # prepare_database trusts HEAD_REVISION without asking Alembic: a new revision script must move it.
    assert HEAD_REVISION == head_revision()


def test_the_columns_spelled_out_for_opening_a_database_are_the_models() -> None:
    # prepare_database checks a database against MODEL_COLUMNS without importing the models: a new
    # column of a model must be named there too.
    assert MODEL_COLUMNS == {name: tuple(column.name for column in Base.metadata.tables[name].columns)
                             for name in TELEMETRY_TABLES}


@pytest.mark.integration  # a fresh interpreter, as a subprocess
def test_opening_a_database_at_head_leaves_the_orm_unloaded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    upgrade_database(url)
    # In a fresh interpreter: this one has imported the models already.
    script = ("import sys; from autopack_pipeline.services.telemetry_database import open_database; "
              f"open_database({url!r}, must_exist=True).dispose(); "
              "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy.orm', 'sqlalchemy.dialects.postgresql'))"
              " or m == 'autopack_pipeline.storage.models'))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_revision_is_read_as_alembic_reads_it(blank_engine: Engine) -> None:
    def alembic_reads() -> str | None:
        with blank_engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    assert current_revision(blank_engine) is None and alembic_reads() is None  # no version table
    with blank_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    assert current_revision(blank_engine) is None and alembic_reads() is None  # an empty one
    for revision in ("0002", "0004"):
        with blank_engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM alembic_version")
            connection.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": revision})
        assert current_revision(blank_engine) == alembic_reads() == revision


def test_upgrade_from_empty_creates_every_table_at_head(blank_engine: Engine) -> None:
    assert current_revision(blank_engine) is None
    assert upgrade_database(blank_engine) == "0004"
    assert current_revision(blank_engine) == "0004"
    tables = set(sa.inspect(blank_engine).get_table_names())
    assert set(TELEMETRY_TABLES) <= tables
    assert OUR_EVENT_COLUMNS <= _columns(blank_engine, "token_estimation_v2_events")
    assert OUR_TASK_COLUMNS <= _columns(blank_engine, "generated_tasks")
    require_current_schema(blank_engine)  # does not raise


def test_upgrade_is_idempotent_and_keeps_rows(seeded: Engine) -> None:
    assert upgrade_database(seeded) == "0004"
    assert upgrade_database(seeded) == "0004"
    assert count_rows(seeded, "phases") == 1


def test_models_and_migrations_describe_the_same_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_autopack_constraint_and_index_names(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    event_fks = {fk["name"]: fk for fk in inspector.get_foreign_keys("token_estimation_v2_events") if fk["name"]}
    fk = event_fks["fk_token_est_v2_run_phase"]
    assert fk["constrained_columns"] == ["run_id", "phase_id"]
    assert (fk["referred_table"], fk["referred_columns"]) == ("phases", ["run_id", "phase_id"])
    assert fk["options"].get("ondelete") == "CASCADE"
    escalation_fks = {fk["name"] for fk in inspector.get_foreign_keys("token_budget_escalation_events")}
    assert "fk_token_budget_escalation_run_phase" in escalation_fks
    unique_sets = {tuple(uc["column_names"]): uc["name"] for uc in inspector.get_unique_constraints("phases")}
    assert unique_sets[("run_id", "phase_id")] == "uq_phases_run_id_phase_id"
    pk = inspector.get_pk_constraint("token_estimation_v2_events")
    assert pk["constrained_columns"] == ["event_id"]

    def index_names(table: str) -> set[str]:
        return {ix["name"] for ix in inspector.get_indexes(table)}

    assert {"ix_telemetry_run_category", "ix_telemetry_category_timestamp",
            "ix_token_estimation_v2_events_run_id", "ix_token_estimation_v2_events_event_uid"} <= index_names(
        "token_estimation_v2_events")
    assert {"ix_escalation_run_timestamp", "ix_escalation_reason_timestamp"} <= index_names(
        "token_budget_escalation_events")
    assert {"ix_phases_run_state", "ix_phases_state_started", "ix_phases_phase_id"} <= index_names("phases")
    assert {"ix_runs_state_created"} <= index_names("runs")
    assert {"ix_phase_outcome_run_id", "ix_phase_outcome_outcome"} <= index_names("phase_outcome_events")
    assert {"ix_generated_tasks_status", "ix_generated_tasks_task_id"} <= index_names("generated_tasks")
    uid_index = next(ix for ix in inspector.get_indexes("token_estimation_v2_events")
                     if ix["name"] == "ix_token_estimation_v2_events_event_uid")
    assert uid_index["unique"]


def test_require_current_schema_explains_what_to_do(blank_engine: Engine) -> None:
    with pytest.raises(SchemaOutOfDate) as never_migrated:
        require_current_schema(blank_engine)
    message = str(never_migrated.value)
    assert "no revision" in message and "0004" in message and "autopack-telemetry db upgrade" in message
    assert never_migrated.value.current is None and never_migrated.value.required == "0004"

    _migrate_to(blank_engine, "0001")
    with pytest.raises(SchemaOutOfDate) as behind:
        require_current_schema(blank_engine)
    assert behind.value.current == "0001"
    assert "at schema revision 0001" in str(behind.value)
    assert "needs revision 0004" in str(behind.value)


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_schema_error_never_shows_the_password(database_url: str) -> None:
    url = sa.engine.make_url(database_url).set(password="t0p-secret")
    # trust auth ignores the password, so this connects and finds an unmigrated database.
    engine = sa.create_engine(url)
    try:
        with pytest.raises(SchemaOutOfDate) as error:
            require_current_schema(engine)
        assert "t0p-secret" not in str(error.value)
        assert "***" in str(error.value)
    finally:
        engine.dispose()


def test_upgrade_works_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert upgrade_database("sqlite:///relative.db") == "0004"
    assert (elsewhere / "relative.db").exists()


def test_downgrade_to_baseline_and_back_keeps_rows(seeded: Engine) -> None:
    with seeded.begin() as connection:
        connection.execute(
            sa.insert(TokenEstimationV2Event.__table__).values(
                run_id=RUN_ID, phase_id=PHASE_ID, category="tests", complexity="low", deliverable_count=1,
                deliverables_json="[]", predicted_output_tokens=500, actual_output_tokens=700,
                selected_budget=8192, success=True, model="m", event_uid="uid-1", attempt=2,
            )
        )
    _migrate_to(seeded, "0001", down=True)
    assert current_revision(seeded) == "0001"
    assert not (OUR_EVENT_COLUMNS & _columns(seeded, "token_estimation_v2_events"))
    assert not (OUR_TASK_COLUMNS & _columns(seeded, "generated_tasks"))
    assert count_rows(seeded, "token_estimation_v2_events") == 1
    assert count_rows(seeded, "phases") == 1

    assert upgrade_database(seeded) == "0004"
    rows = fetch_all(seeded, "token_estimation_v2_events", "event_id")
    assert len(rows) == 1
    assert rows[0]["actual_output_tokens"] == 700 and rows[0]["event_uid"] is None


def _rebuild_phases(connection: sa.Connection) -> None:
    """What a batch migration does to a table SQLite cannot alter in place: copy, drop, rename."""
    operations = Operations(MigrationContext.configure(connection))
    with operations.batch_alter_table("phases", recreate="always"):
        pass


def test_sqlite_table_rebuild_in_a_migration_does_not_cascade(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'rebuild.db'}")
    try:
        upgrade_database(engine)
        for phase in ("a", "b"):
            ensure_run_and_phase(engine, RUN_ID, phase)
        with engine.begin() as connection:
            for phase in ("a", "b"):
                connection.execute(
                    sa.insert(TokenBudgetEscalationEvent.__table__).values(
                        run_id=RUN_ID, phase_id=phase, attempt_index=1, reason="truncation",
                        escalation_factor=1.25, base_value=8192, base_source="selected_budget",
                        retry_max_tokens=10240,
                    )
                )
        with migration_connection(engine) as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
            _rebuild_phases(connection)
        assert count_rows(engine, "token_budget_escalation_events") == 2
        with engine.connect() as connection:  # enforcement is back on for ordinary work
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

        # Control: the same rebuild on an ordinary connection (foreign keys enforced) loses the rows,
        # which is what migration_connection exists to prevent.
        with engine.begin() as connection:
            _rebuild_phases(connection)
        assert count_rows(engine, "token_budget_escalation_events") == 0
    finally:
        engine.dispose()


def test_revision_0003_adds_missing_columns_by_the_live_schema_keeping_rows(seeded: Engine) -> None:
    """Stamped at 0002 without two of Autopack's columns: 0003 adds them, a NOT NULL one with
    Autopack's default for the rows already there, and leaves the columns already present alone."""
    with seeded.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE phases DROP COLUMN quality_blocked")
        connection.exec_driver_sql("ALTER TABLE token_estimation_v2_events DROP COLUMN sot_file_name")
    _migrate_to(seeded, "0002", down=True)
    assert {"quality_blocked", "sot_file_name"}.isdisjoint(
        _columns(seeded, "phases") | _columns(seeded, "token_estimation_v2_events"))

    _migrate_to(seeded, "0003")
    assert current_revision(seeded) == "0003"
    assert "sot_file_name" in _columns(seeded, "token_estimation_v2_events")
    quality_blocked = next(c for c in sa.inspect(seeded).get_columns("phases") if c["name"] == "quality_blocked")
    assert quality_blocked["nullable"] is False and quality_blocked["default"] is not None
    phases = fetch_all(seeded, "phases", "id")
    assert len(phases) == 1 and phases[0]["quality_blocked"] in (False, 0)
    _migrate_to(seeded, "0002", down=True)  # 0003 never drops Autopack's columns
    _migrate_to(seeded, "0003")  # and runs again without adding anything twice
    assert "sot_file_name" in _columns(seeded, "token_estimation_v2_events")
