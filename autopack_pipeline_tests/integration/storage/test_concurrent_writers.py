"""Several real processes writing events into one database at once lose nothing (issue 3, item 8)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from autopack_pipeline.storage import spool
from autopack_pipeline.storage.events import SPOOL_INSERTERS, ensure_run_and_phase
from autopack_pipeline_tests.support.databases import fetch_all
from autopack_pipeline_tests.support.writer_processes import write_events

WORKERS, EVENTS_EACH = 4, 100
RUN = "concurrent-run"


@pytest.mark.slow
def test_four_processes_write_every_event_exactly_once(
    engine: Engine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for worker in range(WORKERS):
        ensure_run_and_phase(engine, RUN, f"phase-{worker}")
    spool_dir = tmp_path / "spool"
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        stored = pool.starmap(
            write_events, [(str(spool_dir), database_url, w, EVENTS_EACH, RUN) for w in range(WORKERS)]
        )
        # Ended by their queue, not by the SIGTERM of the pool's exit: a shell that started the tests in the
        # background with SIGTERM ignored passes that on, and a worker waiting on the queue then never ended.
        pool.close()
        pool.join()
    # Under heavy lock contention a write may be spooled instead (the writer then reports False);
    # a replay must bring the total to exactly what was written, without duplicates.
    spooled = sum(len(spool._read_lines(path)) for path in spool_dir.glob("*.ndjson")) if spool_dir.exists() else 0
    assert sum(stored) + spooled == WORKERS * EVENTS_EACH
    if spooled:
        monkeypatch.setenv("AUTOPACK_SPOOL_DIR", str(spool_dir))
        assert spool.replay(engine, SPOOL_INSERTERS).still_failing == 0
    rows = fetch_all(engine, "token_estimation_v2_events", "event_id")
    uids = [row["event_uid"] for row in rows]
    expected = {f"w{w}-{n:04d}" for w in range(WORKERS) for n in range(EVENTS_EACH)}
    assert len(uids) == WORKERS * EVENTS_EACH and set(uids) == expected
    per_worker = {w: sorted(r["actual_output_tokens"] for r in rows if r["phase_id"] == f"phase-{w}") for w in range(WORKERS)}
    assert all(values == list(range(900, 900 + EVENTS_EACH)) for values in per_worker.values())
