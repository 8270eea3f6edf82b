"""Drain a collection run: every phase not yet complete goes through the Builder, concurrently.

What a user can rely on (the README's collection section says the same):

- Exactly once: every answer the API returned is one stored event. Re-running a run id drains only
  the phases that are not COMPLETE, and a phase's new attempts continue its attempt numbering, so
  each event keeps a stable id of its own (run, phase, attempt) and none is ignored as a duplicate.
- One drain at a time: the run's lease (:mod:`autopack_pipeline.storage.run_lease`) is taken first;
  another process asking for the same run id is refused with who holds it and until when.
- Outages: an event that cannot be written is spooled; a phase's state is retried for
  ``db_retry_seconds`` and then the run stops, resumably. A phase whose answer is stored is never
  marked FAILED because the database was down; its state is put right by the next drain.
- A refused API key (HTTP 401) stops the run at once; the phases not drained stay pending.

A collection run always records its events: it exists to collect them, just as Autopack's drain
controller set ``TELEMETRY_DB_ENABLED=1`` for the phases it drained.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import PhaseSpec, RunSpec
from autopack_pipeline.collection.run_rows import create_run_row, prepare_run, record_phase_outcome
from autopack_pipeline.llm.builder import Builder, PhaseResult
from autopack_pipeline.storage import spool
from autopack_pipeline.storage.database import safe_error_text
from autopack_pipeline.storage.events import (
    SPOOL_INSERTERS,
    EstimationEvent,
    WriteOutcome,
    store_escalation_event,
    store_estimation_event,
)
from autopack_pipeline.storage.models import TokenEstimationV2Event
from autopack_pipeline.storage.retry import DEFAULT_RETRY_SECONDS, DatabaseUnavailable, retry_while_unavailable
from autopack_pipeline.storage.run_lease import (
    DEFAULT_LEASE_SECONDS,
    FINISHED_STATE,
    RESUMABLE_STATE,
    RunLease,
)
from autopack_pipeline.storage.runs import set_phase_state

logger = logging.getLogger(__name__)

API_KEY_VARIABLE = "ANTHROPIC_API_KEY"


@dataclass
class CollectionSummary:
    run_id: str
    backend: str
    model: str
    phases_total: int = 0
    phases_skipped_complete: int = 0
    phases_completed: int = 0
    phases_failed: int = 0
    # Not drained because the run stopped (refused API key, database unavailable): a re-run drains them.
    phases_pending: int = 0
    # Events stored by this run, counting those spooled during an outage and replayed before it ended.
    events_written: int = 0
    # This run's events still waiting in the spool when it ended (the database was still unavailable).
    events_spooled: int = 0
    # Answers neither written nor spooled (the database and the spool both failed): lost.
    events_not_stored: int = 0
    # Drained phases whose phase_outcome_events row could not be written within the retry budget: lost.
    outcomes_not_stored: int = 0
    # Answers under MIN_VALID_OUTPUT_TOKENS (an empty "files: []"): the writer refuses them, as
    # Autopack's does, with a warning each; counted here so the summary says how many.
    short_answers_not_recorded: int = 0
    escalations: int = 0
    spool_file: str | None = None
    stopped_reason: str | None = None
    failures: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Why the run did not do what was asked; empty when it did (``collect`` then exits 0)."""
        found = [self.stopped_reason] if self.stopped_reason else []
        if self.events_not_stored:
            found.append(f"{self.events_not_stored} answer(s) could not be stored: the database and the spool "
                         f"both failed (spool {self.spool_file})")
        if self.events_spooled:
            found.append(f"{self.events_spooled} event(s) are still spooled in {self.spool_file}; run "
                         "`autopack-telemetry spool replay` when the database is back")
        if self.outcomes_not_stored:
            found.append(f"the outcome row (phase_outcome_events) of {self.outcomes_not_stored} phase(s) could not "
                         "be stored: the database stayed unavailable or refused it")
        drained = self.phases_completed + self.phases_failed
        if drained and not self.phases_completed:
            found.append(f"every phase drained failed ({drained})")
        if drained and not (self.events_written or self.events_spooled):
            found.append("0 events written")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok, "problems": self.problems()}


