"""Run, tier and phase rows for a collection run, and how each phase ended.

Rows are created the way Autopack's ``create_telemetry_collection_run.py`` made them (run
RUN_CREATED, tier PENDING, phases QUEUED), so Autopack's own scripts can read a run we collected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from autopack_pipeline.storage.models import (
    Phase,
    PhaseOutcomeEvent,
    Run,
    Tier,
    utc_now,
)

if TYPE_CHECKING:
    from autopack_pipeline.collection.phases import PhaseSpec, RunSpec
    from autopack_pipeline.llm.builder import PhaseResult

logger = logging.getLogger(__name__)


def prepare_run(engine: Engine, run: RunSpec, phases: list[PhaseSpec]) -> set[str]:
    """Create whatever rows are missing and return the ids of phases already COMPLETE."""
    with Session(engine) as session, session.begin():
        if session.get(Run, run.run_id) is None:
            session.add(
                Run(
                    id=run.run_id,
                    state="RUN_CREATED",
                    token_cap=run.token_cap,
                    max_phases=max(run.max_phases, len(phases)),
                    max_duration_minutes=run.max_duration_minutes,
                )
            )
            session.flush()
        tier = session.scalars(select(Tier).where(Tier.run_id == run.run_id, Tier.tier_id == run.tier_id)).first()
        if tier is None:
            tier = Tier(tier_id=run.tier_id, run_id=run.run_id, tier_index=0, name=run.tier_name,
                        state="PENDING", token_cap=run.token_cap, ci_run_cap=20)
            session.add(tier)
            session.flush()
        existing = {p.phase_id: p for p in session.scalars(select(Phase).where(Phase.run_id == run.run_id))}
        for spec in phases:
            if spec.phase_id in existing:
                continue
            session.add(
                Phase(
                    phase_id=spec.phase_id,
                    run_id=run.run_id,
                    tier_id=tier.id,
                    phase_index=spec.phase_index,
                    name=spec.name,
                    description=spec.goal,
                    state="QUEUED",
                    task_category=spec.category,
                    complexity=spec.complexity,
                    builder_mode="full_file",
                    scope={
                        "paths": spec.scope_paths,
                        "read_only_context": spec.read_only_context,
                        "deliverables": spec.deliverables,
                    },
                    max_builder_attempts=spec.max_builder_attempts,
                    max_auditor_attempts=2,
                    incident_token_cap=50_000,
                )
            )
        return {pid for pid, phase in existing.items() if phase.state == "COMPLETE"}


def set_phase_state(engine: Engine, run_id: str, phase_id: str, state: str, failure_reason: str | None = None) -> None:
    values: dict = {"state": state, "updated_at": utc_now()}
    if state == "EXECUTING":
        values["started_at"] = utc_now()
    elif state in ("COMPLETE", "FAILED"):
        values["completed_at"] = utc_now()
        values["last_failure_reason"] = failure_reason
    with engine.begin() as conn:
        conn.execute(update(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id).values(**values))


def record_phase_outcome(engine: Engine, run_id: str, phase: PhaseSpec, result: PhaseResult, model: str) -> bool:
    """One ``phase_outcome_events`` row per drained phase; a failed write is logged, never raised."""
    last = result.attempts[-1] if result.attempts else None
    try:
        with Session(engine) as session, session.begin():
            session.add(
                PhaseOutcomeEvent(
                    run_id=run_id,
                    phase_id=phase.phase_id,
                    phase_type=phase.category,
                    phase_outcome="SUCCESS" if result.completed else "FAILED",
                    stop_reason=last.stop_reason if last else result.failure_reason,
                    tokens_used=result.tokens_used,
                    duration_seconds=result.duration_seconds,
                    model_used=model,
                    context_injected=bool(phase.read_only_context),
                    context_item_count=len(phase.read_only_context),
                )
            )
        return True
    except Exception:
        logger.warning("could not record the outcome of phase %s/%s", run_id, phase.phase_id, exc_info=True)
        return False
