"""Re-runs, outages and exit codes of a collection run, on real SQLite: every answer the backend
returned is stored exactly once, phase states agree with the stored events, and `collect` says (and
exits 1) when the run did not do what was asked."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from autopack_pipeline.cli import main
from autopack_pipeline.collection.run import default_run_id
from autopack_pipeline.llm.backends import LLMRequest, LLMResponse
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services import collecting
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage import database
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.models import Phase, PhaseOutcomeEvent
from autopack_pipeline_tests.collection_support import Recording, assert_stored_exactly_once, hold_write_lock


class NoFilesFor:
    """Answers prose without any file block (a failed attempt, stored) for ``phase_ids``."""

    def __init__(self, inner, phase_ids: set[str]) -> None:
        self.inner, self.phase_ids, self.name = inner, phase_ids, inner.name

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.phase["phase_id"] in self.phase_ids:
            return LLMResponse("I could not write the files. " * 20, 300, 100, "end_turn", request.model)
        return self.inner.complete(request)


@pytest.fixture
def engine(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _collect(engine, backend, run_id: str, phases: int = 4):
    return collecting.collect(engine, load_settings(), backend, run_id=run_id, category="tests", complexity="low",
                             phases=phases, concurrency=2)


def test_a_failed_phase_rerun_continues_its_attempts_and_stores_every_answer(engine):
    settings = load_settings()
    first = Recording(NoFilesFor(make_backend(settings), {"tpl-tests-low-002"}))
    before = _collect(engine, first, "rerun")
    assert before.failures["tpl-tests-low-002"].startswith("missing deliverables")

    second = Recording(make_backend(settings))
    after = _collect(engine, second, "rerun")

    assert [(p, a) for p, a, _ in second.answers if p == "tpl-tests-low-002"][0][1] == 2  # after attempt 1
    assert after.events_written == sum(tokens >= 50 for _, _, tokens in second.answers) > 0
    assert before.events_written + after.events_written == len(read_events(engine, ["rerun"]))
    assert_stored_exactly_once(engine, "rerun", first.answers + second.answers)


def test_a_complete_phase_whose_last_event_failed_is_drained_again(engine):
    """Old runs could end COMPLETE while the stored event was the failed one; the next drain mends that."""
    settings = load_settings()
    first = Recording(NoFilesFor(make_backend(settings), {"tpl-tests-low-001"}))
    _collect(engine, first, "mend", phases=2)
    with engine.begin() as connection:
        connection.execute(Phase.__table__.update().where(Phase.phase_id == "tpl-tests-low-001")
                           .values(state="COMPLETE"))
    second = Recording(make_backend(settings))
    _collect(engine, second, "mend", phases=2)
    assert "tpl-tests-low-001" in {p for p, _, _ in second.answers}
    assert_stored_exactly_once(engine, "mend", first.answers + second.answers)


@pytest.fixture
def short_busy_timeout(monkeypatch):
    # The lock outlives SQLite's busy timeout, as a 75 s lock outlives the default 30 s one.
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)


def test_a_lock_shorter_than_the_retry_budget_marks_nothing_failed(sqlite_url, monkeypatch, short_busy_timeout):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "15")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    holders = []
    backend = Recording(make_backend(load_settings()), before=lambda n, _r: n == 3 and holders.append(
        hold_write_lock(engine.url.database, 1.5)))

    summary = _collect(engine, backend, "locked", phases=6)

    holders[0].join()
    assert not any(reason.startswith("internal error") for reason in summary.failures.values())
    assert summary.ok, summary.problems()
    assert summary.events_spooled == 0
    assert summary.events_written == len(read_events(engine, ["locked"]))
    assert_stored_exactly_once(engine, "locked", backend.answers)


def test_a_lock_longer_than_the_budget_stops_cleanly_and_resumes(sqlite_url, monkeypatch, short_busy_timeout):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.3")
    # The stopped run cannot hand its lease back while the lock is held; it expires after this.
    monkeypatch.setenv("AUTOPACK_RUN_LEASE_SECONDS", "1")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    holders = []
    first = Recording(make_backend(load_settings()), before=lambda n, _r: n == 2 and holders.append(
        hold_write_lock(engine.url.database, 2.5)))

    stopped = _collect(engine, first, "outage", phases=6)

    assert not stopped.ok and "unavailable" in stopped.stopped_reason
    holders[0].join()
    time.sleep(1.1)
    second = Recording(make_backend(load_settings()))
    resumed = _collect(engine, second, "outage", phases=6)
    assert resumed.ok, resumed.problems()
    assert_stored_exactly_once(engine, "outage", first.answers + second.answers)


def test_a_resumed_run_stores_the_spooled_answers_before_retrying_their_phases(sqlite_url, monkeypatch,
                                                                               short_busy_timeout):
    """The spool is written first even when the database is still locked as the resumed run starts.

    Otherwise a spooled answer's phase is asked again under the same attempt number, and the spooled
    answer is refused as a duplicate when it is replayed later: one answer lost."""
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.3")
    monkeypatch.setenv("AUTOPACK_RUN_LEASE_SECONDS", "1")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    holders = []
    first = Recording(make_backend(load_settings()), before=lambda n, _r: n == 2 and holders.append(
        hold_write_lock(engine.url.database, 2.5)))
    stopped = _collect(engine, first, "spooled", phases=6)
    holders[0].join()
    assert not stopped.ok and stopped.events_spooled > 0

    time.sleep(1.1)  # the stopped run's lease expires
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "15")
    hold_write_lock(engine.url.database, 1.0)  # still locked as the resumed run starts
    second = Recording(make_backend(load_settings()))
    resumed = _collect(engine, second, "spooled", phases=6)

    assert resumed.ok, resumed.problems()
    assert_stored_exactly_once(engine, "spooled", first.answers + second.answers)


def test_an_unwritable_spool_during_an_outage_is_an_error(sqlite_url, monkeypatch, tmp_path, short_busy_timeout):
    not_a_directory = tmp_path / "spool-is-a-file"
    not_a_directory.write_text("")
    monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(not_a_directory))
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.3")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    holders = []
    backend = Recording(make_backend(load_settings()), before=lambda n, _r: n == 1 and holders.append(
        hold_write_lock(engine.url.database, 1.5)))

    summary = _collect(engine, backend, "nospool", phases=2)

    holders[0].join()
    assert not summary.ok
    assert summary.events_not_stored > 0
    assert any("spool" in problem for problem in summary.problems())


def test_collect_exits_1_when_every_phase_failed_and_0_when_it_worked(sqlite_url, tmp_path, capsys):
    empty = tmp_path / "empty.ndjson"
    empty.write_text("")
    failed = main(["collect", "--backend", "replay", "--replay-file", str(empty), "--category", "docs",
                   "--complexity", "low", "--phases", "2", "--run-id", "nothing"])
    assert failed == 1
    assert "every phase drained failed" in capsys.readouterr().err
    # A fixed run id and seed: the simulated answers depend on both, and a run id drawn from the clock
    # sometimes gave three failing phases.
    assert main(["collect", "--category", "docs", "--complexity", "low", "--phases", "3", "--seed", "42",
                 "--run-id", "worked"]) == 0


def test_default_run_ids_differ_within_one_second():
    now = default_run_id.__globals__["datetime"](2025, 1, 2, 3, 4, 5)
    first, second = default_run_id(now), default_run_id(now)
    assert first != second and first.startswith("telemetry-collection-20250102-030405-")


@contextmanager
def first_outcome_write_meets_a_lock(**hold) -> Iterator[list[threading.Thread]]:
    """The first ``phase_outcome_events`` insert finds SQLite's write lock held by another connection
    (a real lock, taken just before that statement runs; ``hold`` says how long, as for hold_write_lock)."""
    holders: list[threading.Thread] = []

    def before_execute(conn, _cursor, statement, *_args) -> None:
        if not holders and statement.lstrip().upper().startswith("INSERT INTO PHASE_OUTCOME_EVENTS"):
            holders.append(hold_write_lock(conn.engine.url.database, **hold))

    event.listen(Engine, "before_cursor_execute", before_execute)
    try:
        yield holders
    finally:
        event.remove(Engine, "before_cursor_execute", before_execute)
        for holder in holders:
            holder.join()


def _outcome_rows(engine, run_id: str) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(PhaseOutcomeEvent.id).where(PhaseOutcomeEvent.run_id == run_id)).all())


def test_an_outcome_row_is_retried_through_a_short_outage(sqlite_url, monkeypatch, short_busy_timeout, caplog):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "15")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)

    with first_outcome_write_meets_a_lock(seconds=1.0) as holders:
        summary = _collect(engine, make_backend(load_settings()), "outcome-retried", phases=2)

    assert holders, "the outcome write never met the lock"
    assert _outcome_rows(engine, "outcome-retried") == 2
    assert summary.ok, summary.problems()
    assert summary.outcomes_not_stored == 0
    assert not [r for r in caplog.records if r.exc_info]  # retries are one line each, no traceback


def test_an_outcome_row_lost_to_an_outage_is_counted_and_collect_exits_1(sqlite_url, monkeypatch, short_busy_timeout,
                                                                         caplog, capsys):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.3")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    caplog.set_level(logging.WARNING, logger="autopack_pipeline.storage.runs")

    released = threading.Event()  # the lock outlasts the retry budget however slow the machine is
    with first_outcome_write_meets_a_lock(until=released):
        try:
            code = main(["collect", "--category", "docs", "--complexity", "low", "--phases", "1", "--run-id",
                         "outcome-lost", "--json"])
        finally:
            released.set()

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["outcomes_not_stored"] == 1 and report["phases_completed"] == 1, json.dumps(report)
    assert any("outcome" in problem for problem in report["problems"])
    assert _outcome_rows(engine, "outcome-lost") == 0
    (warning,) = [r for r in caplog.records if r.name == "autopack_pipeline.storage.runs"]
    assert warning.exc_info is None and "\n" not in warning.getMessage()
    assert "OperationalError: database is locked" in warning.getMessage()
