"""`export`, `import`, `spool replay`, and the schema rule as the command line applies them."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from autopack_pipeline.cli import main
from autopack_pipeline.storage import spool
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import current_revision, head_revision
from autopack_pipeline_tests.support.databases import PG_ADMIN_URL, count_rows
from autopack_pipeline_tests.unit.storage.test_autopack_upgrade import autopack_engine  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)  # every command here names its database


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled(seeded: Engine, make_event) -> Engine:
    for n in range(3):
        assert record_estimation_event(seeded, make_event(actual_output_tokens=700 + n), respect_flag=False)
    return seeded


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_export_to_stdout_is_pure_ndjson_with_the_banner_on_stderr(filled: Engine, capsys) -> None:
    code, out, err = run(capsys, "--database-url", url_of(filled), "export")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3 and {r["actual_output_tokens"] for r in records} == {700, 701, 702}
    assert "Telemetry database:" in err and "Exported 3 events" in err


def test_export_to_a_file_and_import_it_elsewhere(filled: Engine, tmp_path: Path, capsys) -> None:
    target = tmp_path / "out" / "events.ndjson"
    code, out, _err = run(capsys, "--database-url", url_of(filled), "export", "-o", str(target))
    assert code == 0 and f"Exported 3 events to {target}" in out
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out, err = run(capsys, "--database-url", other, "import", str(target))
    assert code == 0 and "3 events imported, 0 already present, 0 rejected" in out and "\r" not in err
    code, out, _err = run(capsys, "--database-url", other, "import", str(target))
    assert code == 0 and "0 events imported, 3 already present" in out


def test_empty_export_is_refused_unless_allowed(engine: Engine, capsys) -> None:
    code, out, err = run(capsys, "--database-url", url_of(engine), "export")
    assert code == 1 and out == "" and "no token-estimation events" in err and "DATABASE_URL" in err
    code, out, _err = run(capsys, "--database-url", url_of(engine), "export", "--allow-empty-db")
    assert code == 0 and out == ""


GOOD = {"run_id": "r", "phase_id": "p", "category": "tests", "complexity": "low", "predicted_output_tokens": 900,
        "actual_output_tokens": 800, "success": True, "timestamp": "2025-12-29T22:28:12"}


def test_import_with_bad_lines_reports_them_and_exits_1(engine: Engine, tmp_path: Path, capsys) -> None:
    source = tmp_path / "events.ndjson"
    lines = [json.dumps(GOOD), "garbage", json.dumps({**GOOD, "phase_id": "p2"}),
             json.dumps({**GOOD, "complexity": "galactic"})]
    source.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--database-url", url_of(engine), "import", str(source))
    assert code == 1
    assert f"{source}:2: rejected: not JSON" in err
    assert f"{source}:4: rejected: unknown complexity 'galactic'" in err
    assert "2 events imported, 0 already present, 2 rejected" in out
    quarantine = tmp_path / "events.ndjson.rejected.ndjson"
    assert str(quarantine) in out
    assert [json.loads(q)["raw"] for q in quarantine.read_text().splitlines()] == [lines[1], lines[3]]
    assert count_rows(engine, "token_estimation_v2_events") == 2


def test_import_json_and_a_chosen_quarantine_file(engine: Engine, tmp_path: Path, capsys) -> None:
    source = tmp_path / "events.ndjson"
    source.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "success": None}) + "\n")
    chosen = tmp_path / "q" / "bad.ndjson"
    code, out, _err = run(capsys, "--database-url", url_of(engine), "import", str(source),
                          "--quarantine", str(chosen), "--json")
    assert code == 1
    document = json.loads(out)
    assert (document["imported"], document["rejected"]) == (1, 1)
    assert document["rejections"] == [{"line": 2, "reason": "missing required field success"}]
    assert document["quarantine_file"] == str(chosen) and chosen.exists()
    assert document["database"]["url"].startswith(engine.url.get_backend_name())


def test_import_of_a_missing_file_is_a_usage_error(engine: Engine, tmp_path: Path, capsys) -> None:
    code, _out, err = run(capsys, "--database-url", url_of(engine), "import", str(tmp_path / "nope.ndjson"))
    assert code == 2 and "no such file" in err


def test_a_new_database_is_created_by_a_command_that_writes(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'brand-new.db'}"
    (tmp_path / "empty.ndjson").write_text("")
    code, _out, _err = run(capsys, "--database-url", url, "import", str(tmp_path / "empty.ndjson"))
    assert code == 0
    assert current_revision(make_engine(url)) == head_revision()


def test_an_old_schema_is_refused_with_the_upgrade_command(autopack_engine: Engine, capsys) -> None:  # noqa: F811
    url = url_of(autopack_engine)
    for command in (["export"], ["db-check"], ["metrics"], ["import", __file__]):
        code, _out, err = run(capsys, "--database-url", url, *command)
        assert code == 1, command
        assert "no revision" in err and head_revision() in err and "autopack-telemetry db upgrade" in err
    assert current_revision(autopack_engine) is None
    code, _out, _err = run(capsys, "--database-url", url, "db", "upgrade")
    assert code == 0 and current_revision(autopack_engine) == head_revision()
    code, out, _err = run(capsys, "--database-url", url, "export")
    assert code == 0 and len(out.splitlines()) == 3


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_schema_refusal_masks_the_password(autopack_engine: Engine, capsys) -> None:  # noqa: F811
    url = autopack_engine.url.set(password="hunter2-secret").render_as_string(hide_password=False)
    code, _out, err = run(capsys, "--database-url", url, "db-check")
    assert code == 1 and "hunter2-secret" not in err and "***" in err


def test_spool_replay_after_an_outage(tmp_path: Path, make_event, capsys) -> None:
    home = tmp_path / "db"
    home.mkdir()
    url = f"sqlite:///{home / 'telemetry.db'}"
    engine = make_engine(url)
    assert main(["--database-url", url, "db", "upgrade"]) == 0
    ensure_run_and_phase(engine, "run-1", "phase-1")
    engine.dispose()
    shutil.move(home, tmp_path / "db-away")  # the database is gone: writes cannot even open it
    for n in range(2):
        assert record_estimation_event(engine, make_event(event_uid=f"e{n}"), respect_flag=False) is False
    engine.dispose()
    capsys.readouterr()

    code, out, _err = run(capsys, "--database-url", url, "spool", "replay", "--json")
    document = json.loads(out)
    assert code == 1 and document["still_failing"] == 2 and document["written"] == 0
    assert spool.pending_count(url) == 2

    shutil.move(tmp_path / "db-away", home)
    code, out, _err = run(capsys, "--database-url", url, "spool", "replay")
    assert code == 0 and "2 written, 0 already stored, 0 still failing, 0 rejected" in out
    assert count_rows(engine, "token_estimation_v2_events") == 2
    code, out, _err = run(capsys, "--database-url", url, "spool", "replay")
    assert code == 0 and "Nothing to replay" in out
    engine.dispose()


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_spool_replay_against_an_unreachable_postgres(database_url: str, make_event, capsys) -> None:
    missing = sa.engine.make_url(PG_ADMIN_URL).set(database=f"absent_{uuid.uuid4().hex[:8]}", password="pw-9z!x")
    url = missing.render_as_string(hide_password=False)
    engine = make_engine(url)
    assert record_estimation_event(engine, make_event(), respect_flag=False) is False
    engine.dispose()
    code, out, err = run(capsys, "--database-url", url, "spool", "replay")
    assert code == 1 and "0 written, 0 already stored, 1 still failing" in out and "still unavailable" in out
    assert "pw-9z!x" not in out + err