def default_run_id(now: datetime | None = None) -> str:
    """``telemetry-collection-<UTC time>-<6 hex>``: readable, and unique for two runs in the same second."""
    return f"telemetry-collection-{(now or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def event_uid(run_id: str, phase_id: str, attempt: int) -> str:
    return hashlib.sha256(f"{run_id}|{phase_id}|{attempt}".encode()).hexdigest()[:32]


class _Stop(Exception):
    """The run must stop; the message says why (it is shown to the user)."""


@dataclass
class _Drain:
    """Shared by the workers of one run."""

    engine: Engine
    run_id: str
    builder: Builder
    retry_seconds: float
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    spooled_uids: set[str] = field(default_factory=set)

    def halt(self, reason: str) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        self.stop.set()


@dataclass
class _PhaseDrained:
    result: PhaseResult
    written: int = 0
    not_stored: int = 0
    short: int = 0
    pending: bool = False  # the phase was left for a re-run
    outcome_not_stored: bool = False


def run_collection(
    engine: Engine,
    run: RunSpec,
    phases: list[PhaseSpec],
    builder: Builder,
    *,
    concurrency: int = 4,
    progress: Callable[[int, int, PhaseResult], None] | None = None,
    db_retry_seconds: float = DEFAULT_RETRY_SECONDS,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> CollectionSummary:
    """Claim the run, create its rows if needed, then drain its pending phases with ``concurrency`` workers.

    Raises :class:`~autopack_pipeline.storage.run_lease.RunBusy` when another process is draining it,
    and :class:`~autopack_pipeline.storage.retry.DatabaseUnavailable` when the database stays
    unavailable before the drain starts.
    """
    summary = CollectionSummary(run_id=run.run_id, backend=builder.backend.name, model=builder.model,
                                spool_file=str(spool.spool_path(engine)))
    summary.phases_total = len(phases)
    retry_while_unavailable(lambda: create_run_row(engine, run, len(phases)), what=f"run {run.run_id}",
                            budget_seconds=db_retry_seconds)
    lease = retry_while_unavailable(lambda: RunLease.claim(engine, run.run_id, lease_seconds),
                                    what=f"the lease on run {run.run_id}", budget_seconds=db_retry_seconds)
    drain = _Drain(engine, run.run_id, builder, db_retry_seconds)
    try:
        _store_spooled_answers(engine, db_retry_seconds)
        before = retry_while_unavailable(lambda: prepare_run(engine, run, phases), what=f"the phases of {run.run_id}",
                                         budget_seconds=db_retry_seconds)
        pending = [p for p in phases if p.phase_id not in before.complete]
        summary.phases_skipped_complete = len(phases) - len(pending)
        with lease.kept_alive(on_lost=lambda: drain.halt(f"stopped: another process took over run {run.run_id}")):
            _drain_all(drain, pending, before.attempts_stored, concurrency, progress, summary)
        _count_replayed(drain, summary)
    finally:
        finished = not summary.stopped_reason and summary.phases_failed == 0 and summary.phases_pending == 0
        lease.release(FINISHED_STATE if finished else RESUMABLE_STATE, retry_seconds=db_retry_seconds)
    return summary


def _drain_all(drain: _Drain, pending: list[PhaseSpec], attempts_stored: dict[str, int], concurrency: int,
               progress: Callable[[int, int, PhaseResult], None] | None, summary: CollectionSummary) -> None:
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="phase") as pool:
        futures = {
            pool.submit(_drain_phase, drain, phase, attempts_stored.get(phase.phase_id, 0) + 1): phase
            for phase in pending
        }
        for done, future in enumerate(as_completed(futures), start=1):
            phase = futures[future]
            try:
                drained = future.result()
            except Exception as exc:  # a bug in one phase must not stop the run; the phase stays pending
                logger.exception("phase %s crashed", phase.phase_id)
                summary.phases_pending += 1
                summary.failures[phase.phase_id] = f"internal error: {type(exc).__name__}"
                _leave_pending(drain, phase.phase_id)
                continue
            if drained is None:
                summary.phases_pending += 1
                continue
            result = drained.result
            summary.events_written += drained.written
            summary.events_not_stored += drained.not_stored
            summary.outcomes_not_stored += drained.outcome_not_stored
            summary.short_answers_not_recorded += drained.short
            summary.escalations += len(result.escalations)
            if drained.pending:
                summary.phases_pending += 1
            elif result.completed:
                summary.phases_completed += 1
            else:
                summary.phases_failed += 1
                summary.failures[phase.phase_id] = result.failure_reason or "unknown"
            if progress is not None:
                progress(done, len(pending), result)
    summary.stopped_reason = drain.stop_reason
    if summary.stopped_reason and summary.phases_pending:
        summary.stopped_reason += (f"; {summary.phases_pending} phase(s) left pending: re-run with "
                                   f"--run-id {drain.run_id} to drain them")


