"""NDJSON export and import: round trips, Autopack's format, bad lines, idempotence, batches."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import transfer
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline_tests.support.databases import PG_ADMIN_URL, _admin_engine, count_rows, fetch_all

EVENTS = "token_estimation_v2_events"


@contextmanager
def another_database(backend: str, tmp_path: Path) -> Iterator[Engine]:
    """A second, migrated, empty database on ``backend``."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / f'other-{uuid.uuid4().hex[:6]}.db'}"
        name = None
    else:
        name = f"autopack_test_{uuid.uuid4().hex[:12]}_b"
        with _admin_engine().connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade_database(engine)
        yield engine
    finally:
        engine.dispose()
        if name:
            admin = _admin_engine()
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


@pytest.fixture
def varied(engine: Engine, make_event) -> Engine:
    """A database with events that use every column we export."""
    for run, phase in [("run-a", "p1"), ("run-a", "p2"), ("run-b", "p1")]:
        ensure_run_and_phase(engine, run, phase)
    events = [
        make_event(run_id="run-a", phase_id="p1", attempt=1, timestamp=datetime(2025, 12, 1, 10, 0, 0, 123456)),
        make_event(run_id="run-a", phase_id="p1", attempt=2, truncated=True, stop_reason="max_tokens", success=False,
                   actual_output_tokens=8192, timestamp=datetime(2025, 12, 1, 10, 5)),
        make_event(run_id="run-a", phase_id="p2", category="documentation", complexity="medium",
                   deliverables=[f"docs/page_{i}.md" for i in range(25)], api_reference_required=True,
                   examples_required=False, context_quality="some", timestamp=datetime(2025, 12, 2)),
        make_event(run_id="run-b", phase_id="p1", actual_is_total_tokens=True, phase_completed=True,
                   is_sot_file=True, sot_file_name="build_log.md", sot_entry_count_hint=3,
                   actual_max_tokens=None, timestamp=datetime(2025, 11, 30)),
    ]
    for item in events:
        assert record_estimation_event(engine, item, respect_flag=False)
    return engine


