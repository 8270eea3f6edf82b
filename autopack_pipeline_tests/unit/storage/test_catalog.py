"""A SQLite file's catalog through ``sqlite3`` answers as SQLAlchemy's inspector does, and opening a
current SQLite file makes no engine (the schema verdict is read through it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.services.telemetry_database import open_database_handle
from autopack_pipeline.storage.catalog import EngineCatalog, SqliteFileCatalog, max_event_id
from autopack_pipeline.storage.events import record_estimation_event
from autopack_pipeline.storage.handle import DatabaseHandle, as_handle, describe_database
from autopack_pipeline.storage.migrate import prepare_database, schema_gaps
from autopack_pipeline.storage.model_columns import TELEMETRY_TABLES
from autopack_pipeline.storage.schema_check import HEAD_REVISION, read_schema
from autopack_pipeline_tests.unit.storage.test_autopack_upgrade import autopack_engine  # noqa: F401 - fixture


def _answers(catalog) -> dict:
    with catalog as open_catalog:
        tables = open_catalog.table_names()
        answers = {"tables": tables, "columns": {t: open_catalog.column_names(t) for t in sorted(tables)},
                   "schema": read_schema(open_catalog)}
        if "token_estimation_v2_events" in tables:
            top = max_event_id(open_catalog)
            answers |= {"max": top, "anchors": [open_catalog.anchor(i) for i in (top, top + 1, 1)]}
    return answers


def _sqlite_file(engine: Engine) -> str:
    path = describe_database(engine).sqlite_path
    if path is None:
        pytest.skip("a SQLite file only")
    return path


def test_a_current_database_reads_alike_through_both(seeded: Engine, make_event) -> None:
    for actual in (800, 950, 1200):
        assert record_estimation_event(seeded, make_event(actual_output_tokens=actual), respect_flag=False)
    if seeded.dialect.name == "sqlite":
        with seeded.begin() as connection:
            connection.exec_driver_sql("ANALYZE")  # SQLite's own sqlite_stat1 table: not one of the database's
    through_sqlite3 = _answers(SqliteFileCatalog(_sqlite_file(seeded)))
    assert through_sqlite3 == _answers(EngineCatalog(seeded))
    assert through_sqlite3["schema"].ready and through_sqlite3["schema"].revisions == (HEAD_REVISION,)
    assert through_sqlite3["max"] > 0 and through_sqlite3["anchors"][0]["event_id"] == through_sqlite3["max"]
    assert through_sqlite3["anchors"][1] is None and through_sqlite3["anchors"][2]["actual_output_tokens"] == 800


def test_an_autopack_database_reads_alike_and_is_not_ready(autopack_engine: Engine) -> None:  # noqa: F811
    through_sqlite3 = _answers(SqliteFileCatalog(_sqlite_file(autopack_engine)))
    assert through_sqlite3 == _answers(EngineCatalog(autopack_engine))
    schema = through_sqlite3["schema"]
    assert schema.holds_schema and not schema.ready and schema.revisions == ()
    assert list(schema.gaps) == schema_gaps(autopack_engine) and "token_estimation_v2_events.attempt" in schema.gaps


def test_a_column_dropped_at_head_is_a_gap_and_not_ready(seeded: Engine) -> None:
    path = _sqlite_file(seeded)
    with seeded.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE llm_usage_events DROP COLUMN intent")
    with SqliteFileCatalog(path) as catalog:
        schema = read_schema(catalog)
    assert schema.revisions == (HEAD_REVISION,) and schema.gaps == ("llm_usage_events.intent",)
    assert not schema.ready


def test_a_new_database_holds_no_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    sa.create_engine(f"sqlite:///{path}").connect().close()  # an empty file
    with SqliteFileCatalog(str(path)) as catalog:
        schema = read_schema(catalog)
    assert not schema.holds_schema and not schema.ready
    assert schema.gaps == tuple(f"table {name}" for name in TELEMETRY_TABLES)


def test_opening_a_current_sqlite_file_makes_no_engine(seeded: Engine) -> None:
    path = _sqlite_file(seeded)
    database = open_database_handle(f"sqlite:///{path}", must_exist=True)
    assert not database.has_engine
    assert database.identity == describe_database(seeded)
    assert describe_database(database) == database.identity
    with database.catalog() as catalog:
        assert isinstance(catalog, SqliteFileCatalog)
    assert prepare_database(database.engine) == HEAD_REVISION and database.has_engine  # made when asked for
    database.dispose()


def test_opening_anything_else_goes_through_sqlalchemy(autopack_engine: Engine, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(Refused, match="db upgrade"):
        open_database_handle(autopack_engine.url.render_as_string(hide_password=False))
    fresh = open_database_handle(f"sqlite:///{tmp_path / 'brand-new.db'}")  # created at head, as before
    assert fresh.has_engine and read_schema(EngineCatalog(fresh.engine).__enter__()).ready
    fresh.dispose()
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"this is not a SQLite file" * 100)
    with pytest.raises(sa.exc.DatabaseError):
        open_database_handle(f"sqlite:///{garbage}", must_exist=True)


def test_a_handle_of_an_engine_asks_the_engine(seeded: Engine) -> None:
    database = as_handle(seeded)
    assert database.engine is seeded and as_handle(database) is database
    assert database.identity == describe_database(seeded)
    with database.catalog() as catalog:
        assert isinstance(catalog, EngineCatalog)
    assert isinstance(DatabaseHandle(database.url).catalog(), SqliteFileCatalog | EngineCatalog)
