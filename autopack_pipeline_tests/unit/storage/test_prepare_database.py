"""The schema rule for commands and assets: create a new database, pass one at head, refuse older ones."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.storage.migrate import (
    SchemaOutOfDate,
    SchemaTooNew,
    current_revision,
    head_revision,
    migration_connection,
    prepare_database,
    upgrade_database,
)
from autopack_pipeline.storage.models import TELEMETRY_TABLES
from autopack_pipeline_tests.support.databases import count_rows
from autopack_pipeline_tests.unit.storage.test_autopack_upgrade import autopack_engine  # noqa: F401 - fixture


def test_a_database_without_our_tables_is_created_at_head(blank_engine: Engine) -> None:
    assert prepare_database(blank_engine) == head_revision()
    assert current_revision(blank_engine) == head_revision()
    assert set(TELEMETRY_TABLES) <= set(sa.inspect(blank_engine).get_table_names())


def test_an_unrelated_table_does_not_count_as_ours(blank_engine: Engine) -> None:
    # Autopack's executor once built only llm_usage_events in the wrong file (P1): still "new" to us.
    with blank_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY)")
    assert prepare_database(blank_engine) == head_revision()
    assert "token_estimation_v2_events" in sa.inspect(blank_engine).get_table_names()


def test_a_database_at_head_passes_untouched(seeded: Engine) -> None:
    assert prepare_database(seeded) == head_revision()
    assert count_rows(seeded, "phases") == 1


def test_an_autopack_database_is_refused_not_migrated(autopack_engine: Engine, backend: str) -> None:  # noqa: F811
    with pytest.raises(SchemaOutOfDate) as refused:
        prepare_database(autopack_engine)
    message = str(refused.value)
    assert "no revision" in message and head_revision() in message
    assert "autopack-telemetry db upgrade" in message
    assert sa.engine.make_url(message.split()[2]).get_backend_name() == backend  # names the database
    assert current_revision(autopack_engine) is None  # nothing was changed behind the user's back
    assert "actual_max_tokens" not in {c["name"] for c in sa.inspect(autopack_engine).get_columns("token_estimation_v2_events")}
    upgrade_database(autopack_engine)  # the explicit upgrade is what adopts it
    assert prepare_database(autopack_engine) == head_revision()
    assert count_rows(autopack_engine, "token_estimation_v2_events") == 3


def test_an_older_revision_is_refused(blank_engine: Engine) -> None:
    from alembic import command

    from autopack_pipeline.storage.migrate import alembic_config

    with migration_connection(blank_engine) as connection:
        command.upgrade(alembic_config(connection), "0001")
    with pytest.raises(SchemaOutOfDate) as refused:
        prepare_database(blank_engine)
    assert refused.value.current == "0001" and refused.value.required == head_revision()
    assert "at schema revision 0001" in str(refused.value)


def test_a_revision_from_a_newer_version_says_to_upgrade_the_package(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew) as refused:
        prepare_database(engine)
    assert "9999" in str(refused.value) and "Upgrade autopack_pipeline" in str(refused.value)
    assert "db upgrade" not in str(refused.value)


def test_the_dagster_resource_applies_the_same_rule(autopack_engine: Engine, database_url: str) -> None:  # noqa: F811
    resource = TelemetryDatabase(database_url=database_url)
    with pytest.raises(SchemaOutOfDate, match="autopack-telemetry db upgrade"):
        resource.engine()
    upgrade_database(autopack_engine)
    try:
        assert count_rows(resource.engine(), "runs") == 1  # works after the upgrade: failures are not kept
    finally:
        resource.engine().dispose()


def test_the_dagster_resource_creates_a_new_database(database_url: str) -> None:
    resource = TelemetryDatabase(database_url=database_url)
    try:
        assert current_revision(resource.engine()) == head_revision()
    finally:
        resource.engine().dispose()


def test_the_resource_keeps_one_engine_for_its_lifetime_and_disposes_it(database_url: str) -> None:
    import dagster as dg

    with dg.build_resources({"telemetry_db": TelemetryDatabase(database_url=database_url)}) as resources:
        database = resources.telemetry_db
        engine = database.engine()
        assert database.engine() is engine  # prepared once, not per call
        with engine.connect():
            assert engine.pool.checkedout() == 1
    assert database._engine is None  # torn down with the resource: no engine outlives its run


@pytest.mark.integration  # starts processes
def test_processes_preparing_one_new_sqlite_file_at_once_all_succeed(tmp_path):
    """The webserver, the daemon and run workers may open a new database together (a real race)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = (
        "import sys; from autopack_pipeline.storage.database import make_engine; "
        "from autopack_pipeline.storage.migrate import prepare_database; "
        "print(prepare_database(make_engine(sys.argv[1])))"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in processes]
    assert all(code == 0 for _, _, code in results), [err for _, err, code in results if code]
    assert {out.strip() for out, _, _ in results} == {head_revision()}
