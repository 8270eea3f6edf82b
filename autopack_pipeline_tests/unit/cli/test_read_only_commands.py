"""Commands that only read never create the telemetry database: a missing SQLite file is an error naming it.

Before, `db-check`, `metrics`, `export`, `tasks list` and the others opened the path given, SQLite created
an empty database there, and the command reported "empty": the identity confusion of Autopack's pitfall
P1. Commands that write (collect, import, synth, db upgrade) still create it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack_pipeline.cli import main
from autopack_pipeline_tests.support.calibration_cli_support import REPO_SEEDS

PATCH = {
    "proposed_changes": [{"category": "implementation", "complexity": "low", "sample_count": 30, "confidence": 0.9,
                          "median_ratio": 1.3, "proposed_multiplier": 2.0, "action": "-", "reasoning": "-"}],
    "method": "coverage",
}

READ_ONLY = [
    ["db-check"], ["db-check", "--json"], ["metrics"], ["metrics", "--json"], ["calibrate", "--force"],
    ["export"], ["export", "-o", "out.ndjson"], ["tasks", "list"], ["tasks", "show", "task-1"],
    ["backtest", "patch.json"], ["apply-calibration", "patch.json", "--dry-run"],
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", str(REPO_SEEDS))
    monkeypatch.setenv("AUTOPACK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("AUTOPACK_COLUMNAR_DIR", str(tmp_path / "columnar"))
    (tmp_path / "patch.json").write_text(json.dumps(PATCH))
    return tmp_path


def _left_behind(directory: Path) -> list[str]:
    """Anything a command created in ``directory`` (the fixture's patch and spool dir aside)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.name != "patch.json" and not p.is_relative_to(directory / "spool"))


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_command_on_a_missing_file_names_it_and_creates_nothing(command, workdir, capsys):
    missing = workdir / "nowhere" / "telemetry.db"
    (workdir / "nowhere").mkdir()

    code = main(["--database-url", "sqlite:///nowhere/telemetry.db", *command])

    err = capsys.readouterr().err
    assert code == 2, err
    assert str(missing) in err and "--database-url" in err and "DATABASE_URL" in err
    assert "Traceback" not in err
    assert not missing.exists()
    assert _left_behind(workdir) == ["nowhere"], "no database, -wal/-shm, columnar copy or report was created"


@pytest.mark.parametrize("command", [["db-check"], ["metrics"], ["tasks", "list"]], ids=" ".join)
def test_default_database_missing_is_named_too(command, workdir, capsys):
    assert main(command) == 2
    assert str(workdir / "autopack.db") in capsys.readouterr().err
    assert not (workdir / "autopack.db").exists()


def test_doctor_reports_the_missing_file_and_creates_nothing(workdir, capsys):
    missing = workdir / "telemetry.db"
    code = main(["--database-url", f"sqlite:///{missing}", "doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"file {missing} does not exist" in out
    assert _left_behind(workdir) == []


@pytest.mark.parametrize("command", [["db", "upgrade"], ["import", "events.ndjson"]], ids=" ".join)
def test_commands_that_write_still_create_the_database(command, workdir, capsys):
    (workdir / "events.ndjson").write_text("")
    target = workdir / "new.db"
    assert main(["--database-url", f"sqlite:///{target}", *command]) == 0
    assert target.exists()
    capsys.readouterr()
    # ...and then a read-only command works on it.
    assert main(["--database-url", f"sqlite:///{target}", "db-check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["is_empty"] is True
