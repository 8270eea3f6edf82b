"""Collection runs: resuming an interrupted run writes no duplicates; recordings replay exactly."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from autopack_pipeline.llm.backends import LLMRequest, LLMResponse
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services import collecting
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.models import Phase


class CrashAfter:
    """Passes calls through, then fails every call after ``limit`` as if the process died."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit, self.calls, self.name = inner, limit, 0, inner.name

    def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("worker died")
        return self.inner.complete(request)


@pytest.fixture
def engine(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    return engine


def _collect(engine, backend, run_id: str):
    return collecting.collect(engine, load_settings(), backend, run_id=run_id, template_phases_per_group=2,
                             concurrency=3)


def test_interrupted_run_resumes_without_duplicate_events(engine):
    from autopack_pipeline_tests.unit.collection.test_collection_resume import Recording, assert_stored_exactly_once

    settings = load_settings()
    first = Recording(CrashAfter(make_backend(settings), limit=9))
    crashed = _collect(engine, first, "resume-me")
    assert crashed.phases_failed > 0 and crashed.phases_completed > 0
    assert all(reason.startswith("internal error") for reason in crashed.failures.values())
    # A killed process also leaves phases EXECUTING after storing their answer: the next drain
    # marks such a phase COMPLETE from its stored event instead of asking the LLM again.
    with Session(engine) as session, session.begin():
        victim = session.scalars(select(Phase).where(Phase.run_id == "resume-me", Phase.state == "COMPLETE")).first()
        victim_id = victim.phase_id
        session.execute(update(Phase).where(Phase.id == victim.id).values(state="EXECUTING"))
    before = read_events(engine, ["resume-me"])

    second = Recording(make_backend(settings))
    resumed = _collect(engine, second, "resume-me")
    assert resumed.phases_skipped_complete == crashed.phases_completed
    assert victim_id not in {phase for phase, _, _ in second.answers}
    after = read_events(engine, ["resume-me"])
    assert len(after) == len(before) + resumed.events_written > len(before)
    assert_stored_exactly_once(engine, "resume-me", first.answers + second.answers)


def test_a_recording_replays_the_same_events(engine, tmp_path):
    settings = load_settings()
    recording = tmp_path / "answers.ndjson"
    live = collecting.collect(engine, settings, make_backend(settings, record_file=recording),
                             run_id="live", category="tests", complexity="medium", phases=4)
    replayed = collecting.collect(engine, settings, make_backend(settings, "replay", replay_file=recording),
                                 run_id="replayed", category="tests", complexity="medium", phases=4)
    assert replayed.backend == "replay"
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert len(lines) >= live.events_written and {"phase_id", "attempt", "text"} <= set(lines[0])
    columns = ["phase_id", "attempt", "actual_output_tokens", "stop_reason", "truncated", "success"]
    a = read_events(engine, ["live"])[columns].sort_values(["phase_id", "attempt"]).reset_index(drop=True)
    b = read_events(engine, ["replayed"])[columns].sort_values(["phase_id", "attempt"]).reset_index(drop=True)
    assert a.equals(b)


def test_replay_without_an_answer_fails_the_phase_and_the_run_goes_on(engine, tmp_path):
    settings = load_settings()
    recording = tmp_path / "partial.ndjson"
    recording.write_text(json.dumps({"phase_id": "tpl-docs-low-001", "attempt": 1, "text": "x", "output_tokens": 80,
                                     "input_tokens": 5, "stop_reason": "end_turn", "model": "m"}) + "\n")
    summary = collecting.collect(engine, settings, make_backend(settings, "replay", replay_file=recording),
                                run_id="partial", category="docs", complexity="low", phases=2)
    assert summary.phases_failed == 2  # the one answer lacks the file block; the other has no answer
    assert "no recorded answer for phase tpl-docs-low-002 attempt 1" in summary.failures["tpl-docs-low-002"]


def test_an_unreadable_recording_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"phase_id": "p"}\n')
    with pytest.raises(ValueError, match=r"bad.ndjson:1: not a recorded answer"):
        make_backend(load_settings(), "replay", replay_file=bad)


class EmptyFor:
    """Answers an empty file list (5 output tokens) for the given phases, the rest as ``inner``; counts
    every answer it hands back under the writer's 50-token minimum (the simulator makes some too)."""

    def __init__(self, inner, phase_ids: set[str]) -> None:
        self.inner, self.phase_ids, self.name, self.short = inner, phase_ids, inner.name, 0

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.phase["phase_id"] in self.phase_ids:
            response = LLMResponse("files: []", 5, 100, "end_turn", request.model)
        else:
            response = self.inner.complete(request)
        self.short += response.output_tokens < 50
        return response


def test_answers_too_short_to_record_are_counted_in_the_summary(engine):
    settings = load_settings()
    reference_engine = make_engine(f"sqlite:///{engine.url.database}.reference")
    upgrade_database(reference_engine)
    _collect(reference_engine, make_backend(settings), "short")
    empty = set(sorted(set(read_events(reference_engine, ["short"])["phase_id"]))[:3])
    backend = EmptyFor(make_backend(settings), empty)

    summary = _collect(engine, backend, "short")

    stored = read_events(engine, ["short"])
    assert not stored["phase_id"].isin(empty).any()  # the writer refused them, as Autopack's does
    assert summary.events_written == len(stored) > 0
    assert summary.short_answers_not_recorded == backend.short >= len(empty)
    assert all(summary.failures[p] for p in empty)
