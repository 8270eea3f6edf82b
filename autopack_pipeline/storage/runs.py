"""Run, tier and phase rows for a collection run, and how each phase ended.

Rows are created the way Autopack's ``create_telemetry_collection_run.py`` made them (run
RUN_CREATED, tier PENDING, phases QUEUED), so Autopack's own scripts can read a run we collected.
The functions take column values; what a collection run's specs and the Builder's results put in
them is :mod:`autopack_pipeline.collection.run_rows`'s business.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

logger = logging.getLogger(__name__)


@dataclass
class RunProgress:
    """What a run's rows say before a drain: which phases are done, and how many attempts each has stored."""

    complete: set[str] = field(default_factory=set)
    # Highest attempt number stored per phase (events and escalations): a re-run continues after it,
    # so a new answer never gets the event_uid of an old one.
    attempts_stored: dict[str, int] = field(default_factory=dict)


def create_run_row(engine: Engine, run_id: str, *, token_cap: int, max_phases: int, max_duration_minutes: int) -> None:
    """The ``runs`` row, unless it exists; two processes creating the same run do not collide."""
    with engine.begin() as connection:
        insert_ignoring_conflicts(
            connection,
            Run.__table__,
            {
                "id": run_id,
                "state": "RUN_CREATED",
                "token_cap": token_cap,
                "max_phases": max_phases,
                "max_duration_minutes": max_duration_minutes,
            },
            ["id"],
        )


def prepare_run(
    engine: Engine, run_id: str, tier: Mapping[str, Any], phases: Sequence[Mapping[str, Any]],
) -> RunProgress:
    """Create the tier and phase rows that are missing (the run row is :func:`create_run_row`'s), make every phase's state agree with its stored
    events, and say which phases are complete. Call it holding the run's lease (see :mod:`.run_lease`).

    ``tier`` holds the tier's ``tier_id``, ``name`` and ``token_cap``; each of ``phases`` the columns
    of its ``phases`` row that differ between phases (``phase_id``, ``phase_index``, ``name``,
    ``description``, ``task_category``, ``complexity``, ``scope``, ``max_builder_attempts``).

    A phase is COMPLETE exactly when its last stored event (highest attempt) is a success. So a phase
    left EXECUTING or FAILED by a drain that stopped after storing its successful answer becomes
    COMPLETE without asking the LLM again, and a COMPLETE phase whose last event failed, or an
    EXECUTING phase of a drain that died (nobody else can hold the lease), is pending again.
    """
    with Session(engine) as session, session.begin():
        tier_row = session.scalars(select(Tier).where(Tier.run_id == run_id, Tier.tier_id == tier["tier_id"])).first()
        if tier_row is None:
            tier_row = Tier(tier_id=tier["tier_id"], run_id=run_id, tier_index=0, name=tier["name"],
                            state="PENDING", token_cap=tier["token_cap"], ci_run_cap=20)
            session.add(tier_row)
            session.flush()
        existing = {p.phase_id: p for p in session.scalars(select(Phase).where(Phase.run_id == run_id))}
        for values in phases:
            if values["phase_id"] in existing:
                continue
            session.add(
                Phase(
                    **values,
                    run_id=run_id,
                    tier_id=tier_row.id,
                    state="QUEUED",
                    builder_mode="full_file",
                    max_auditor_attempts=2,
                    incident_token_cap=50_000,
                )
            )
        last_success, attempts = _stored_attempts(session, run_id)
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
    phase_id: str,
    outcome: Mapping[str, Any],
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> bool:
    """One ``phase_outcome_events`` row per drained phase, retried like a phase's state while the database
    is unavailable. False (with one warning line, never raised) when it could not be written: the
    caller counts it, as nothing else can write it later (the run's rows no longer hold the answer's
    duration and tokens once the phase is COMPLETE).

    ``outcome`` holds the row's other columns (``phase_type``, ``phase_outcome``, ``stop_reason``,
    ``tokens_used``, ``duration_seconds``, ``model_used``, ``context_injected``, ``context_item_count``);
    the timestamp is now."""
    row = PhaseOutcomeEvent.__table__.insert().values(
        **outcome, run_id=run_id, phase_id=phase_id, timestamp=utc_now(),
    )

    def write() -> None:
        # A retry after a commit whose answer was lost would add the row again, and Autopack's table has
        # no unique key to refuse it: the insert looks for the phase's row first, in the same transaction.
        with engine.begin() as connection:
            written = connection.execute(select(PhaseOutcomeEvent.id).where(
                PhaseOutcomeEvent.run_id == run_id, PhaseOutcomeEvent.phase_id == phase_id).limit(1)).first()
            if written is None:
                connection.execute(row)

    try:
        retry_while_unavailable(write, what=f"the outcome of phase {phase_id}", budget_seconds=retry_seconds)
        return True
    except Exception as exc:  # noqa: BLE001 - counted by the caller; one line, the safe text, no traceback
        logger.warning("could not record the outcome of phase %s/%s: %s", run_id, phase_id,
                       safe_error_text(exc))
        return False
