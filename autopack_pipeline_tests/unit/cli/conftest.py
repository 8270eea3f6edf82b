"""Fixtures for the command-line tests: a spool directory per test so no test writes into the working
directory's ``.autopack/`` (the databases come from the top conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(directory))
    return directory
