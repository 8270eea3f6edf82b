"""A PostgreSQL append commits several times, a fresh load once per connection; a process killed between
two commits has no Python left to undo what it committed. Its runs stay marked loading, and the next load removes them (nothing half-done
stays, the seed is not stuck), unless their load is still alive."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from autopack_pipeline.cli import main
from autopack_pipeline.storage import bulk
from autopack_pipeline.storage.bulk import LoadInProgress, remove_interrupted_loads, unfinished_synthetic_runs
from autopack_pipeline.storage.bulk.postgresql_steps import LOAD_LOCK_NAMESPACE
from autopack_pipeline.storage.bulk.rows import LOADED_STATE, LOADING_STATE
from autopack_pipeline.synth import bulk_load
from autopack_pipeline_tests.support.databases import count_rows

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)

# Loads seed 2 in transactions of 100 events and kills itself with SIGKILL right after the second commit.
_KILLED_LOAD = textwrap.dedent("""
    import os, signal, sys
    from autopack_pipeline import synth
    from autopack_pipeline.storage import bulk
    from autopack_pipeline.storage.database import make_engine

    synth.generate.FIRST_CHUNK_PHASES = synth.generate.PHASES_PER_CHUNK = 20
    bulk.postgresql.PG_TRANSACTION_EVENTS = 100
    real_commit = bulk.postgresql._PgStreams.commit
    commits = []

    def commit_then_die(streams, *, last=False):
        real_commit(streams, last=last)
        commits.append(last)
        if len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    bulk.postgresql._PgStreams.commit = commit_then_die
    synth.bulk_load(make_engine(sys.argv[1]), 1000, runs=3, seed=2)
""")


def runs_by_state(engine, pattern: str) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.text("SELECT state, count(*) FROM runs WHERE id LIKE :p GROUP BY state"),
                                       {"p": pattern}).all())


@pytest.mark.parametrize("may_skip_key_checks", [True, False])
def test_an_append_killed_between_commits_is_removed_by_the_next_load(engine, database_url, capsys, monkeypatch,
                                                                       may_skip_key_checks):
    """Removed table by table with the key triggers off, or by the keys' cascade when the role may not."""
    if not may_skip_key_checks:
        monkeypatch.setattr(bulk.postgresql_steps, "_may_skip_key_checks", lambda scalar: False)
    bulk_load(engine, 300, runs=1, seed=1)
    killed = subprocess.run([sys.executable, "-c", _KILLED_LOAD, database_url], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    # Half done: two transactions of seed 2 are committed, its runs still marked loading.
    assert runs_by_state(engine, "synth-2-%") == {LOADING_STATE: 3}
    assert 0 < count_rows(engine, "token_estimation_v2_events") - 300 < 1000
    assert unfinished_synthetic_runs(engine) == 3  # what doctor reports

    assert main(["--database-url", database_url, "synth", "--events", "1000", "--runs", "3", "--seed", "2"]) == 0
    assert "Removed 3 runs of seed 2 left by an interrupted earlier load" in capsys.readouterr().out
    assert runs_by_state(engine, "synth-2-%") == {LOADED_STATE: 3}
    assert runs_by_state(engine, "synth-1-%") == {LOADED_STATE: 1}
    assert unfinished_synthetic_runs(engine) == 0
    assert count_rows(engine, "token_estimation_v2_events") == 1300
    with engine.connect() as connection:
        orphans = connection.execute(sa.text(
            "SELECT count(*) FROM token_estimation_v2_events e LEFT JOIN phases p "
            "ON p.run_id = e.run_id AND p.phase_id = e.phase_id WHERE p.id IS NULL")).scalar()
    assert orphans == 0


# A fresh load on two connections, killed with SIGKILL after the first connection (runs, tiers, phases)
# committed and before the second (the events) did.
_KILLED_FRESH_LOAD = textwrap.dedent("""
    import os, signal, sys
    from autopack_pipeline import synth
    from autopack_pipeline.storage import bulk
    from autopack_pipeline.storage.database import make_engine

    def first_commit_then_die(streams, *, last=False):
        streams._end_events()
        streams.connection.commit()
        os.kill(os.getpid(), signal.SIGKILL)

    bulk.postgresql._PgStreams.commit = first_commit_then_die
    synth.bulk_load(make_engine(sys.argv[1]), 1000, runs=3, seed=2)
""")


def test_a_fresh_load_killed_between_its_two_connections_commits_is_removed_by_the_next_load(
        engine, database_url, capsys):
    killed = subprocess.run([sys.executable, "-c", _KILLED_FRESH_LOAD, database_url], capture_output=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    # Half done: the runs and phases are committed, marked loading; the events and their indexes are not.
    assert runs_by_state(engine, "synth-2-%") == {LOADING_STATE: 3}
    assert count_rows(engine, "phases") > 0 and count_rows(engine, "token_estimation_v2_events") == 0
    with engine.connect() as connection:
        indexes = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'token_estimation_v2_events'").scalar()
    assert indexes > 10  # the dropped ones came back with the rolled-back transaction

    assert main(["--database-url", database_url, "synth", "--events", "1000", "--runs", "3", "--seed", "2"]) == 0
    assert "Removed 3 runs of seed 2 left by an interrupted earlier load" in capsys.readouterr().out
    assert runs_by_state(engine, "synth-2-%") == {LOADED_STATE: 3}
    assert count_rows(engine, "token_estimation_v2_events") == 1000


def test_the_runs_of_a_load_that_is_still_running_stay(engine):
    """A load alive in another process holds its seed's advisory lock: its runs marked loading are not
    taken for an interrupted load's, and a second load of a seed being loaded is refused."""
    bulk_load(engine, 300, runs=1, seed=1)
    with engine.connect() as connection:
        connection.execute(sa.text("UPDATE runs SET state = :s"), {"s": LOADING_STATE})
        connection.commit()
    holder = engine.connect()  # stands for the live loads' first connections
    try:
        for seed in (1, 5):
            assert holder.exec_driver_sql(f"SELECT pg_try_advisory_lock({LOAD_LOCK_NAMESPACE}, {seed})").scalar()
        assert remove_interrupted_loads(engine) == {}
        assert runs_by_state(engine, "synth-1-%") == {LOADING_STATE: 1}
        with pytest.raises(LoadInProgress, match="another synth is loading seed 5"):
            bulk_load(engine, 300, runs=1, seed=5)
        assert count_rows(engine, "runs") == 1  # the refused load left nothing
    finally:
        holder.exec_driver_sql("SELECT pg_advisory_unlock_all()")
        holder.close()
    assert remove_interrupted_loads(engine) == {1: 1}  # its holder gone, the runs are an interrupted load's
    assert count_rows(engine, "runs") == 0 and count_rows(engine, "token_estimation_v2_events") == 0


def test_a_load_that_completes_leaves_no_run_marked_loading_and_holds_no_lock(engine):
    bulk_load(engine, 300, runs=1, seed=1)
    bulk_load(engine, 500, runs=2, seed=2)  # an append: marked loading until its last commit
    assert runs_by_state(engine, "synth-%") == {LOADED_STATE: 3}
    with engine.connect() as connection:
        held = connection.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").scalar()
    assert held == 0
