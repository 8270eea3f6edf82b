"""User mistakes end in one line naming the path or value, and the documented exit code: never a
traceback. Run in-process through ``cli.main``; every case uses real files and a real SQLite database."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from autopack_pipeline.cli import main

TARGETED = ["--category", "tests", "--complexity", "low", "--phases", "1"]


def _event_line(n: int) -> str:
    return json.dumps({
        "run_id": "r1", "phase_id": f"p{n}", "category": "tests", "complexity": "low",
        "predicted_output_tokens": 1000, "actual_output_tokens": 900 + 40 * n, "success": True,
        "timestamp": f"2025-01-01T00:{n:02d}:00",
    })


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Path:
    """A working directory with a populated database, a directory and a plain file to misuse."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("AUTOPACK_RECORD_FILE", "AUTOPACK_REPORTS_DIR", "AUTOPACK_SEEDS_DIR", "AUTOPACK_LLM_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{work / 'telemetry.db'}")
    (work / "adir").mkdir()
    (work / "afile").write_text("a plain file\n")
    (work / "events.ndjson").write_text("".join(_event_line(n) + "\n" for n in range(30)))
    (work / "bad.ndjson").write_text("not json\n" + _event_line(99) + "\n")
    (work / "logs").mkdir()
    (work / "logs" / "a.log").write_text(
        "[TokenEstimationV2] predicted_output=1000 actual_output=1200 success=True category=tests "
        "complexity=low deliverables=1\n")
    assert main(["import", "events.ndjson"]) == 0
    capsys.readouterr()
    return work


def _set_future_revision(work: Path) -> None:
    with sqlite3.connect(work / "telemetry.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")


# (case id, argv, environment, expected exit code, text the message must contain)
CASES = [
    ("phases-is-directory", ["collect", "--phases", "adir"], {}, 2, "adir"),
    ("phases-unreadable", ["collect", "--phases", "afile/phases.yaml"], {}, 2, "afile/phases.yaml"),
    ("record-is-directory", ["collect", "--record", "adir", *TARGETED], {}, 2, "adir"),
    ("record-unwritable", ["collect", "--record", "afile/rec.ndjson", *TARGETED], {}, 2, "afile/rec.ndjson"),
    ("record-env-unwritable", ["collect", *TARGETED], {"AUTOPACK_RECORD_FILE": "afile/rec.ndjson"}, 2,
     "afile/rec.ndjson"),
    ("record-env-directory", ["collect", *TARGETED], {"AUTOPACK_RECORD_FILE": "adir"}, 2, "adir"),
    ("reports-env-is-file", ["calibrate", "--force"], {"AUTOPACK_REPORTS_DIR": "afile"}, 2, "afile"),
    ("reports-env-unwritable", ["calibrate", "--force"], {"AUTOPACK_REPORTS_DIR": "afile/reports"}, 2,
     "afile/reports"),
    ("seeds-env-missing", ["collect", *TARGETED], {"AUTOPACK_SEEDS_DIR": "no-such-seeds"}, 2, "AUTOPACK_SEEDS_DIR"),
    ("seeds-env-is-file", ["collect", *TARGETED], {"AUTOPACK_SEEDS_DIR": "afile"}, 2, "AUTOPACK_SEEDS_DIR"),
    ("database-url-mysql", ["db-check"], {"DATABASE_URL": "mysql://user:hunter2@db/telemetry"}, 2, "mysql"),
    ("database-url-memory-collect", ["collect", *TARGETED], {"DATABASE_URL": "sqlite:///:memory:"}, 2, ":memory:"),
    ("output-dir-is-file", ["calibrate", "--force", "--output-dir", "afile"], {}, 2, "afile"),
    ("output-dir-unwritable", ["calibrate", "--force", "--output-dir", "afile/out"], {}, 2, "afile/out"),
    ("output-dir-permission", ["calibrate", "--force", "--output-dir", "/sys/autopack-reports"], {}, 2,
     "/sys/autopack-reports"),
    ("export-to-directory", ["export", "-o", "adir"], {}, 2, "adir"),
    ("export-unwritable", ["export", "-o", "afile/events.ndjson"], {}, 2, "afile/events.ndjson"),
    ("export-permission", ["export", "-o", "/sys/autopack-events.ndjson"], {}, 2, "/sys/autopack-events.ndjson"),
    ("quarantine-is-directory", ["import", "bad.ndjson", "--quarantine", "adir"], {}, 2, "adir"),
    ("quarantine-unwritable", ["import", "bad.ndjson", "--quarantine", "afile/q.ndjson"], {}, 2, "afile/q.ndjson"),
    ("analyze-logs-output-directory", ["analyze-logs", "--log-dir", "logs", "--output", "adir"], {}, 2, "adir"),
    ("analyze-logs-output-unwritable", ["analyze-logs", "--log-dir", "logs", "--output", "afile/r.md"], {}, 2,
     "afile/r.md"),
    ("db-upgrade-future-revision", ["db", "upgrade"], {"_future_revision": "1"}, 1, "9999"),
    ("phases-count-too-large", ["collect", "--category", "tests", "--complexity", "low", "--phases", "99999999999"],
     {}, 2, "99999999999"),
]


@pytest.mark.parametrize("argv, env, code, named", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_user_mistake_is_one_line_with_exit_code(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    argv: list[str], env: dict[str, str], code: int, named: str,
) -> None:
    if "/sys/" in named and os.access("/sys", os.W_OK) and not Path("/sys").is_mount():
        pytest.skip("/sys is writable here")
    for name, value in env.items():
        if name == "_future_revision":
            _set_future_revision(workspace)
        else:
            monkeypatch.setenv(name, value)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("autopack-telemetry:")]
    assert len(message) == 1, err
    assert named in message[0]
    assert "hunter2" not in err


def test_database_url_after_the_subcommand(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    other = workspace / "other.db"
    assert main(["db", "upgrade", "--database-url", f"sqlite:///{other}"]) == 0  # creates it
    assert str(other) in capsys.readouterr().out
    assert main(["db-check", "--database-url", f"sqlite:///{other}"]) == 0
    assert str(other) in capsys.readouterr().out


def test_database_url_before_the_subcommand_still_wins_when_not_repeated(
    workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    other = workspace / "other.db"
    assert main(["--database-url", f"sqlite:///{other}", "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--database-url", f"sqlite:///{other}", "db-check"]) == 0
    assert str(other) in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["db-check", "--json", "--database-url", "mysql://u@h/db"],
    ["metrics", "--json", "--under-multiplier", "not-a-number"],
    ["import", "no-such-file.ndjson", "--json"],
    ["metrics", "--json", "--run-id", "no-such-run"],
], ids=["bad-url", "bad-argument", "missing-file", "refused"])
def test_every_json_error_is_a_json_document(workspace: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    code = main(argv)
    out = capsys.readouterr().out
    document = json.loads(out)
    assert code in (1, 2) and document["exit_code"] == code and document["error"]


def test_a_database_error_is_one_line_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A file that is not a SQLite database: SQLAlchemy's error, shown as the driver's message.
    (tmp_path / "not-a-database.db").write_bytes(b"not a database, " * 512)
    code = main(["--database-url", f"sqlite:///{tmp_path / 'not-a-database.db'}", "calibrate", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip() == "autopack-telemetry: database error: file is not a database"
    assert json.loads(captured.out) == {"error": "database error: file is not a database", "exit_code": 1}
