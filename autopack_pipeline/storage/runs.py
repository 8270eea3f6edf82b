"""Run, tier and phase rows for a collection run, and how each phase ended.

Rows are created the way Autopack's ``create_telemetry_collection_run.py`` made them (run
RUN_CREATED, tier PENDING, phases QUEUED), so Autopack's own scripts can read a run we collected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from autopack_pipeline.storage.database import insert_ignoring_conflicts, safe_error_text
from autopack_pipeline.storage.models import (
    Phase,
    PhaseOutcomeEvent,
    Run,
    Tier,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
    utc_now,
)
from autopack_pipeline.storage.retry import DEFAULT_RETRY_SECONDS, retry_while_unavailable

if TYPE_CHECKING:
    from autopack_pipeline.collection.phases import PhaseSpec, RunSpec
    from autopack_pipeline.llm.builder import PhaseResult

logger = logging.getLogger(__name__)


@dataclass
class RunProgress:
    """What a run's rows say before a drain: which phases are done, and how many attempts each has stored."""

    complete: set[str] = field(default_factory=set)
    # Highest attempt number stored per phase (events and escalations): a re-run continues after it,
    # so a new answer never gets the event_uid of an old one.
    attempts_stored: dict[str, int] = field(default_factory=dict)


def create_run_row(engine: Engine, run: RunSpec, phase_count: int) -> None:
    """The ``runs`` row, unless it exists; two processes creating the same run do not collide."""
    with engine.begin() as connection:
        insert_ignoring_conflicts(
            connection,
            Run.__table__,
            {
                "id": run.run_id,
                "state": "RUN_CREATED",
                "token_cap": run.token_cap,
                "max_phases": max(run.max_phases, phase_count),
                "max_duration_minutes": run.max_duration_minutes,
            },
            ["id"],
        )


def prepare_run(engine: Engine, run: RunSpec, phases: list[PhaseSpec]) -> RunProgress:
    """Create the tier and phase rows that are missing (the run row is :func:`create_run_row`'s), make every phase's state agree with its stored
    events, and say which phases are complete. Call it holding the run's lease (see :mod:`.run_lease`).

    A phase is COMPLETE exactly when its last stored event (highest attempt) is a success. So a phase
    left EXECUTING or FAILED by a drain that stopped after storing its successful answer becomes
    COMPLETE without asking the LLM again, and a COMPLETE phase whose last event failed, or an
    EXECUTING phase of a drain that died (nobody else can hold the lease), is pending again.
    """
    with Session(engine) as session, session.begin():
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
        last_success, attempts = _stored_attempts(session, run.run_id)
        for phase_id, phase in existing.items():
            _reconcile(phase, last_success.get(phase_id))
        complete = {pid for pid, phase in existing.items() if phase.state == "COMPLETE"}
        return RunProgress(complete=complete, attempts_stored=attempts)


def _stored_attempts(session: Session, run_id: str) -> tuple[dict[str, bool], dict[str, int]]:
    """Per phase of ``run_id``: whether its last stored event succeeded, and its highest attempt number."""
    events, escalations = TokenEstimationV2Event, TokenBudgetEscalationEvent
    last_success: dict[str, bool] = {}
    attempts: dict[str, int] = {}
    rows = session.execute(
        select(events.phase_id, events.attempt, events.success)
        .where(events.run_id == run_id)
        .order_by(events.phase_id, func.coalesce(events.attempt, 0), events.id)
    )
    for phase_id, attempt, success in rows:  # ordered: the last row of a phase is its last attempt
        last_success[phase_id] = bool(success)
        attempts[phase_id] = max(attempts.get(phase_id, 0), attempt or 0)
    for phase_id, highest in session.execute(
        select(escalations.phase_id, func.max(escalations.attempt_index))
        .where(escalations.run_id == run_id)
        .group_by(escalations.phase_id)
    ):
        attempts[phase_id] = max(attempts.get(phase_id, 0), highest or 0)
    return last_success, attempts


def _reconcile(phase: Phase, last_event_succeeded: bool | None) -> None:
    if last_event_succeeded is None:  # no stored event: only a stale EXECUTING needs undoing
        if phase.state == "EXECUTING":
            phase.state = "QUEUED"
        return
    if last_event_succeeded and phase.state != "COMPLETE":
        phase.state, phase.last_failure_reason, phase.completed_at = "COMPLETE", None, utc_now()
    elif not last_event_succeeded and phase.state in ("COMPLETE", "EXECUTING"):
        phase.state = "QUEUED"


def set_phase_state(
    engine: Engine,
    run_id: str,
    phase_id: str,
    state: str,
    failure_reason: str | None = None,
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> None:
    """Write a phase's state; while the database is unavailable, retried for up to ``retry_seconds``.

    Raises :class:`~autopack_pipeline.storage.retry.DatabaseUnavailable` when the budget runs out.
    """
    values: dict = {"state": state, "updated_at": utc_now()}
    if state == "EXECUTING":
        values["started_at"] = utc_now()
    elif state in ("COMPLETE", "FAILED"):
        values["completed_at"] = utc_now()
        values["last_failure_reason"] = failure_reason

    def write() -> None:
        with engine.begin() as conn:
            conn.execute(update(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id).values(**values))

    retry_while_unavailable(write, what=f"the state of phase {phase_id}", budget_seconds=retry_seconds)


def record_phase_outcome(
    engine: Engine,
    run_id: str,
    phase: PhaseSpec,
    result: PhaseResult,
    model: str,
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> bool:
    """One ``phase_outcome_events`` row per drained phase, retried like a phase's state while the database
    is unavailable. False (with one warning line, never raised) when it could not be written: the
    caller counts it, as nothing else can write it later (the run's rows no longer hold the answer's
    duration and tokens once the phase is COMPLETE)."""
    last = result.attempts[-1] if result.attempts else None
    row = PhaseOutcomeEvent.__table__.insert().values(
        run_id=run_id,
        phase_id=phase.phase_id,
        phase_type=phase.category,
        phase_outcome="SUCCESS" if result.completed else "FAILED",
        stop_reason=last.stop_reason if last else result.failure_reason,
        tokens_used=result.tokens_used,
        duration_seconds=result.duration_seconds,
        model_used=model,
        timestamp=utc_now(),
        context_injected=bool(phase.read_only_context),
        context_item_count=len(phase.read_only_context),
    )

    def write() -> None:
        with engine.begin() as connection:
            connection.execute(row)

    try:
        retry_while_unavailable(write, what=f"the outcome of phase {phase.phase_id}", budget_seconds=retry_seconds)
        return True
    except Exception as exc:  # noqa: BLE001 - counted by the caller; one line, the safe text, no traceback
        logger.warning("could not record the outcome of phase %s/%s: %s", run_id, phase.phase_id,
                       safe_error_text(exc))
        return False
