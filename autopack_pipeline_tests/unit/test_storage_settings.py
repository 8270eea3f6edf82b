"""The storage settings: each variable to its typed field, the defaults, and the telemetry flag's rule.

``settings.py`` is the only module that reads the environment (test_architecture); these check that
what it reads is what the storage, the CLI and the Dagster resources used to read themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack_pipeline.settings import (
    DEFAULT_SPOOL_DIR,
    load_settings,
    load_storage_settings,
    telemetry_flag_is_on,
)

VARIABLES = ("DATABASE_URL", "TELEMETRY_DB_ENABLED", "AUTOPACK_SPOOL_DIR", "AUTOPACK_COLUMNAR_DIR", "DAGSTER_HOME")


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_defaults(bare_environment) -> None:
    settings = load_storage_settings()
    assert settings.database_url is None  # storage's sqlite:///autopack.db then applies
    assert settings.telemetry_flag is None and settings.telemetry_db_enabled is False
    assert settings.spool_dir == DEFAULT_SPOOL_DIR == Path(".autopack") / "spool"
    assert settings.columnar_dir is None and settings.dagster_home is None


def test_each_variable_reaches_its_field(bare_environment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bob:pw@db.example/telemetry")
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "Yes")
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("AUTOPACK_COLUMNAR_DIR", "~/columnar")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    for settings in (load_storage_settings(), load_settings()):  # Settings holds every storage field too
        assert settings.database_url == "postgresql://bob:pw@db.example/telemetry"
        assert settings.telemetry_flag == "Yes" and settings.telemetry_db_enabled is True
        assert settings.spool_dir == tmp_path / "spool"
        assert settings.columnar_dir == Path.home() / "columnar"
        assert settings.dagster_home == tmp_path / "home"
        assert settings.resolved_database_url() == "postgresql+psycopg://bob:pw@db.example/telemetry"


def test_blank_variables_mean_unset_but_the_raw_flag_is_kept(bare_environment) -> None:
    settings = load_storage_settings({"DATABASE_URL": " ", "AUTOPACK_SPOOL_DIR": "", "AUTOPACK_COLUMNAR_DIR": "",
                                      "DAGSTER_HOME": "", "TELEMETRY_DB_ENABLED": ""})
    assert settings.database_url is None and settings.columnar_dir is None and settings.dagster_home is None
    assert settings.spool_dir == DEFAULT_SPOOL_DIR
    assert settings.telemetry_flag == "" and not settings.telemetry_db_enabled  # doctor says "set to ''"


def test_an_explicit_mapping_is_read_instead_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "1")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///elsewhere.db")
    settings = load_storage_settings({})
    assert settings.telemetry_db_enabled is False and settings.database_url is None


def test_an_explicit_url_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.chdir(tmp_path)
    assert load_storage_settings().resolved_database_url("sqlite:///given.db") == f"sqlite:///{tmp_path / 'given.db'}"


@pytest.mark.parametrize(("value", "enabled"), [
    ("1", True), ("true", True), ("TRUE", True), (" yes ", True),
    ("0", False), ("no", False), ("on", False), ("", False), (None, False), ("maybe", False),
])
def test_the_telemetry_flag_rule(value: str | None, enabled: bool) -> None:
    assert telemetry_flag_is_on(value) is enabled


def test_a_bad_llm_setting_does_not_stop_the_storage_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # db-check, doctor and the Builder's writer need only these; an unrelated mistake must not stop them.
    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "no-such-backend")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    assert load_storage_settings().database_url == "sqlite:///x.db"
