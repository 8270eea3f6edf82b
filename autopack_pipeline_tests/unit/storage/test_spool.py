"""Nothing lost: writes that fail while the database is locked or unreachable go to the spool and
come back, exactly once, on the next successful write or an explicit replay."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import spool
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import (
    SPOOL_INSERTERS,
    ensure_run_and_phase,
    record_escalation_event,
    record_estimation_event,
)
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline_tests.support.databases import (
    PG_ADMIN_URL,
    PHASE_ID,
    RUN_ID,
    _admin_engine,
    count_rows,
    fetch_all,
)
from autopack_pipeline_tests.support.writer_processes import append_to_spool

EVENTS = "token_estimation_v2_events"
ESCALATIONS = "token_budget_escalation_events"
ESCALATION = {
    "run_id": RUN_ID, "phase_id": PHASE_ID, "attempt_index": 1, "reason": "truncation", "was_truncated": True,
    "output_utilization": 100.0, "escalation_factor": 1.25, "base_value": 8192, "base_source": "selected_budget",
    "retry_max_tokens": 10240, "selected_budget": 8192, "actual_max_tokens": 8192, "tokens_used": 8192,
}


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(directory))
    return directory


def impatient(url: str) -> Engine:
    """An engine that gives up on a SQLite lock after 50 ms instead of 30 s."""
    engine = make_engine(url)

    def short_timeout(dbapi_connection, _record) -> None:  # runs after make_engine's own listener
        dbapi_connection.execute("PRAGMA busy_timeout=50")

    event.listen(engine, "connect", short_timeout)
    return engine


@contextmanager
def locked(engine: Engine) -> Iterator[None]:
    """Another connection holds SQLite's write lock (as a long transaction in another process would)."""
    holder = sqlite3.connect(engine.url.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def sqlite_seeded(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    upgrade_database(url)
    engine = impatient(url)
    ensure_run_and_phase(engine, RUN_ID, PHASE_ID)
    yield engine
    engine.dispose()


def spooled_lines(engine: Engine) -> list[dict]:
    path = spool.spool_path(engine)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_locked_database_spools_events_and_replay_writes_them_once(sqlite_seeded: Engine, make_event) -> None:
    events = [make_event(event_uid=f"uid-{n}", actual_output_tokens=500 + n) for n in range(3)]
    with locked(sqlite_seeded):
        assert [record_estimation_event(sqlite_seeded, e, respect_flag=False) for e in events] == [False] * 3
        assert record_escalation_event(sqlite_seeded, **ESCALATION) is False
    assert count_rows(sqlite_seeded, EVENTS) == 0
    lines = spooled_lines(sqlite_seeded)
    assert [line["table"] for line in lines] == [EVENTS] * 3 + [ESCALATIONS]
    assert [line["row"]["event_uid"] for line in lines[:3]] == ["uid-0", "uid-1", "uid-2"]
    assert all("database is locked" in line["error"] for line in lines)

    report = spool.replay(sqlite_seeded, SPOOL_INSERTERS)
    assert (report.written, report.duplicates, report.still_failing, report.rejected) == (4, 0, 0, 0)
    rows = fetch_all(sqlite_seeded, EVENTS, "event_id")
    assert [(r["event_uid"], r["actual_output_tokens"]) for r in rows] == [("uid-0", 500), ("uid-1", 501), ("uid-2", 502)]
    escalation = fetch_all(sqlite_seeded, ESCALATIONS, "event_id")
    assert len(escalation) == 1 and escalation[0]["retry_max_tokens"] == 10240
    assert spool.pending_count(sqlite_seeded) == 0
    assert spool.replay(sqlite_seeded, SPOOL_INSERTERS).written == 0  # nothing left to do


def test_replaying_rows_that_did_commit_adds_no_duplicates(sqlite_seeded: Engine, make_event) -> None:
    with locked(sqlite_seeded):
        record_estimation_event(sqlite_seeded, make_event(event_uid="committed-anyway"), respect_flag=False)
        record_escalation_event(sqlite_seeded, **ESCALATION)
    path = spool.spool_path(sqlite_seeded)
    saved = path.read_bytes()
    assert spool.replay(sqlite_seeded, SPOOL_INSERTERS).written == 2
    # As if the client had seen an error although the server committed: the same lines come back.
    path.write_bytes(saved + saved)
    report = spool.replay(sqlite_seeded, SPOOL_INSERTERS)
    assert (report.written, report.duplicates) == (0, 4)
    assert count_rows(sqlite_seeded, EVENTS) == 1 and count_rows(sqlite_seeded, ESCALATIONS) == 1


def test_next_successful_write_replays_the_spool_automatically(sqlite_seeded: Engine, make_event) -> None:
    with locked(sqlite_seeded):
        for n in range(2):
            assert not record_estimation_event(sqlite_seeded, make_event(event_uid=f"late-{n}"), respect_flag=False)
    assert spool.pending_count(sqlite_seeded) == 2
    assert record_estimation_event(sqlite_seeded, make_event(event_uid="now"), respect_flag=False) is True
    assert sorted(r["event_uid"] for r in fetch_all(sqlite_seeded, EVENTS, "event_id")) == ["late-0", "late-1", "now"]
    assert spool.pending_count(sqlite_seeded) == 0
    assert spool.spool_path(sqlite_seeded).stat().st_size == 0  # emptied in place, never unlinked


def test_a_replay_that_still_fails_keeps_every_line(sqlite_seeded: Engine, make_event) -> None:
    with locked(sqlite_seeded):
        for n in range(3):
            record_estimation_event(sqlite_seeded, make_event(event_uid=f"kept-{n}"), respect_flag=False)
        before = spool.spool_path(sqlite_seeded).read_bytes()
        report = spool.replay(sqlite_seeded, SPOOL_INSERTERS)
        assert (report.written, report.still_failing) == (0, 3)
        assert "database is locked" in report.error
        assert spool.spool_path(sqlite_seeded).read_bytes() == before
    assert spool.replay(sqlite_seeded, SPOOL_INSERTERS).written == 3


def test_rows_the_database_refuses_move_aside_with_the_reason(sqlite_seeded: Engine, make_event) -> None:
    with locked(sqlite_seeded):
        record_estimation_event(sqlite_seeded, make_event(event_uid="orphan"), respect_flag=False)
        record_estimation_event(sqlite_seeded, make_event(event_uid="fine", phase_id="phase-2"), respect_flag=False)
    ensure_run_and_phase(sqlite_seeded, RUN_ID, "phase-2")
    with sqlite_seeded.begin() as connection:  # phase-1 disappears before the replay: its event cannot go in
        connection.exec_driver_sql(f"DELETE FROM phases WHERE phase_id = '{PHASE_ID}'")
    spool.spool_path(sqlite_seeded).open("ab").write(b"{not json\n")
    report = spool.replay(sqlite_seeded, SPOOL_INSERTERS)
    assert (report.written, report.rejected, report.still_failing) == (1, 2, 0)
    rejected = [json.loads(line) for line in Path(report.rejected_file).read_text().splitlines()]
    assert "database refused the row" in rejected[0]["reason"] and "orphan" in rejected[0]["line"]
    assert "unreadable spool line" in rejected[1]["reason"] and rejected[1]["line"] == "{not json"
    assert spool.pending_count(sqlite_seeded) == 0


def test_errors_about_the_row_itself_are_not_spooled(sqlite_seeded: Engine, make_event) -> None:
    assert record_estimation_event(sqlite_seeded, make_event(phase_id="no-such-phase"), respect_flag=False) is False
    assert not spool.spool_path(sqlite_seeded).exists()


def test_unreachable_sqlite_file_is_spooled(tmp_path: Path, make_event) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'telemetry.db'}")
    try:
        assert record_estimation_event(engine, make_event(), respect_flag=False) is False
        assert spool.pending_count(engine) == 1
    finally:
        engine.dispose()


def test_each_database_has_its_own_spool(tmp_path: Path, sqlite_seeded: Engine, make_event) -> None:
    other = make_engine(f"sqlite:///{tmp_path / 'gone' / 'other.db'}")
    try:
        record_estimation_event(other, make_event(event_uid="for-the-other-db"), respect_flag=False)
        assert spool.spool_path(other) != spool.spool_path(sqlite_seeded)
        assert record_estimation_event(sqlite_seeded, make_event(event_uid="mine"), respect_flag=False)
        assert [r["event_uid"] for r in fetch_all(sqlite_seeded, EVENTS, "event_id")] == ["mine"]
        assert spool.pending_count(other) == 1
        assert spool.other_spools(sqlite_seeded) == {str(spool.spool_path(other)): 1}
    finally:
        other.dispose()


def test_spool_location_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOPACK_SPOOL_DIR")
    monkeypatch.chdir(tmp_path)
    assert spool.spool_dir() == tmp_path / ".autopack" / "spool"
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", "relative/dir")
    assert spool.spool_dir() == tmp_path / "relative" / "dir"
    # The password is not part of a database's identity, so changing it keeps the same spool.
    assert spool.spool_path("postgresql://u:one@h/db") != spool.spool_path("postgresql://u:two@h/other")
    assert spool.spool_path(sa.engine.make_url("postgresql://u:one@h/db")) == spool.spool_path(
        sa.engine.make_url("postgresql://u:two@h/db"))


@pytest.mark.integration  # starts processes
def test_concurrent_processes_append_whole_lines(spool_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere.db'}"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=append_to_spool, args=(str(spool_dir), url, w, 60)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    lines = spool.spool_path(url).read_text().splitlines()
    uids = [json.loads(line)["row"]["event_uid"] for line in lines]
    assert len(uids) == 240 and len(set(uids)) == 240


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_outage_spools_without_the_password_and_replays_after_recovery(make_event, database_url: str) -> None:
    # database_url only proves the server is there; the outage is a database that does not exist yet.
    name = f"autopack_test_{uuid.uuid4().hex[:12]}_outage"
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name, password="s3cret-pw").render_as_string(hide_password=False)
    engine = make_engine(url)
    admin = _admin_engine()
    try:
        # The database does not exist yet: every write fails as it would while the server is down.
        for n in range(3):
            assert record_estimation_event(engine, make_event(event_uid=f"pg-{n}"), respect_flag=False) is False
        assert record_escalation_event(engine, **ESCALATION) is False
        text = spool.spool_path(engine).read_text()
        assert len(text.splitlines()) == 4 and "s3cret-pw" not in text and "does not exist" in text

        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        upgrade_database(engine)
        ensure_run_and_phase(engine, RUN_ID, PHASE_ID)
        report = spool.replay(engine, SPOOL_INSERTERS)
        assert (report.written, report.still_failing) == (4, 0)
        assert sorted(r["event_uid"] for r in fetch_all(engine, EVENTS, "event_id")) == ["pg-0", "pg-1", "pg-2"]
        assert count_rows(engine, ESCALATIONS) == 1
        spool.spool_path(engine).write_text(text)  # the same lines again: nothing new
        assert spool.replay(engine, SPOOL_INSERTERS).duplicates == 4 and count_rows(engine, EVENTS) == 3
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
