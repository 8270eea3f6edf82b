"""Entry points for the multi-process tests, kept in a small module because every spawned child
imports it (a test module would drag pytest and its fixtures into each child)."""

from __future__ import annotations

import os

from autopack_pipeline.storage import spool
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import EstimationEvent, record_estimation_event


def append_to_spool(spool_dir: str, url: str, worker: int, count: int) -> None:
    """Spool ``count`` large lines for ``url`` from this process."""
    os.environ["AUTOPACK_SPOOL_DIR"] = spool_dir
    engine = make_engine(url)
    big = "x" * 5000  # big lines: a writer that wrote a line in pieces would interleave with others
    for n in range(count):
        spool.spool_row(engine, "token_estimation_v2_events", {"event_uid": f"{worker}-{n}", "padding": big},
                        RuntimeError("down"))


def write_events(spool_dir: str, url: str, worker: int, count: int, run_id: str) -> int:
    """Write ``count`` events through the live writer; returns how many it reported as stored."""
    os.environ["AUTOPACK_SPOOL_DIR"] = spool_dir
    engine = make_engine(url)
    stored = 0
    try:
        for n in range(count):
            event = EstimationEvent(
                run_id=run_id, phase_id=f"phase-{worker}", category="implementation", complexity="low",
                deliverables=[f"src/w{worker}_{n}.py"], predicted_output_tokens=1000 + n,
                actual_output_tokens=900 + n, selected_budget=4096, success=True, model="claude-sonnet-4-5",
                attempt=1, event_uid=f"w{worker}-{n:04d}",
            )
            stored += record_estimation_event(engine, event, respect_flag=False)
    finally:
        engine.dispose()
    return stored
