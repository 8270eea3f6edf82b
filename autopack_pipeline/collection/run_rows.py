"""A collection run's specs and the Builder's results as the rows of ``runs``, ``tiers``, ``phases``
and ``phase_outcome_events``.

What goes in which column is decided here; :mod:`autopack_pipeline.storage.runs` writes the rows and
keeps the phases' states, knowing nothing of specs or of the Builder.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import PhaseSpec, RunSpec
from autopack_pipeline.llm.builder import PhaseResult
from autopack_pipeline.storage import runs as run_rows
from autopack_pipeline.storage.retry import DEFAULT_RETRY_SECONDS
from autopack_pipeline.storage.runs import RunProgress


def phase_columns(spec: PhaseSpec) -> dict[str, Any]:
    """The columns of a phase's row that come from its spec."""
    return {
        "phase_id": spec.phase_id,
        "phase_index": spec.phase_index,
        "name": spec.name,
        "description": spec.goal,
        "task_category": spec.category,
        "complexity": spec.complexity,
        "scope": {
            "paths": spec.scope_paths,
            "read_only_context": spec.read_only_context,
            "deliverables": spec.deliverables,
        },
        "max_builder_attempts": spec.max_builder_attempts,
    }


def outcome_columns(phase: PhaseSpec, result: PhaseResult, model: str) -> dict[str, Any]:
    """The columns of a drained phase's ``phase_outcome_events`` row (but its ids and timestamp)."""
    last = result.attempts[-1] if result.attempts else None
    return {
        "phase_type": phase.category,
        "phase_outcome": "SUCCESS" if result.completed else "FAILED",
        "stop_reason": last.stop_reason if last else result.failure_reason,
        "tokens_used": result.tokens_used,
        "duration_seconds": result.duration_seconds,
        "model_used": model,
        "context_injected": bool(phase.read_only_context),
        "context_item_count": len(phase.read_only_context),
    }


def create_run_row(engine: Engine, run: RunSpec, phase_count: int) -> None:
    """The run's ``runs`` row, unless it exists (see :func:`autopack_pipeline.storage.runs.create_run_row`)."""
    run_rows.create_run_row(engine, run.run_id, token_cap=run.token_cap, max_phases=max(run.max_phases, phase_count),
                            max_duration_minutes=run.max_duration_minutes)


def prepare_run(engine: Engine, run: RunSpec, phases: list[PhaseSpec]) -> RunProgress:
    """The run's missing tier and phase rows, states reconciled (see :func:`autopack_pipeline.storage.runs.prepare_run`)."""
    tier = {"tier_id": run.tier_id, "name": run.tier_name, "token_cap": run.token_cap}
    return run_rows.prepare_run(engine, run.run_id, tier, [phase_columns(spec) for spec in phases])


def record_phase_outcome(
    engine: Engine, run_id: str, phase: PhaseSpec, result: PhaseResult, model: str, *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> bool:
    """The drained phase's outcome row; False when it could not be written (see
    :func:`autopack_pipeline.storage.runs.record_phase_outcome`)."""
    return run_rows.record_phase_outcome(engine, run_id, phase.phase_id, outcome_columns(phase, result, model),
                                         retry_seconds=retry_seconds)
