"""`db backup`: a copy of a SQLite database in WAL mode that holds every committed row, even rows a
plain copy of the .db file misses because they are still in the -wal file."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from autopack_pipeline.cli import main


def _events(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        try:
            return connection.execute("SELECT count(*) FROM token_estimation_v2_events").fetchone()[0]
        except sqlite3.OperationalError:
            return -1


@pytest.fixture
def wal_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """A database whose 25 newest events are committed but still only in the WAL: another connection
    stays open (so closing the writer does not checkpoint) with automatic checkpoints off."""
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "autopack.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    assert main(["db", "upgrade"]) == 0
    holder = sqlite3.connect(database)
    holder.execute("PRAGMA wal_autocheckpoint=0")
    assert holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    lines = [json.dumps({"run_id": "r", "phase_id": f"p{n}", "category": "tests", "complexity": "low",
                         "predicted_output_tokens": 1000, "actual_output_tokens": 1100, "success": True})
             for n in range(25)]
    (tmp_path / "events.ndjson").write_text("\n".join(lines) + "\n")
    assert main(["import", "events.ndjson"]) == 0
    capsys.readouterr()
    try:
        yield database
    finally:
        holder.close()


def test_a_plain_copy_misses_rows_the_backup_keeps(wal_database: Path, tmp_path: Path, capsys) -> None:
    assert Path(f"{wal_database}-wal").stat().st_size > 0
    plain = tmp_path / "plain-copy.db"
    shutil.copyfile(wal_database, plain)
    assert _events(plain) < 25  # the hazard the README warns about

    previous = os.umask(0o022)
    try:
        assert main(["db", "backup", "backup.db", "--json"]) == 0
    finally:
        os.umask(previous)
    report = json.loads(capsys.readouterr().out)
    backup = tmp_path / "backup.db"
    assert report["backup_file"] == str(backup) and report["events"] == 25
    assert _events(backup) == 25
    assert not Path(f"{backup}-wal").exists()  # one self-contained file
    with sqlite3.connect(backup) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".backup.db")] == []


def test_backup_refuses_the_database_itself_and_a_missing_database(wal_database: Path, tmp_path: Path, capsys) -> None:
    assert main(["db", "backup", str(wal_database)]) == 2
    assert str(wal_database) in capsys.readouterr().err
    assert _events(wal_database) == 25
    missing = tmp_path / "missing.db"
    assert main(["db", "backup", "out.db", "--database-url", f"sqlite:///{missing}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()


def test_postgresql_gets_the_pg_dump_command_without_the_password(capsys) -> None:
    assert main(["--database-url", "postgresql://telemetry:s3cret@127.0.0.1:5432/autopack", "db", "backup", "x"]) == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err and "127.0.0.1:5432/autopack" in err and "s3cret" not in err
