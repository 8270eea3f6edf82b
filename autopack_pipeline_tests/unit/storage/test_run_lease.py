"""The run lease, on SQLite and PostgreSQL: one drain per run id across connections (processes)."""

from __future__ import annotations

import threading
import time

import pytest

from autopack_pipeline.collection.phases import RunSpec
from autopack_pipeline.collection.run_rows import create_run_row
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services import collecting
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.run_lease import RunBusy, RunLease


@pytest.fixture
def run_row(engine):
    create_run_row(engine, RunSpec(run_id="leased"), 1)
    return "leased"


def test_a_held_run_is_refused_until_released(engine, run_row):
    lease = RunLease.claim(engine, run_row)
    with pytest.raises(RunBusy, match="being drained by another process"):
        RunLease.claim(engine, run_row)
    assert lease.renew()
    assert lease.release("PHASE_QUEUEING")
    RunLease.claim(engine, run_row).release("PHASE_QUEUEING")


def test_a_crashed_owners_lease_expires_and_it_cannot_take_it_back(engine, run_row):
    crashed = RunLease.claim(engine, run_row, lease_seconds=0.2)
    time.sleep(0.3)
    successor = RunLease.claim(engine, run_row, lease_seconds=0.2)
    assert not crashed.renew() and not crashed.release("DONE_SUCCESS")
    assert successor.release("DONE_SUCCESS")


def test_of_racing_claimers_exactly_one_wins(database_url, engine, run_row):
    engines = [make_engine(database_url) for _ in range(4)]
    start, won, lost = threading.Barrier(4), [], []

    def claim(own_engine) -> None:
        start.wait()
        try:
            won.append(RunLease.claim(own_engine, run_row))
        except RunBusy:
            lost.append(1)

    threads = [threading.Thread(target=claim, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 3
    for own_engine in engines:
        own_engine.dispose()


def test_a_second_collect_on_a_drained_run_calls_no_llm(engine, run_row):
    class Counting:
        name, calls = "simulated", 0

        def complete(self, request):
            Counting.calls += 1
            raise AssertionError("the LLM must not be called")

    held = RunLease.claim(engine, run_row)
    with pytest.raises(RunBusy):
        collecting.collect(engine, load_settings(), Counting(), run_id=run_row, category="docs", complexity="low",
                          phases=2)
    assert Counting.calls == 0
    held.release("PHASE_QUEUEING")
    summary = collecting.collect(engine, load_settings(), make_backend(load_settings()), run_id=run_row,
                                category="docs", complexity="low", phases=2)
    assert summary.phases_completed + summary.phases_failed == 2
