"""The minimal ``runs``/``tiers``/``phases`` rows that events need, created when missing: by the NDJSON
import for a whole batch of events at once, and by ``events.ensure_run_and_phase`` for one.

The rows are Autopack's own shapes (run RUN_CREATED, tier PENDING, phases QUEUED, as its
``create_telemetry_collection_run.py`` makes them); rows that exist are left exactly as they are. A new
tier is numbered after its run's tiers, a new phase after its run's phases, in the order asked for. A
batch takes a few statements whatever its size: the import made six per event one by one (about 420
events a second into SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from autopack_pipeline.storage.database import in_chunks, insert_many_ignoring_conflicts
from autopack_pipeline.storage.models import Phase, Run, Tier

_RUNS, _TIERS, _PHASES = Run.__table__, Tier.__table__, Phase.__table__


class PhaseRow(NamedTuple):
    """A phase an event names, and what a new row for it records."""

    run_id: str
    phase_id: str
    category: str | None = None
    complexity: str | None = None
    name: str | None = None  # the phase's name; its id when None


def ensure_phase_rows(connection: Connection, wanted: Sequence[PhaseRow], *, tier_id: str = "T1",
                      phase_state: str = "QUEUED", run_state: str = "RUN_CREATED") -> dict[tuple[str, str], int]:
    """Create the runs, their tier ``tier_id`` and the phases of ``wanted`` that are missing, in the caller's
    transaction (the first entry of a phase asked for twice counts); return each asked-for phase's primary
    key by (run id, phase id)."""
    first: dict[tuple[str, str], PhaseRow] = {}
    for row in wanted:
        first.setdefault((row.run_id, row.phase_id), row)
    asked = list(first.values())
    run_ids = list(dict.fromkeys(row.run_id for row in asked))
    insert_many_ignoring_conflicts(connection, _RUNS, [{"id": run, "state": run_state} for run in run_ids], ["id"])
    keys = _phase_keys(connection, run_ids)
    missing = [row for row in asked if (row.run_id, row.phase_id) not in keys]
    if missing:
        new_runs = list(dict.fromkeys(row.run_id for row in missing))
        tiers = _tier_keys(connection, new_runs, tier_id)
        next_phase = _counts(connection, _PHASES, new_runs)
        values = []
        for row in missing:
            index = next_phase.get(row.run_id, 0)
            next_phase[row.run_id] = index + 1
            values.append({"phase_id": row.phase_id, "run_id": row.run_id, "tier_id": tiers[row.run_id],
                           "phase_index": index, "name": row.name or row.phase_id, "state": phase_state,
                           "task_category": row.category, "complexity": row.complexity})
        insert_many_ignoring_conflicts(connection, _PHASES, values, ["run_id", "phase_id"])
        keys.update(_phase_keys(connection, new_runs))
    return {(row.run_id, row.phase_id): keys[(row.run_id, row.phase_id)] for row in asked}


def _tier_keys(connection: Connection, run_ids: list[str], tier_id: str) -> dict[str, int]:
    """Each run's first tier ``tier_id`` (by primary key), created after the run's tiers where missing."""
    def found() -> dict[str, int]:
        keys = {}
        for chunk in in_chunks(run_ids):
            keys.update(connection.execute(
                select(_TIERS.c.run_id, func.min(_TIERS.c.id))
                .where(_TIERS.c.run_id.in_(chunk), _TIERS.c.tier_id == tier_id).group_by(_TIERS.c.run_id)).all())
        return keys

    keys = found()
    lacking = [run for run in run_ids if run not in keys]
    if lacking:
        tiers_before = _counts(connection, _TIERS, lacking)
        connection.execute(insert(_TIERS), [
            {"tier_id": tier_id, "run_id": run, "tier_index": tiers_before.get(run, 0), "name": tier_id,
             "state": "PENDING"} for run in lacking])
        keys = found()
    return keys


def _phase_keys(connection: Connection, run_ids: list[str]) -> dict[tuple[str, str], int]:
    """Every phase of ``run_ids``: its primary key by (run id, phase id)."""
    keys = {}
    for chunk in in_chunks(run_ids):
        rows = connection.execute(select(_PHASES.c.run_id, _PHASES.c.phase_id, _PHASES.c.id)
                                  .where(_PHASES.c.run_id.in_(chunk)))
        keys.update(((run, phase), int(key)) for run, phase, key in rows)
    return keys


def _counts(connection: Connection, table, run_ids: list[str]) -> dict[str, int]:
    """How many rows of ``table`` each of ``run_ids`` has (runs without any are left out)."""
    counts = {}
    for chunk in in_chunks(run_ids):
        counts.update(connection.execute(select(table.c.run_id, func.count()).where(table.c.run_id.in_(chunk))
                                         .group_by(table.c.run_id)).all())
    return counts
