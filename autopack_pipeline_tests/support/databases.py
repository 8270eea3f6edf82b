"""Fixtures for the storage tests: one real database per test, SQLite file or PostgreSQL.

Every database-backed test runs twice, on a fresh SQLite file under ``tmp_path`` and on a fresh
PostgreSQL database ``autopack_test_<random>`` created through the ``postgres`` maintenance database
and dropped afterwards. The PostgreSQL half is marked ``postgres`` and skipped, with the reason, when
the server at 127.0.0.1:5432 cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import make_engine, safe_error_text
from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase
from autopack_pipeline.storage.migrate import upgrade_database

PG_ADMIN_URL = os.environ.get(
    "AUTOPACK_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

RUN_ID = "run-1"
PHASE_ID = "phase-1"


def _admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction block.
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of a brand-new, empty database on the parametrized backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'telemetry.db'}"
        return
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        where = sa.engine.make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL server unreachable at {where}: {safe_error_text(exc)}")
    name = f"autopack_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def backend(database_url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return sa.engine.make_url(database_url).get_backend_name()


@pytest.fixture
def blank_engine(database_url: str) -> Iterator[Engine]:
    """Engine on the empty database, not migrated."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(blank_engine: Engine) -> Engine:
    """Engine on a database migrated to head."""
    upgrade_database(blank_engine)
    return blank_engine


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    """A migrated SQLite database, for tests where the backend does not matter."""
    engine = make_engine(f"sqlite:///{tmp_path / 'telemetry.db'}")
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def telemetry_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "1")


@pytest.fixture
def telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEMETRY_DB_ENABLED", raising=False)


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    """Migrated database holding run ``run-1`` with phase ``phase-1``."""
    ensure_run_and_phase(engine, RUN_ID, PHASE_ID, category="implementation", complexity="low")
    return engine


@pytest.fixture
def make_event() -> Callable[..., EstimationEvent]:
    """Factory of valid events for ``run-1``/``phase-1``; keyword arguments override fields."""

    def build(**overrides: Any) -> EstimationEvent:
        fields: dict[str, Any] = {
            "run_id": RUN_ID,
            "phase_id": PHASE_ID,
            "category": "implementation",
            "complexity": "low",
            "deliverables": ["src/example.py"],
            "predicted_output_tokens": 1200,
            "actual_output_tokens": 800,
            "selected_budget": 8192,
            "actual_max_tokens": 16384,
            "success": True,
            "truncated": False,
            "stop_reason": "end_turn",
            "model": "claude-sonnet-4-5",
        }
        fields.update(overrides)
        return EstimationEvent(**fields)

    return build


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one())


def fetch_all(engine: Engine, table: str, order_by: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as dicts (reflected, so it sees the live columns)."""
    reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(reflected).order_by(reflected.c[order_by])).mappings().all()
    return [dict(row) for row in rows]
