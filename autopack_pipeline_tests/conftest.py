"""Shared fixtures: a temporary telemetry database for each test, never the user's autopack.db."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """Events that fail to write go to a spool; tests keep theirs out of the working tree."""
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch) -> str:
    """A fresh SQLite telemetry database, also exported as DATABASE_URL for code that reads settings."""
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("AUTOPACK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.delenv("AUTOPACK_LLM_BACKEND", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return url
