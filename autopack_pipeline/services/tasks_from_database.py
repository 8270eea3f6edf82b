"""``tasks generate``: what the generated_tasks asset computes, run on the database from a terminal.

The composition is the assets' own (``services.pipeline.analyse``): metrics, the gate, both calibration
methods when it is open, drift, outcome insights, then the tasks stored; no report file is written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Engine

from autopack_pipeline.services.event_reading import ProgressScope, refreshed_snapshot
from autopack_pipeline.services.pipeline import analyse
from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.handle import describe_database
from autopack_pipeline.storage.outcomes import read_phase_outcomes


def generate_tasks(engine: Engine, settings: Settings, *, min_samples: int, window_days: float, method: str,
                   extraction_progress: ProgressScope | None = None,
                   warn_unreadable: Callable[[dict[str, Any]], None] = lambda document: None) -> dict[str, Any]:
    """Analyse every stored event (the columnar copy refreshed first) and the phase outcomes of the last
    ``window_days`` days, store the tasks found, and return the document ``tasks generate --json`` prints.
    Refused when there are neither events nor outcomes; ``warn_unreadable`` hears of rows set aside."""
    database = describe_database(engine).url
    snapshot = refreshed_snapshot(engine, extraction_progress)  # new events only
    if snapshot.rows == 0 and read_phase_outcomes(engine).empty:
        raise Refused(f"nothing to analyse in {database}: no token-estimation events and no "
                      "phase outcomes (run `autopack-telemetry collect` first, or check DATABASE_URL)")
    warn_unreadable(snapshot.unreadable)
    now = datetime.now(timezone.utc)
    source = {"command": "autopack-telemetry tasks generate", "generated_at": now.isoformat()}
    # The composition the assets run, on the same window: samples, metrics, calibration, tasks.
    analysis = analyse(engine, settings, snapshot.arrays(), min_samples=min_samples, method=method,
                       database=database, write_reports=False, generate=True, source=source,
                       outcome_window_days=window_days, now=now)
    calibration, tasks, stored = analysis.calibration, analysis.tasks, analysis.stored
    return {"enabled": settings.task_generation_enabled, "database": database,
            "gate": calibration.gate.to_dict(), "method": method, "tasks_generated": len(tasks),
            "tasks_new": len(stored.inserted), "stored": stored.as_dict(), "tasks": [task.as_dict() for task in tasks],
            "unreadable_timestamps": snapshot.unreadable}
