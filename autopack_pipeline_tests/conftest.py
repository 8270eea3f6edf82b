"""Shared fixtures: a temporary telemetry database for each test, never the user's autopack.db."""

from __future__ import annotations

from pathlib import Path

import pytest

# The test databases (a SQLite file, and PostgreSQL as a second parameter: ``engine``, ``seeded``, ``make_event``
# and the rest) for every test that asks for one; a module's own fixture of the same name takes precedence.
pytest_plugins = ("autopack_pipeline_tests.support.databases",)


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


# The three tiers are directories; a test is marked with its directory's tier so `-m unit` selects the
# fast one. Two exceptions keep `unit` honest without splitting files: a test may name its tier itself
# (a unit file's one test that starts a subprocess or the local server carries `integration`), and a
# test marked `postgres` (the PostgreSQL half of a parametrised storage test) needs the database server,
# so it is `integration` wherever its file lives.
TIERS = ("unit", "integration", "e2e")
TESTS_ROOT = Path(__file__).resolve().parent


def tier_of(item: pytest.Item) -> str | None:
    """The tier ``item`` belongs to, or None for a file outside the three tier directories."""
    named = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
    if named:
        return named[0]
    try:
        directory = Path(item.path).resolve().relative_to(TESTS_ROOT).parts[0]
    except ValueError:
        return None
    if directory not in TIERS:
        return None
    if directory == "unit" and item.get_closest_marker("postgres") is not None:
        return "integration"
    return directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if tier is not None and item.get_closest_marker(tier) is None:
            item.add_marker(tier)
