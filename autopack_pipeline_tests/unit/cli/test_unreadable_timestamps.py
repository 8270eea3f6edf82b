"""A row whose timestamp is not a date (SQLite keeps any text) is named and left out; the rest goes on.

Before, one such row stopped `metrics`, `calibrate`, `tasks generate`, `doctor` and `export` with exit 2
and "Invalid isoformat string" (or "month must be in 1..12"), naming no table, row or column.
PostgreSQL's timestamp type refuses such values, so these tests are SQLite's.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from autopack_pipeline.cli import main
from autopack_pipeline.storage.timestamps import parse_timestamp_text
from autopack_pipeline_tests.support.calibration_cli_support import REPO_SEEDS, populate

EVENTS = 30
BAD_ID = 3


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("AUTOPACK_COLUMNAR_DIR", raising=False)
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", str(REPO_SEEDS))
    monkeypatch.setenv("AUTOPACK_REPORTS_DIR", str(tmp_path / "reports"))
    path = tmp_path / "telemetry.db"
    populate(f"sqlite:///{path}", [5000] * EVENTS)  # underestimated: the gate opens
    return path


def corrupt(path: Path, column: str, value: object, event_id: int = BAD_ID) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(f"UPDATE token_estimation_v2_events SET {column} = ? WHERE event_id = ?", (value, event_id))


def cli(capsys, path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--database-url", f"sqlite:///{path}", *args])
    out, err = capsys.readouterr()
    return code, out, err


def named(err: str, value: str, column: str = "timestamp", event_id: int = BAD_ID) -> bool:
    return f"token_estimation_v2_events event_id {event_id} {column}={value!r}" in err and "Traceback" not in err


BAD_VALUES = ["not a date", "2025-13-45 99:00:00", 12345]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_metrics_leaves_the_row_out_and_names_it(db, capsys, value):
    corrupt(db, "timestamp", value)
    code, out, err = cli(capsys, db, "metrics", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["tier1"]["total_samples"] == EVENTS - 1
    assert document["unreadable_timestamps"]["count"] == 1
    assert document["unreadable_timestamps"]["rows"] == [
        {"table": "token_estimation_v2_events", "event_id": BAD_ID, "column": "timestamp", "value": str(value)}]
    assert named(err, str(value))
    assert err.count("unreadable timestamp") == 1  # one warning


def test_metrics_of_chosen_runs_reads_the_database_and_names_it_too(db, capsys):
    corrupt(db, "timestamp", "not a date")
    code, out, err = cli(capsys, db, "metrics", "--json", "--run-id", "run-1")
    assert code == 0, err
    assert json.loads(out)["tier1"]["total_samples"] == EVENTS - 1 and named(err, "not a date")


def test_a_fixed_row_joins_the_analysis_again(db, capsys):
    corrupt(db, "timestamp", "not a date")
    assert json.loads(cli(capsys, db, "metrics", "--json")[1])["tier1"]["total_samples"] == EVENTS - 1
    corrupt(db, "timestamp", "2025-01-31 12:00:00")
    code, out, err = cli(capsys, db, "metrics", "--json")
    assert json.loads(out)["tier1"]["total_samples"] == EVENTS and "unreadable" not in err


def test_the_last_row_unreadable_is_not_read_again_and_again(db, capsys):
    corrupt(db, "timestamp", "x, y", event_id=EVENTS)  # a comma: the CSV extraction must not split it
    for _ in range(2):
        code, out, err = cli(capsys, db, "metrics", "--json")
        assert code == 0 and json.loads(out)["tier1"]["total_samples"] == EVENTS - 1
        assert named(err, "x, y", event_id=EVENTS)


def test_the_row_by_row_extraction_sets_it_aside_too(db, capsys, monkeypatch):
    from autopack_pipeline.storage import columnar

    def refuse(*_args):
        raise pa.ArrowInvalid("odd types in this batch")

    monkeypatch.setattr(columnar._BatchReader, "_sqlite_csv", refuse)  # as when a batch holds odd types
    corrupt(db, "timestamp", "2025-13-45 99:00:00")
    code, out, err = cli(capsys, db, "metrics", "--json")
    assert code == 0, err
    assert json.loads(out)["tier1"]["total_samples"] == EVENTS - 1 and named(err, "2025-13-45 99:00:00")


def test_calibrate_runs_without_the_row(db, capsys):
    corrupt(db, "timestamp", "2025-13-45 99:00:00")
    code, out, err = cli(capsys, db, "calibrate", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["gate"]["open"] is True and document["unreadable_timestamps"]["count"] == 1
    assert named(err, "2025-13-45 99:00:00")


def test_tasks_generate_runs_without_the_row(db, capsys):
    corrupt(db, "timestamp", "not a date")
    code, out, err = cli(capsys, db, "tasks", "generate", "--json")
    assert code == 0, err
    assert json.loads(out)["unreadable_timestamps"]["count"] == 1 and named(err, "not a date")


def test_doctor_reports_it_as_a_warning(db, capsys):
    corrupt(db, "timestamp", "not a date")
    code, out, _err = cli(capsys, db, "doctor", "--json")
    checks = {check["name"]: check for check in json.loads(out)["checks"]}
    assert code == 0
    finding = checks["unreadable_timestamps"]
    assert finding["status"] == "warn" and finding["observed"] == 1
    assert "token_estimation_v2_events event_id 3 timestamp='not a date'" in finding["advice"][0]
    assert checks["clean_samples"]["observed"] == EVENTS - 1


@pytest.mark.parametrize("column", ["timestamp", "created_at"])
def test_export_writes_every_row_the_bad_one_as_stored(db, capsys, tmp_path, column):
    corrupt(db, column, "not a date")
    code, _out, err = cli(capsys, db, "export", "-o", "events.ndjson")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "events.ndjson").read_text().splitlines()]
    assert len(records) == EVENTS
    assert sum(record[column] == "not a date" for record in records) == 1
    good = [record for record in records if record[column] != "not a date"]
    assert all("T" in record["timestamp"] and "T" in record["created_at"] for record in good)  # ISO, as before
    assert f"Exported {EVENTS} events" in _out and named(err, "not a date", column=column)


def test_a_phase_row_with_a_bad_timestamp_stops_nothing(db, capsys):
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE phases SET created_at = 'garbage', started_at = '2025-13-45' WHERE id = 2")
    for command in (["metrics"], ["calibrate"], ["tasks", "generate"], ["doctor"], ["export", "-o", "e.ndjson"]):
        code, _out, err = cli(capsys, db, *command)
        assert code == 0, (command, err)


def test_parsing_mixes_offsets_and_naive_values_correctly():
    # pandas 2.x, in one call, gives a naive value that follows an offset-bearing one that offset.
    values = pa.array(["2025-01-01 12:00:00+02:00", "2025-01-01 12:00:00.5", "bad", None, "3000-01-01 00:00:00"])
    parsed, unreadable = parse_timestamp_text(values)
    assert [None if v is None else v.isoformat() for v in parsed.to_pylist()] == [
        "2025-01-01T10:00:00+00:00", "2025-01-01T12:00:00.500000+00:00", None, None, "3000-01-01T00:00:00+00:00"]
    assert unreadable.tolist() == [False, False, True, False, False]