def _estimate_features(result: PhaseResult) -> dict:
    """The doc features the estimate used (Autopack's columns), so the phase can be re-predicted."""
    features = result.estimate.doc_features
    keys = ("api_reference_required", "examples_required", "research_required", "usage_guide_required",
            "context_quality", "is_sot_file", "sot_file_name", "sot_entry_count_hint")
    return {key: features[key] for key in keys if key in features}


def _drain_phase(drain: _Drain, phase: PhaseSpec, first_attempt: int) -> _PhaseDrained | None:
    """Drain one phase; None when the run was stopping and the phase was not touched."""
    if drain.stop.is_set():
        return None
    try:
        set_phase_state(drain.engine, drain.run_id, phase.phase_id, "EXECUTING", retry_seconds=drain.retry_seconds)
    except DatabaseUnavailable as exc:
        drain.halt(f"stopped: {exc}")
        return None
    result = drain.builder.run_phase({**phase.model_dump(), "run_id": drain.run_id}, phase.max_builder_attempts,
                                     first_attempt=first_attempt)
    drained = _store_answers(drain, phase, result)
    if result.error_status == 401:
        drain.halt(f"stopped: the Messages API refused the API key (HTTP 401); check {API_KEY_VARIABLE}")
        drained.pending = True
    elif drained.not_stored:
        drain.halt(f"stopped: an answer of phase {phase.phase_id} could not be stored (the database was "
                   f"unavailable and the spool {spool.spool_path(drain.engine)} could not be written)")
        drained.pending = True
    if drained.pending:
        # Not FAILED: nothing is wrong with the phase; the next drain asks again, after these attempts.
        _leave_pending(drain, phase.phase_id)
        return drained
    state = "COMPLETE" if result.completed else "FAILED"
    try:
        set_phase_state(drain.engine, drain.run_id, phase.phase_id, state, result.failure_reason,
                        retry_seconds=drain.retry_seconds)
    except DatabaseUnavailable as exc:
        # The answers are stored or spooled; the next drain sets the state from them.
        drain.halt(f"stopped: {exc}")
        return drained
    drained.outcome_not_stored = not record_phase_outcome(drain.engine, drain.run_id, phase, result,
                                                          drain.builder.model, retry_seconds=drain.retry_seconds)
    return drained


