"""Helpers shared by the collection-run tests (SQLite, PostgreSQL and the Dagster asset): a backend that
records what it answered, the exactly-once check, and a real SQLite write lock held by another connection."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

from sqlalchemy import select

from autopack_pipeline.llm.backends import LLMRequest, LLMResponse
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.models import Phase, TokenBudgetEscalationEvent


class Recording:
    """Passes calls to ``inner`` and keeps every answer it returned (what must end up stored).

    ``before(n, request)`` runs before the ``n``-th call; ``n`` is unique even when workers call at once.
    """

    def __init__(self, inner, before=None) -> None:
        self.inner, self.name, self.answers, self.before = inner, inner.name, [], before
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> LLMResponse:
        with self._lock:
            call = next(self._calls)
        if self.before is not None:
            self.before(call, request)
        response = self.inner.complete(request)
        with self._lock:
            self.answers.append((request.phase["phase_id"], request.phase["attempt"], response.output_tokens))
        return response


def assert_stored_exactly_once(engine, run_id: str, answers: list[tuple[str, int, int]]) -> None:
    """Every answer of 50 tokens or more is one stored event; each phase's state agrees with its last event."""
    events = read_events(engine, [run_id])
    kept = sorted((phase, attempt) for phase, attempt, tokens in answers if tokens >= 50)
    assert sorted(zip(events["phase_id"], events["attempt"].astype(int))) == kept
    with engine.connect() as connection:
        states = dict(connection.execute(select(Phase.phase_id, Phase.state).where(Phase.run_id == run_id)).all())
        escalations = connection.execute(select(TokenBudgetEscalationEvent.phase_id,
                                                TokenBudgetEscalationEvent.attempt_index)).all()
    assert len(escalations) == len(set(escalations))
    assert "EXECUTING" not in states.values()
    last = events.sort_values("attempt").groupby("phase_id")["success"].last()
    for phase_id, succeeded in last.items():
        assert (states[phase_id] == "COMPLETE") == bool(succeeded), phase_id


def hold_write_lock(path: str, seconds: float | None = None, *, until: threading.Event | None = None) -> threading.Thread:
    """Another connection holds SQLite's write lock for ``seconds``, or until ``until`` is set (at most 60 s,
    so a failed test cannot leave it held); returns once it has the lock."""
    taken = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(path, timeout=30, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        taken.set()
        if until is not None:
            until.wait(60)
        else:
            time.sleep(seconds or 0)
        connection.execute("COMMIT")
        connection.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10)
    return thread
