"""Database identity (pitfall P1): one resolution rule, absolute SQLite paths, masked passwords."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack_pipeline.settings import load_storage_settings
from autopack_pipeline.storage.database import (
    make_engine,
    resolve_database_url,
    safe_error_text,
)
from autopack_pipeline.storage.handle import describe_database


def test_relative_sqlite_path_is_resolved_against_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url("sqlite:///data/telemetry.db") == f"sqlite:///{tmp_path / 'data' / 'telemetry.db'}"


def test_default_is_autopack_db_in_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url() == f"sqlite:///{tmp_path / 'autopack.db'}"


def test_environment_variable_is_used_and_an_argument_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment is the settings' to read; storage resolves what it is given.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    settings = load_storage_settings()
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path / 'from_env.db'}"
    explicit = f"sqlite:///{tmp_path / 'explicit.db'}"
    assert settings.resolved_database_url(explicit) == explicit
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url() == f"sqlite:///{tmp_path / 'autopack.db'}"  # storage alone: the default


def test_absolute_sqlite_path_is_kept_and_dot_dot_folded(tmp_path: Path) -> None:
    assert resolve_database_url(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    assert resolve_database_url(f"sqlite:///{tmp_path}/sub/../b.db") == f"sqlite:///{tmp_path}/b.db"


def test_in_memory_sqlite_is_not_turned_into_a_file() -> None:
    assert resolve_database_url("sqlite://") == "sqlite://"
    assert resolve_database_url("sqlite:///:memory:") == "sqlite:///:memory:"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://bob:pw@db.example:5432/telemetry", "postgresql+psycopg://bob:pw@db.example:5432/telemetry"),
        ("postgres://bob:pw@db.example/telemetry", "postgresql+psycopg://bob:pw@db.example/telemetry"),
        ("postgresql+psycopg://bob@db.example/telemetry", "postgresql+psycopg://bob@db.example/telemetry"),
    ],
)
def test_postgres_urls_use_the_psycopg3_driver(given: str, expected: str) -> None:
    assert resolve_database_url(given) == expected


def test_identity_masks_the_password_and_logs_never_show_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="autopack_pipeline")
    engine = make_engine("postgresql://bob:s3cr3t-pw@db.example:5432/telemetry")  # never connects
    identity = describe_database(engine)
    assert identity.backend == "postgresql"
    assert identity.url == "postgresql+psycopg://bob:***@db.example:5432/telemetry"
    assert identity.sqlite_path is None and identity.sqlite_mtime is None
    everything = f"{identity.to_dict()} {identity.banner()} {caplog.text}"
    assert "s3cr3t-pw" not in everything
    assert "bob:***@db.example" in caplog.text  # the engine creation was logged, masked


def test_sqlite_engine_sets_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_identity_reports_the_absolute_file_and_its_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///rel.db")
    try:
        before = describe_database(engine)
        assert before.sqlite_path == str(tmp_path / "rel.db")
        assert before.sqlite_mtime is None  # nothing written yet: says so instead of inventing a time
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        # The identity is fixed when the engine is made: changing directory later changes nothing.
        monkeypatch.chdir(tmp_path.parent)
        after = describe_database(engine)
        assert after.sqlite_path == str(tmp_path / "rel.db")
        assert after.url == f"sqlite:///{tmp_path / 'rel.db'}"
        stamp = datetime.fromisoformat(after.sqlite_mtime or "")
        assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=5)
    finally:
        engine.dispose()


def test_safe_error_text_masks_passwords_and_keeps_one_line() -> None:
    error = RuntimeError("cannot reach postgresql://bob:hunter2@db/x password=hunter2 host=db\nsecond line")
    text = safe_error_text(error)
    assert "hunter2" not in text
    assert text.startswith("RuntimeError: cannot reach postgresql://bob:***@db/x password=***")
    assert "second line" not in text


def test_safe_error_text_prefers_the_driver_exception() -> None:
    wrapped = sa.exc.OperationalError("SELECT 1", {"secret_param": "x"}, ValueError("driver said no"))
    assert safe_error_text(wrapped) == "ValueError: driver said no"


@pytest.mark.parametrize("database", [
    "data/telemetry.db", "autopack.db", "~/x.db", "a b.db", "a%20b.db", "x#y.db", "a@b:c.db", "päth/ü.db",
    "sub/../b.db", "./rel.db", "%2Fetc", "/abs/path.db", "//double/slash.db", "/a//b/../c.db",
])
@pytest.mark.parametrize("driver", ["sqlite", "sqlite+pysqlite"])
def test_a_plain_sqlite_url_resolves_and_identifies_without_sqlalchemy_as_with_it(
        driver: str, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack_pipeline.storage.database_url import _resolved_by_sqlalchemy, identify, identity_of

    monkeypatch.chdir(tmp_path)
    url = f"{driver}:///{database}"
    resolved = resolve_database_url(url)
    assert resolved == _resolved_by_sqlalchemy(url)
    assert identify(resolved) == identity_of(sa.engine.make_url(resolved))


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite:///file:x.db?mode=ro&uri=true",
                                 "sqlite:///x.db?timeout=3", "SQLITE:///x.db"])
def test_other_sqlite_urls_are_left_to_sqlalchemy(url: str) -> None:
    from autopack_pipeline.storage.database_url import _plain_sqlite_file

    assert _plain_sqlite_file(url) is None