def _store_answers(drain: _Drain, phase: PhaseSpec, result: PhaseResult) -> _PhaseDrained:
    drained = _PhaseDrained(result)
    for attempt in result.attempts:
        uid = event_uid(drain.run_id, phase.phase_id, attempt.attempt)
        outcome = store_estimation_event(drain.engine, EstimationEvent(
            run_id=drain.run_id,
            phase_id=phase.phase_id,
            category=result.estimate.category,
            complexity=phase.complexity,
            deliverables=phase.deliverables,
            predicted_output_tokens=attempt.predicted_output_tokens,
            actual_output_tokens=attempt.output_tokens,
            selected_budget=attempt.selected_budget,
            actual_max_tokens=attempt.actual_max_tokens,
            success=attempt.success,
            truncated=attempt.truncated,
            stop_reason=attempt.stop_reason,
            model=attempt.model,
            attempt=attempt.attempt,
            event_uid=uid,
            phase_completed=result.completed,
            coefficients_version=drain.builder.estimator.coefficients.version,
            **_estimate_features(result),
        ))
        drained.written += outcome == WriteOutcome.WRITTEN
        drained.short += outcome == WriteOutcome.TOO_SHORT
        drained.not_stored += outcome == WriteOutcome.NOT_STORED
        if outcome == WriteOutcome.SPOOLED:
            with drain.lock:
                drain.spooled_uids.add(uid)
    for escalation in result.escalations:
        outcome = store_escalation_event(drain.engine, run_id=drain.run_id, phase_id=phase.phase_id,
                                         **escalation.__dict__)
        drained.not_stored += outcome == WriteOutcome.NOT_STORED
    return drained


def _leave_pending(drain: _Drain, phase_id: str) -> None:
    """Put a phase back to QUEUED; if the database is down it stays EXECUTING, which the next drain undoes."""
    try:
        set_phase_state(drain.engine, drain.run_id, phase_id, "QUEUED", retry_seconds=0)
    except Exception as exc:  # noqa: BLE001 - prepare_run treats a stale EXECUTING phase as pending
        logger.warning("phase %s left EXECUTING (%s); the next drain treats it as pending",
                       phase_id, safe_error_text(exc))


class _SpoolNotEmpty(RuntimeError):
    """Spooled events could not be written yet (the database is still locked or down)."""


def _store_spooled_answers(engine: Engine, budget_seconds: float) -> None:
    """Write every spooled event before the phases are judged, retrying within the budget.

    A retried phase numbers its new attempts after the ones stored. An answer still in the spool would
    share its attempt number (and so its event id) with a new attempt, and the later replay would refuse
    it as a duplicate: one answer lost. So the drain does not start until the spool is empty; if the
    database stays unavailable the run stops (DatabaseUnavailable) and can be resumed.
    """

    def replay_all() -> None:
        report = spool.replay(engine, SPOOL_INSERTERS)
        if report.still_failing:
            raise _SpoolNotEmpty(report.error or "spooled events could not be written")

    retry_while_unavailable(replay_all, what=f"the spooled events in {spool.spool_path(engine)}",
                            budget_seconds=budget_seconds, also_retry=(_SpoolNotEmpty,))


def _replay_spool(engine: Engine) -> None:
    try:
        spool.replay(engine, SPOOL_INSERTERS)
    except Exception as exc:  # noqa: BLE001 - what is left is counted and reported at the end
        logger.warning("spool replay failed: %s", safe_error_text(exc))


def _count_replayed(drain: _Drain, summary: CollectionSummary) -> None:
    """Replay what this run spooled; count what reached the database as written, the rest as spooled."""
    if not drain.spooled_uids:
        return
    _replay_spool(drain.engine)
    events = TokenEstimationV2Event
    try:
        with drain.engine.connect() as connection:
            stored = set(connection.execute(
                select(events.event_uid).where(events.run_id == drain.run_id,
                                               events.event_uid.in_(sorted(drain.spooled_uids)))
            ).scalars())
    except Exception as exc:  # noqa: BLE001 - still unavailable: all of them are still spooled
        logger.warning("could not check the replayed events: %s", safe_error_text(exc))
        stored = set()
    summary.events_written += len(stored)
    summary.events_spooled = len(drain.spooled_uids - stored)
