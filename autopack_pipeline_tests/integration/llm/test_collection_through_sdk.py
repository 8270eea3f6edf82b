"""A collection run through the real SDK and the local server: what the database stores equals what
the server sent, for every fault the issue names, streamed and not."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from autopack_pipeline.llm.prompt import render_files
from autopack_pipeline.services import collecting
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.models import Phase, PhaseOutcomeEvent, TokenBudgetEscalationEvent
from autopack_pipeline_tests.support.messages_server import (
    Answer,
    Drop,
    DropMidStream,
    Slow,
    Truncated,
    invalid_request,
    overloaded,
    rate_limited,
)

DELIVERABLE = "examples/sdk/module.py"
FILES = render_files({DELIVERABLE: "def f():\n    return 1\n" * 40})


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sdk.db'}")
    upgrade_database(engine)
    return engine


@pytest.fixture
def phases_file(tmp_path):
    path = tmp_path / "phases.yaml"
    path.write_text(
        "run: {run_id: sdk-run}\nphases:\n"
        f"  - {{phase_id: p1, name: one, goal: Write the module, category: implementation, complexity: low,"
        f" deliverables: [{DELIVERABLE}]}}\n"
    )
    return path


def _collect(engine, make_anthropic, phases_file, **backend_options):
    backend = make_anthropic(**backend_options)
    return collecting.collect(engine, load_settings(), backend, phases_file=phases_file, concurrency=1)


def _rows(engine):
    events = read_events(engine).sort_values("attempt").reset_index(drop=True)
    with Session(engine) as session:
        phase = session.scalars(select(Phase)).one()
        outcome = session.scalars(select(PhaseOutcomeEvent)).one()
        escalations = session.scalars(select(TokenBudgetEscalationEvent)).all()
    return events, phase, outcome, escalations


def test_normal_answer_is_stored_as_sent(engine, make_anthropic, messages_server, phases_file):
    messages_server.script(Answer(FILES, output_tokens=812, input_tokens=90))
    summary = _collect(engine, make_anthropic, phases_file)
    events, phase, outcome, escalations = _rows(engine)
    (sent,) = messages_server.message_requests()
    assert summary.phases_completed == 1 and summary.backend == "anthropic"
    assert events.loc[0, "actual_output_tokens"] == 812
    assert events.loc[0, "stop_reason"] == "end_turn" and not events.loc[0, "truncated"]
    assert events.loc[0, "actual_max_tokens"] == sent.body["max_tokens"] == events.loc[0, "selected_budget"]
    assert events.loc[0, "attempt"] == 1 and events.loc[0, "success"]
    assert phase.state == "COMPLETE" and outcome.phase_outcome == "SUCCESS" and outcome.tokens_used == 812 + 90
    assert escalations == []


def test_truncation_then_escalated_retry_is_stored_per_attempt(engine, make_anthropic, messages_server, phases_file):
    messages_server.script(Truncated(FILES), Answer(FILES, output_tokens=9000))
    _collect(engine, make_anthropic, phases_file)
    events, phase, outcome, escalations = _rows(engine)
    first, second = messages_server.message_requests()
    assert list(events["attempt"]) == [1, 2]
    assert events.loc[0, "actual_output_tokens"] == first.body["max_tokens"]  # the server cut at the ceiling
    assert events.loc[0, "stop_reason"] == "max_tokens" and events.loc[0, "truncated"]
    assert events.loc[1, "actual_max_tokens"] == second.body["max_tokens"] == min(int(first.body["max_tokens"] * 1.25),
                                                                                    64000)
    assert events.loc[1, "actual_output_tokens"] == 9000 and not events.loc[1, "truncated"]
    (escalation,) = escalations
    assert (escalation.attempt_index, escalation.retry_max_tokens) == (1, second.body["max_tokens"])
    assert phase.state == "COMPLETE" and outcome.phase_outcome == "SUCCESS"


@pytest.mark.parametrize("fault", [overloaded(), rate_limited("0"), Drop(), Slow(seconds=3.0)],
                         ids=["529", "429", "dropped", "timeout"])
def test_a_retried_fault_stores_only_the_answer(engine, make_anthropic, messages_server, phases_file, fault):
    messages_server.script(fault, Answer(FILES, output_tokens=700))
    summary = _collect(engine, make_anthropic, phases_file, timeout_seconds=1.0)
    events, phase, _, _ = _rows(engine)
    assert summary.phases_completed == 1
    assert len(events) == 1 and events.loc[0, "actual_output_tokens"] == 700
    assert len(messages_server.message_requests()) == 2


def test_a_bad_request_fails_the_phase_with_the_reason_and_writes_no_event(engine, make_anthropic, messages_server,
                                                                             phases_file):
    messages_server.script(invalid_request())
    summary = _collect(engine, make_anthropic, phases_file)
    events, phase, outcome, _ = _rows(engine)
    assert summary.phases_failed == 1 and events.empty
    assert phase.state == "FAILED" and "HTTP 400" in phase.last_failure_reason
    assert outcome.phase_outcome == "FAILED"


def test_a_refused_key_stops_the_run_and_leaves_every_phase_pending(engine, make_anthropic, messages_server,
                                                                     tmp_path):
    from autopack_pipeline_tests.support.llm_fixtures import FAKE_KEY
    from autopack_pipeline_tests.support.messages_server import Error

    phases = tmp_path / "three.yaml"
    phases.write_text("run: {run_id: key-run}\nphases:\n" + "".join(
        f"  - {{phase_id: k{i}, name: n{i}, goal: Write it, category: implementation, complexity: low,"
        f" deliverables: [{DELIVERABLE}]}}\n" for i in range(3)))
    messages_server.script(Error(401, "authentication_error", "invalid x-api-key"))

    summary = _collect(engine, make_anthropic, phases)

    assert len(messages_server.message_requests()) == 1  # stopped at the first 401
    assert summary.phases_failed == 0 and summary.phases_pending == 3 and not summary.ok
    assert "ANTHROPIC_API_KEY" in summary.stopped_reason and FAKE_KEY not in str(summary.as_dict())
    with Session(engine) as session:
        assert set(session.scalars(select(Phase.state))) == {"QUEUED"}


def test_a_stream_dropped_on_attempt_2_keeps_attempt_1s_event(engine, make_anthropic, messages_server, phases_file):
    # Attempt 1 is truncated (stored, escalated); attempt 2's first stream is cut part-way, then retried.
    messages_server.script(Truncated(FILES), DropMidStream(after_events=5), Answer(FILES, output_tokens=9000))
    summary = _collect(engine, make_anthropic, phases_file)
    events, phase, outcome, escalations = _rows(engine)
    assert summary.phases_completed == 1 and summary.failures == {}
    assert list(events["attempt"]) == [1, 2]
    assert events.loc[0, "truncated"] and events.loc[1, "actual_output_tokens"] == 9000
    assert len(escalations) == 1
    assert phase.state == "COMPLETE" and outcome.phase_outcome == "SUCCESS"
    assert len(messages_server.message_requests()) == 3


def test_a_stream_that_keeps_dropping_fails_the_phase_with_the_reason_and_keeps_attempt_1(
        engine, make_anthropic, messages_server, phases_file):
    messages_server.script(Truncated(FILES), DropMidStream(), DropMidStream())
    summary = _collect(engine, make_anthropic, phases_file, max_retries=1)
    events, phase, outcome, _ = _rows(engine)
    assert summary.phases_failed == 1
    assert list(events["attempt"]) == [1] and events.loc[0, "truncated"]
    assert phase.state == "FAILED" and "dropped" in phase.last_failure_reason
    assert "internal error" not in phase.last_failure_reason
    assert outcome.phase_outcome == "FAILED"
