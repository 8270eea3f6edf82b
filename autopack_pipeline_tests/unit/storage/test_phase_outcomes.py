"""One ``phase_outcome_events`` row per drained phase, even when a write is retried after its commit."""

from __future__ import annotations

from sqlalchemy import func, select

from autopack_pipeline.collection.phases import RunSpec
from autopack_pipeline.collection.run_rows import create_run_row
from autopack_pipeline.storage import runs
from autopack_pipeline.storage.models import PhaseOutcomeEvent

OUTCOME = {"phase_type": "implementation", "phase_outcome": "SUCCESS", "tokens_used": 120}


def _rows(engine, run_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(PhaseOutcomeEvent)
                                  .where(PhaseOutcomeEvent.run_id == run_id)).scalar_one()


def test_a_write_retried_after_its_commit_leaves_one_row(engine, monkeypatch):
    create_run_row(engine, RunSpec(run_id="outcomes"), 2)

    def committed_then_retried(write, **_kwargs):
        write()  # the commit went through but its answer was lost ...
        write()  # ... so the retry runs the same write again

    monkeypatch.setattr(runs, "retry_while_unavailable", committed_then_retried)
    assert runs.record_phase_outcome(engine, "outcomes", "p-1", OUTCOME)
    assert runs.record_phase_outcome(engine, "outcomes", "p-2", OUTCOME)
    assert _rows(engine, "outcomes") == 2  # one per phase, not one per attempt
