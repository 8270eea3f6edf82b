"""Fixtures for the command-line tests: the storage tests' databases (SQLite and PostgreSQL), and a
spool directory per test so no test writes into the working directory's ``.autopack/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack_pipeline_tests.support.databases import (  # noqa: F401 - re-exported fixtures
    backend,
    blank_engine,
    database_url,
    engine,
    make_event,
    seeded,
)


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(directory))
    return directory
