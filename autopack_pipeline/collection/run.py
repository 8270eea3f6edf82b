"""Drain a collection run: every phase not yet complete goes through the Builder, concurrently.

Re-running the same run id drains only the phases that are not COMPLETE, and every event carries a
stable id derived from (run, phase, attempt), so a resumed run writes no duplicate rows (Autopack's
P13/P16). A collection run always records its events: it exists to collect them, just as Autopack's
drain controller set ``TELEMETRY_DB_ENABLED=1`` for the phases it drained.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import PhaseSpec, RunSpec
from autopack_pipeline.llm.builder import Builder, PhaseResult
from autopack_pipeline.storage.events import (
    MIN_VALID_OUTPUT_TOKENS,
    EstimationEvent,
    record_escalation_event,
    record_estimation_event,
)
from autopack_pipeline.storage.runs import (
    prepare_run,
    record_phase_outcome,
    set_phase_state,
)

logger = logging.getLogger(__name__)


@dataclass
class CollectionSummary:
    run_id: str
    backend: str
    model: str
    phases_total: int = 0
    phases_skipped_complete: int = 0
    phases_completed: int = 0
    phases_failed: int = 0
    events_written: int = 0
    # Answers under MIN_VALID_OUTPUT_TOKENS (an empty "files: []"): the writer refuses them, as
    # Autopack's does, with a warning each; counted here so the summary says how many.
    short_answers_not_recorded: int = 0
    escalations: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def default_run_id(now: datetime | None = None) -> str:
    return f"telemetry-collection-{(now or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}"


def event_uid(run_id: str, phase_id: str, attempt: int) -> str:
    return hashlib.sha256(f"{run_id}|{phase_id}|{attempt}".encode()).hexdigest()[:32]


def run_collection(
    engine: Engine,
    run: RunSpec,
    phases: list[PhaseSpec],
    builder: Builder,
    *,
    concurrency: int = 4,
    progress: Callable[[int, int, PhaseResult], None] | None = None,
) -> CollectionSummary:
    """Create the run's rows if needed, then drain its pending phases with ``concurrency`` workers."""
    summary = CollectionSummary(run_id=run.run_id, backend=builder.backend.name, model=builder.model)
    summary.phases_total = len(phases)
    complete = prepare_run(engine, run, phases)
    pending = [p for p in phases if p.phase_id not in complete]
    summary.phases_skipped_complete = len(phases) - len(pending)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="phase") as pool:
        futures = {pool.submit(_drain_phase, engine, run.run_id, phase, builder): phase for phase in pending}
        for done, future in enumerate(as_completed(futures), start=1):
            phase = futures[future]
            try:
                result, written = future.result()
            except Exception as exc:  # a bug in one phase must not stop the run
                logger.exception("phase %s crashed", phase.phase_id)
                summary.phases_failed += 1
                summary.failures[phase.phase_id] = f"internal error: {type(exc).__name__}"
                set_phase_state(engine, run.run_id, phase.phase_id, "FAILED", summary.failures[phase.phase_id])
                continue
            summary.events_written += written
            summary.short_answers_not_recorded += sum(
                a.output_tokens < MIN_VALID_OUTPUT_TOKENS for a in result.attempts)
            summary.escalations += len(result.escalations)
            if result.completed:
                summary.phases_completed += 1
            else:
                summary.phases_failed += 1
                summary.failures[phase.phase_id] = result.failure_reason or "unknown"
            if progress is not None:
                progress(done, len(pending), result)
    return summary


def _estimate_features(result: PhaseResult) -> dict:
    """The doc features the estimate used (Autopack's columns), so the phase can be re-predicted."""
    features = result.estimate.doc_features
    keys = ("api_reference_required", "examples_required", "research_required", "usage_guide_required",
            "context_quality", "is_sot_file", "sot_file_name", "sot_entry_count_hint")
    return {key: features[key] for key in keys if key in features}


def _drain_phase(engine: Engine, run_id: str, phase: PhaseSpec, builder: Builder) -> tuple[PhaseResult, int]:
    set_phase_state(engine, run_id, phase.phase_id, "EXECUTING")
    result = builder.run_phase({**phase.model_dump(), "run_id": run_id}, phase.max_builder_attempts)
    written = 0
    for attempt in result.attempts:
        event = EstimationEvent(
            run_id=run_id,
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
            event_uid=event_uid(run_id, phase.phase_id, attempt.attempt),
            phase_completed=result.completed,
            coefficients_version=builder.estimator.coefficients.version,
            **_estimate_features(result),
        )
        written += bool(record_estimation_event(engine, event, respect_flag=False))
    for escalation in result.escalations:
        record_escalation_event(engine, run_id=run_id, phase_id=phase.phase_id, **escalation.__dict__)
    state = "COMPLETE" if result.completed else "FAILED"
    set_phase_state(engine, run_id, phase.phase_id, state, result.failure_reason)
    record_phase_outcome(engine, run_id, phase, result, builder.model)
    return result, written
