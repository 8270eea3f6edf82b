"""The window's escalated retries (domain/analysis/retries.py): what the retry's cut-again chance is read from."""

from __future__ import annotations

import pytest

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.analysis.retries import RetryOutcomes, escalated_retries

pytestmark = pytest.mark.unit


def _call(phase, attempt, ceiling, truncated, run="run-1", success=None):
    return {"run_id": run, "phase_id": phase, "attempt": attempt, "selected_budget": ceiling,
            "actual_max_tokens": ceiling, "actual_output_tokens": ceiling if truncated else ceiling // 2,
            "predicted_output_tokens": 1000, "truncated": truncated,
            "success": (not truncated) if success is None else success}


def test_a_retry_counts_when_its_first_call_was_cut_and_it_had_the_escalated_room():
    records = [
        _call("cut-twice", 1, 4000, True), _call("cut-twice", 2, 5000, True),
        _call("cut-once", 1, 4000, True), _call("cut-once", 2, 5000, False),
        _call("cut-once", 1, 4000, False, run="run-2"),  # same phase id, another run: another phase
        _call("odd-ceiling", 1, 4001, True), _call("odd-ceiling", 2, 5001, False),  # int(4001 x 1.25)
        _call("no-retry", 1, 4000, True),
        _call("not-cut", 1, 4000, False),
        # A failed call near its ceiling escalates too, but its retry says nothing of a cut's.
        _call("near-ceiling", 1, 4000, False, success=False), _call("near-ceiling", 2, 5000, True),
        _call("capped", 1, 60_000, True), _call("capped", 2, 64_000, True),  # less than 1.25x its room
        _call("duplicated", 1, 4000, True), _call("duplicated", 1, 4000, True),
        _call("duplicated", 2, 5000, True),  # which first call it followed is unknown
    ]
    assert escalated_retries(EventArrays.from_records(records)) == RetryOutcomes(retried=3, cut_again=1)
    assert escalated_retries(EventArrays.from_records(records[:1])) == RetryOutcomes(0, 0)


def test_retry_outcomes_refuse_more_cut_than_retried():
    with pytest.raises(ValueError):
        RetryOutcomes(retried=2, cut_again=3)