def export_records(engine: Engine) -> list[dict]:
    out = io.StringIO()
    transfer.write_export(engine, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def import_bytes(engine: Engine, data: bytes, tmp_path: Path, **kwargs) -> transfer.ImportReport:
    source = tmp_path / f"in-{uuid.uuid4().hex[:6]}.ndjson"
    source.write_bytes(data)
    return transfer.import_file(engine, source, **kwargs)


def test_export_has_every_column_newest_first(varied: Engine) -> None:
    records = export_records(varied)
    assert [r["timestamp"] for r in records] == sorted((r["timestamp"] for r in records), reverse=True)
    assert list(records[0]) == transfer.export_columns()
    columns = {c["name"] for c in sa.inspect(varied).get_columns(EVENTS)} - {"deliverables_json"}
    assert set(records[0]) == columns | {"deliverables"}
    docs = next(r for r in records if r["phase_id"] == "p2")
    assert docs["deliverables"] == [f"docs/page_{i}.md" for i in range(20)] and docs["deliverable_count"] == 25
    assert records[-1]["actual_is_total_tokens"] is True and records[-1]["sot_file_name"] == "build_log.md"
    assert records[0]["timestamp"] == "2025-12-02T00:00:00"


def test_export_lines_are_written_as_json_dumps_writes_them(varied: Engine, make_event) -> None:
    """The line format stays the standard library's (", " and ": " separators, text as UTF-8, floats as repr)."""
    assert record_estimation_event(varied, make_event(run_id="run-b", phase_id="p1", deliverables=["docs/café.md"],
                                                      timestamp=datetime(2025, 12, 3)), respect_flag=False)
    out = io.StringIO()
    transfer.write_export(varied, out)
    lines = out.getvalue().splitlines()
    assert '"docs/café.md"' in lines[0]
    assert lines == [json.dumps(json.loads(line), ensure_ascii=False) for line in lines]


def test_round_trip_into_a_fresh_database_is_equal(varied: Engine, backend: str, tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    assert transfer.export_to_file(varied, path) == 4
    original = {r["event_uid"]: r for r in export_records(varied)}
    with another_database(backend, tmp_path) as fresh:
        report = transfer.import_file(fresh, path)
        assert (report.lines, report.imported, report.duplicates, report.rejected) == (4, 4, 0, 0)
        copied = {r["event_uid"]: r for r in export_records(fresh)}
        assert copied.keys() == original.keys()
        for uid, record in original.items():
            assert {k: v for k, v in copied[uid].items() if k != "event_id"} == {
                k: v for k, v in record.items() if k != "event_id"}
        assert sorted((r["run_id"], r["phase_id"]) for r in fetch_all(fresh, "phases", "id")) == [
            ("run-a", "p1"), ("run-a", "p2"), ("run-b", "p1")]
        again = transfer.import_file(fresh, path)
        assert (again.imported, again.duplicates) == (0, 4)
        assert count_rows(fresh, EVENTS) == 4


AUTOPACK_EXPORT = [  # the keys of Autopack's export_token_estimation_telemetry.py, in its order
    {"run_id": "telemetry-collection-v4", "phase_id": "telemetry-p1-string-util", "timestamp": "2025-12-29T22:28:12",
     "category": "implementation", "complexity": "low", "deliverable_count": 1,
     "deliverables": ["examples/telemetry_utils/string_helper.py"], "predicted_output_tokens": 3424,
     "actual_output_tokens": 2900, "selected_budget": 8192, "success": True, "truncated": False,
     "stop_reason": "end_turn", "model": "claude-sonnet-4-5", "smape_percent": 16.6, "waste_ratio": 1.18,
     "underestimated": False},
    {"run_id": "telemetry-collection-v4", "phase_id": "telemetry-p9-readme", "timestamp": "2025-12-29T22:30:00.5",
     "category": "documentation", "complexity": "low_complexity", "deliverable_count": 1, "deliverables": [],
     "predicted_output_tokens": 2600, "actual_output_tokens": 41, "selected_budget": 4096, "success": False,
     "truncated": True, "stop_reason": "max_tokens", "model": "claude-sonnet-4-5", "smape_percent": None,
     "waste_ratio": None, "underestimated": None},
]


def test_autopack_format_imports_with_derived_stable_ids(engine: Engine, tmp_path: Path) -> None:
    data = "".join(json.dumps(r) + "\n" for r in AUTOPACK_EXPORT).encode()
    report = import_bytes(engine, data, tmp_path)
    assert (report.imported, report.rejected) == (2, 0)
    rows = fetch_all(engine, EVENTS, "event_id")
    first, second = rows
    assert first["event_uid"].startswith("imp1-") and first["event_uid"] != second["event_uid"]
    assert first["actual_max_tokens"] is None and first["smape_percent"] == pytest.approx(16.6)
    assert first["timestamp"] == datetime(2025, 12, 29, 22, 28, 12)
    # Canonical vocabulary, the truncation flag mirrored, and the source's 41-token row kept as it was.
    assert (second["category"], second["complexity"]) == ("docs", "low")
    assert second["is_truncated_output"] is True and second["actual_output_tokens"] == 41
    assert second["smape_percent"] is None
    runs = fetch_all(engine, "runs", "id")
    assert [r["id"] for r in runs] == ["telemetry-collection-v4"]
    assert count_rows(engine, "phases") == 2
    again = import_bytes(engine, data, tmp_path)
    assert (again.imported, again.duplicates) == (0, 2)
    assert count_rows(engine, EVENTS) == 2


def test_a_utf8_byte_order_mark_at_the_start_is_accepted(engine: Engine, tmp_path: Path) -> None:
    # Windows editors and PowerShell's Out-File write one; it is not part of the first JSON line.
    data = b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in AUTOPACK_EXPORT).encode()
    report = import_bytes(engine, data, tmp_path)
    assert (report.imported, report.rejected) == (2, 0), report.rejections


def test_a_byte_order_mark_after_the_first_line_is_still_rejected(engine: Engine, tmp_path: Path) -> None:
    first, second = (json.dumps(r).encode() for r in AUTOPACK_EXPORT)
    report = import_bytes(engine, first + b"\n\xef\xbb\xbf" + second + b"\n", tmp_path)
    assert (report.imported, report.rejected) == (1, 1)
    assert report.rejections[0]["line"] == 2


def test_metrics_are_computed_when_the_source_has_none(engine: Engine, tmp_path: Path) -> None:
    record = {k: v for k, v in AUTOPACK_EXPORT[0].items() if k not in ("smape_percent", "waste_ratio", "underestimated")}
    record["actual_output_tokens"] = 4000
    import_bytes(engine, (json.dumps(record) + "\n").encode(), tmp_path)
    row = fetch_all(engine, EVENTS, "event_id")[0]
    assert row["underestimated"] is True and row["waste_ratio"] == pytest.approx(3424 / 4000)


GOOD = json.dumps(AUTOPACK_EXPORT[0])


def bad(**changes) -> str:
    record = dict(AUTOPACK_EXPORT[0], phase_id=f"bad-{uuid.uuid4().hex[:6]}")
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


BAD_LINES = [
    (b"{not json", "not JSON"),
    (b'["a", "list"]', "not a JSON object"),
    (bad(success=...).encode(), "missing required field success"),
    (bad(run_id=..., category=...).encode(), "missing required fields run_id, category"),
    (bad(predicted_output_tokens="1200").encode(), "'predicted_output_tokens' must be an integer"),
    (bad(success="yes").encode(), "'success' must be true or false"),
    (bad(actual_output_tokens=-5).encode(), "'actual_output_tokens' is negative"),
    (bad(actual_output_tokens=200_001).encode(), "'actual_output_tokens' is absurdly large"),
    (bad(predicted_output_tokens=1_000_001).encode(), "'predicted_output_tokens' is absurdly large"),
    (bad(complexity="extreme").encode(), "unknown complexity 'extreme'"),
    (bad(timestamp="yesterday at noon").encode(), "unreadable timestamp"),
    (bad(timestamp=1735510092).encode(), "must be an ISO-8601 string"),
    (bad(deliverables="a.py").encode(), "'deliverables' must be a list"),
    (bad().replace('"smape_percent": 16.6', '"smape_percent": NaN').encode(), "not JSON"),
    (b'{"run_id": "\xff\xfe"}', "not valid UTF-8"),
    (bad(run_id="r\u0000").encode(), "NUL"),
    (bad(run_id="r" * 300).encode(), "longer than 255"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[reason for _line, reason in BAD_LINES])
def test_each_bad_line_is_reported_and_quarantined(engine: Engine, tmp_path: Path, line: bytes, reason: str) -> None:
    data = GOOD.encode() + b"\n\n" + line + b"\n" + bad().encode() + b"\n"
    report = import_bytes(engine, data, tmp_path)
    assert (report.lines, report.imported, report.rejected) == (3, 2, 1)
    assert report.rejections[0]["line"] == 3  # physical line number, blank lines counted
    assert reason in report.rejections[0]["reason"]
    quarantined = [json.loads(q) for q in Path(report.quarantine_file).read_text().splitlines()]
    assert len(quarantined) == 1 and quarantined[0]["line"] == 3 and reason in quarantined[0]["reason"]
    assert quarantined[0]["raw"].encode("utf-8", errors="surrogateescape") == line  # verbatim
    assert count_rows(engine, EVENTS) == 2 and count_rows(engine, "phases") == 2


def test_no_quarantine_file_without_rejections(engine: Engine, tmp_path: Path) -> None:
    report = import_bytes(engine, (GOOD + "\n").encode(), tmp_path)
    assert report.quarantine_file is None and not list(tmp_path.glob("*.rejected.ndjson"))


def _refuse_poison(engine: Engine, backend: str) -> None:
    """A trigger that makes the database refuse rows of run 'poison' (a constraint we cannot pre-check)."""
    with engine.begin() as connection:
        if backend == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON token_estimation_v2_events WHEN NEW.run_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.run_id = 'poison' THEN "
                "RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON token_estimation_v2_events FOR EACH ROW EXECUTE FUNCTION refuse()")


def test_a_row_the_database_refuses_is_quarantined_and_leaves_nothing_behind(
    engine: Engine, backend: str, tmp_path: Path
) -> None:
    _refuse_poison(engine, backend)
    lines = [bad(), bad(run_id="poison"), bad(), bad()]
    report = import_bytes(engine, ("\n".join(lines) + "\n").encode(), tmp_path, batch_size=10)
    assert (report.imported, report.rejected) == (3, 1)
    assert report.rejections[0]["line"] == 2 and "database refused the row" in report.rejections[0]["reason"]
    assert "poisoned row" in report.rejections[0]["reason"]
    # The refused line is not half-imported: its run and phase rows were rolled back with it.
    assert [r["id"] for r in fetch_all(engine, "runs", "id")] == ["telemetry-collection-v4"]
    assert count_rows(engine, "phases") == 3 and count_rows(engine, EVENTS) == 3


def test_an_outage_stops_the_import_without_quarantining_good_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=50"))
    data = "".join(bad() + "\n" for _ in range(5)).encode()
    holder = sqlite3.connect(engine.url.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        report = import_bytes(engine, data, tmp_path, batch_size=2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in report.aborted and report.imported == 0 and report.rejected == 0
    assert report.quarantine_file is None
    report = import_bytes(engine, data, tmp_path, batch_size=2)
    assert (report.imported, report.aborted) == (5, None)
    engine.dispose()


def test_failed_export_leaves_the_previous_file_intact(varied: Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "exports" / "export.ndjson"
    path.parent.mkdir()
    path.write_text("previous export\n")

    def broken(engine: Engine, unreadable: list | None = None) -> Iterator[dict]:
        yield {"partial": True}
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(transfer.export, "iter_export", broken)
    with pytest.raises(RuntimeError):
        transfer.export_to_file(varied, path)
    assert path.read_text() == "previous export\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["export.ndjson"]  # no temporary file left


def test_derived_uid_is_stable_and_content_sensitive() -> None:
    at = datetime(2025, 1, 1)
    uid: Callable[..., str] = transfer.derive_event_uid
    assert uid("r", "p", at, 1, 2, "tests") == uid("r", "p", at, 1, 2, "tests")
    assert len({uid("r", "p", at, 1, 2, "tests"), uid("r", "p", at, 1, 3, "tests"), uid("r", "p", None, 1, 2, "tests"),
                uid("r", "q", at, 1, 2, "tests")}) == 4
    assert len(uid("r", "p", at, 1, 2, "tests")) <= 64
