"""A PostgreSQL outage in the middle of a collection run, made real: the test database stops accepting
connections and its open connections are terminated (as in a server restart), then it comes back.

Within the retry budget the run finishes as if nothing happened; beyond it the run stops cleanly and a
resumed run stores every answer exactly once. Either way no phase stays EXECUTING and every phase's
state agrees with its stored events.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services import collecting
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.models import PhaseOutcomeEvent
from autopack_pipeline_tests.collection_support import Recording, assert_stored_exactly_once
from autopack_pipeline_tests.support.databases import _admin_engine

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]

PHASES = 8
ANSWER_SECONDS = 0.1  # each answer takes a moment, so the drain is still going when the outage ends


class Outage:
    """Takes the test database away (no new connections, open ones terminated) for ``seconds``, or, with
    ``seconds=None``, until :meth:`close`."""

    def __init__(self, database_url: str, seconds: float | None) -> None:
        self.name, self.seconds = make_url(database_url).database, seconds
        self.admin = _admin_engine()
        self.started: float | None = None
        self.thread: threading.Thread | None = None

    def _allow_connections(self, allowed: bool) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.name,),
                )

    def begin(self) -> None:
        """Returns with the database already unavailable."""
        self._allow_connections(False)
        self.started = time.monotonic()
        if self.seconds is None:
            return
        self.thread = threading.Thread(target=lambda: (time.sleep(self.seconds), self._allow_connections(True)),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Waits for a timed outage to end; ends an open-ended one."""
        if self.thread is not None:
            self.thread.join()
        self._allow_connections(True)
        self.admin.dispose()


def _slow_backend_with_outage_at(call: int, outage: Outage) -> Recording:
    def before(n: int, _request) -> None:
        if n == call:
            outage.begin()
        time.sleep(ANSWER_SECONDS)

    return Recording(make_backend(load_settings(), "simulated"), before=before)


def _collect(engine, backend, run_id: str):
    return collecting.collect(engine, load_settings(), backend, run_id=run_id, category="tests", complexity="low",
                             phases=PHASES, concurrency=2)


def _outcome_rows(engine, run_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(PhaseOutcomeEvent).where(PhaseOutcomeEvent.run_id == run_id)
        ).scalar_one()


def test_an_outage_within_the_retry_budget_changes_nothing(engine, database_url, monkeypatch, caplog):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "20")
    outage = Outage(database_url, seconds=2.0)
    backend = _slow_backend_with_outage_at(3, outage)
    try:
        summary = _collect(engine, backend, "pg-outage-short")
    finally:
        outage.close()

    assert outage.started is not None, "the outage never happened"
    assert summary.ok, summary.problems()
    assert summary.stopped_reason is None and summary.phases_pending == 0
    assert summary.phases_completed + summary.phases_failed == PHASES
    assert not any(reason.startswith("internal error") for reason in summary.failures.values())
    assert summary.events_spooled == summary.events_not_stored == summary.outcomes_not_stored == 0
    assert summary.events_written == len(read_events(engine, ["pg-outage-short"]))
    assert _outcome_rows(engine, "pg-outage-short") == PHASES
    assert_stored_exactly_once(engine, "pg-outage-short", backend.answers)
    # An outage is reported as one line per failed write, never as a traceback.
    assert [(r.name, r.getMessage()) for r in caplog.records if r.exc_info] == []


def test_an_outage_beyond_the_budget_stops_cleanly_and_a_resumed_run_stores_every_answer_once(
    engine, database_url, monkeypatch, caplog
):
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.5")
    # The stopped run may not be able to hand its lease back during the outage; it expires after this.
    monkeypatch.setenv("AUTOPACK_RUN_LEASE_SECONDS", "1")
    outage = Outage(database_url, seconds=None)  # down until the run has stopped, however long that takes
    first = _slow_backend_with_outage_at(3, outage)
    try:
        stopped = _collect(engine, first, "pg-outage-long")
    finally:
        outage.close()

    assert not stopped.ok
    assert "telemetry database was unavailable" in stopped.stopped_reason
    assert "re-run with --run-id pg-outage-long" in stopped.stopped_reason
    assert stopped.phases_pending > 0
    assert stopped.events_not_stored == 0  # what could not be written was spooled
    assert [(r.name, r.getMessage()) for r in caplog.records if r.exc_info] == []

    time.sleep(1.1)  # the stopped run's lease has expired
    second = Recording(make_backend(load_settings(), "simulated"))
    resumed = _collect(engine, second, "pg-outage-long")

    assert resumed.ok, resumed.problems()
    assert resumed.phases_skipped_complete + resumed.phases_completed + resumed.phases_failed == PHASES
    assert_stored_exactly_once(engine, "pg-outage-long", first.answers + second.answers)
