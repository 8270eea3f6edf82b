"""The Builder driving the real SDK against the local server: attempts, truncation and escalation.

Budgets are recomputed in the tests from the estimator and ``select_budget`` (not copied from the
Builder), and every number the Builder records is compared with what the server received or sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.escalation import MAX_TOKENS_CAP
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget
from autopack_pipeline.llm.builder import Attempt, Builder, escalation_for
from autopack_pipeline.llm.prompt import SYSTEM_PROMPT, render_files
from autopack_pipeline.llm.simulated import SimulatedBackend
from autopack_pipeline_tests.support.messages_server import (
    Answer,
    MessagesServer,
    Raw,
    Truncated,
    invalid_request,
    server_error,
)

MODEL = "claude-test-model"


def phase(*deliverables: str, complexity: str = "low", phase_id: str = "P1") -> dict:
    return {
        "run_id": "run-builder-test",
        "phase_id": phase_id,
        "goal": "Add the module and its tests",
        "category": "implementation",
        "complexity": complexity,
        "deliverables": list(deliverables) or ["src/app/new_module.py"],
    }


def files_for(deliverables: list[str]) -> str:
    return render_files({path: f"# {path}\nVALUE = 1\n" * 20 for path in deliverables})


@pytest.fixture
def estimator(tmp_path: Path) -> TokenEstimator:
    seed_file = Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml"
    return TokenEstimator(load_coefficients(seed_file), workspace=tmp_path)


@pytest.fixture
def builder(estimator: TokenEstimator, make_anthropic) -> Builder:
    return Builder(estimator, make_anthropic(max_retries=2), MODEL)


def selected_budget(estimator: TokenEstimator, spec: dict) -> tuple[int, int]:
    estimate = estimator.estimate(spec["deliverables"], spec["category"], spec["complexity"], None, spec["goal"])
    return estimate.estimated_tokens, select_budget(estimate, spec["complexity"], estimator.coefficients)


def test_normal_phase_is_one_successful_attempt(builder: Builder, estimator, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py")
    predicted, budget = selected_budget(estimator, spec)
    messages_server.script(Answer(files_for(spec["deliverables"]), output_tokens=1234, input_tokens=210))

    result = builder.run_phase(spec, max_builder_attempts=3)

    assert result.completed
    assert result.failure_reason is None
    assert result.escalations == []
    [attempt] = result.attempts
    [sent] = messages_server.requests
    assert attempt.actual_max_tokens == sent.body["max_tokens"] == budget
    assert attempt.selected_budget == budget
    assert attempt.predicted_output_tokens == predicted == result.estimate.estimated_tokens
    assert (attempt.output_tokens, attempt.input_tokens) == (1234, 210)
    assert attempt.stop_reason == "end_turn"
    assert attempt.truncated is False and attempt.success is True
    assert attempt.missing_deliverables == ()
    assert attempt.model == MODEL and attempt.api_retries == 0 and attempt.attempt == 1
    assert result.tokens_used == 1234 + 210
    assert result.duration_seconds >= 0
    assert sent.body["model"] == MODEL
    assert sent.body["system"] == SYSTEM_PROMPT
    assert "src/app/new_module.py" in sent.body["messages"][0]["content"]


def test_api_retries_are_recorded_on_the_attempt(builder: Builder, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py")
    messages_server.script(server_error(), Answer(files_for(spec["deliverables"]), output_tokens=900))

    result = builder.run_phase(spec)

    assert result.completed
    assert result.attempts[0].api_retries == 1
    assert len(messages_server.requests) == 2


def test_truncation_escalates_once_and_completes(builder: Builder, estimator, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py", "src/app/helpers.py", complexity="medium")
    _, budget = selected_budget(estimator, spec)
    full = files_for(spec["deliverables"])
    messages_server.script(Truncated(full), Answer(full, output_tokens=9000))

    result = builder.run_phase(spec, max_builder_attempts=3)

    first, second = (r.body for r in messages_server.requests)
    assert first["max_tokens"] == budget
    expected_retry = min(int(max(budget, first["max_tokens"]) * 1.25), 64000)
    assert second["max_tokens"] == expected_retry
    assert result.completed and result.failure_reason is None
    assert [a.attempt for a in result.attempts] == [1, 2]
    truncated, retried = result.attempts
    assert truncated.truncated and not truncated.success
    assert truncated.stop_reason == "max_tokens"
    assert truncated.output_tokens == first["max_tokens"]
    assert truncated.missing_deliverables == ("src/app/helpers.py",)
    assert retried.actual_max_tokens == expected_retry and retried.success
    assert retried.selected_budget == budget  # the selected budget is not rewritten by the escalation
    [escalation] = result.escalations
    assert escalation.attempt_index == 1
    assert escalation.base_value == budget
    assert escalation.base_source in {"selected_budget", "actual_max_tokens", "tokens_used"}
    assert escalation.retry_max_tokens == expected_retry
    assert escalation.selected_budget == budget
    assert escalation.actual_max_tokens == first["max_tokens"]
    assert escalation.tokens_used == first["max_tokens"]
    assert escalation.was_truncated is True and escalation.reason == "truncation"
    assert escalation.output_utilization == 100.0
    assert escalation.escalation_factor == 1.25
    assert result.tokens_used == sum(a.output_tokens + a.input_tokens for a in result.attempts)


def test_output_at_the_ceiling_counts_as_truncated(builder: Builder, estimator, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py")
    _, budget = selected_budget(estimator, spec)
    full = files_for(spec["deliverables"])
    # end_turn, but every token of the ceiling used: the Builder must not trust the answer
    messages_server.script(Answer(full, output_tokens=budget, stop_reason="end_turn"), Answer(full, output_tokens=100))

    result = builder.run_phase(spec)

    assert result.attempts[0].truncated and not result.attempts[0].success
    assert len(result.escalations) == 1
    assert result.completed


def test_truncated_twice_fails_with_a_reason(builder: Builder, estimator, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py")
    _, budget = selected_budget(estimator, spec)
    full = files_for(spec["deliverables"])
    messages_server.script(Truncated(full), Truncated(full), Answer(full))

    result = builder.run_phase(spec, max_builder_attempts=3)

    retry = min(int(budget * 1.25), 64000)
    assert [r.body["max_tokens"] for r in messages_server.requests] == [budget, retry]
    assert messages_server.remaining == 1  # no third call: escalation happens once per phase
    assert not result.completed
    assert len(result.attempts) == 2 and all(a.truncated for a in result.attempts)
    assert len(result.escalations) == 1
    assert result.failure_reason == f"output truncated at {retry} tokens"


def test_truncation_on_the_last_allowed_attempt_does_not_escalate(
    builder: Builder, estimator, messages_server: MessagesServer
) -> None:
    spec = phase("src/app/new_module.py")
    _, budget = selected_budget(estimator, spec)
    messages_server.script(Truncated(files_for(spec["deliverables"])))

    result = builder.run_phase(spec, max_builder_attempts=1)

    assert len(messages_server.requests) == 1
    assert result.escalations == []
    assert not result.completed
    assert result.failure_reason == f"output truncated at {budget} tokens"


def test_missing_deliverable_fails_without_escalation(builder: Builder, messages_server: MessagesServer) -> None:
    spec = phase("src/app/new_module.py", "src/app/other.py")
    messages_server.script(Answer(files_for(["src/app/new_module.py"]), output_tokens=700), Answer("unused"))

    result = builder.run_phase(spec, max_builder_attempts=3)

    assert not result.completed
    [attempt] = result.attempts
    assert not attempt.success and not attempt.truncated
    assert attempt.missing_deliverables == ("src/app/other.py",)
    assert result.escalations == []
    assert result.failure_reason == "missing deliverables: src/app/other.py"
    assert len(messages_server.requests) == 1


def test_missing_deliverable_near_the_ceiling_escalates_for_utilisation(
    builder: Builder, estimator, messages_server: MessagesServer
) -> None:
    spec = phase("src/app/new_module.py", "src/app/other.py")
    _, budget = selected_budget(estimator, spec)
    near = -(-budget * 95 // 100)  # the least output at 95% of the ceiling, not cut off
    messages_server.script(Answer(files_for(["src/app/new_module.py"]), output_tokens=near),
                           Answer(files_for(spec["deliverables"]), output_tokens=700))

    result = builder.run_phase(spec, max_builder_attempts=3)

    assert result.completed
    first, retried = result.attempts
    assert not first.truncated and first.missing_deliverables == ("src/app/other.py",)
    [escalation] = result.escalations
    assert (escalation.reason, escalation.was_truncated) == ("utilization", False)
    assert escalation.output_utilization == round(100 * near / budget, 2) >= 95.0
    assert retried.actual_max_tokens == escalation.retry_max_tokens == min(int(budget * 1.25), MAX_TOKENS_CAP)
    assert [r.body["max_tokens"] for r in messages_server.requests] == [budget, escalation.retry_max_tokens]


def test_missing_deliverable_just_below_the_near_ceiling_mark_fails_without_escalation(
    builder: Builder, estimator, messages_server: MessagesServer
) -> None:
    spec = phase("src/app/new_module.py", "src/app/other.py")
    _, budget = selected_budget(estimator, spec)
    below = -(-budget * 95 // 100) - 1
    messages_server.script(Answer(files_for(["src/app/new_module.py"]), output_tokens=below), Answer("unused"))

    result = builder.run_phase(spec, max_builder_attempts=3)

    assert not result.completed and result.escalations == [] and len(messages_server.requests) == 1
    assert result.failure_reason == "missing deliverables: src/app/other.py"


def test_call_error_is_stored_without_attempts(builder: Builder, messages_server: MessagesServer) -> None:
    messages_server.script(invalid_request("max_tokens: 999999 > 64000"))

    result = builder.run_phase(phase("src/app/new_module.py"))

    assert result.attempts == []
    assert result.escalations == []
    assert not result.completed
    assert result.tokens_used == 0
    assert result.failure_reason == "LLM call failed after 0 retries: HTTP 400 from the Messages API"


def test_call_error_after_retries_names_the_count(builder: Builder, messages_server: MessagesServer) -> None:
    messages_server.script(server_error(), server_error(), server_error())

    result = builder.run_phase(phase("src/app/new_module.py"))

    assert result.attempts == []
    assert result.failure_reason == "LLM call failed after 2 retries: HTTP 500 from the Messages API"


def test_call_error_on_the_escalated_retry_keeps_the_first_attempt(
    builder: Builder, messages_server: MessagesServer
) -> None:
    spec = phase("src/app/new_module.py")
    messages_server.script(Truncated(files_for(spec["deliverables"])), invalid_request())

    result = builder.run_phase(spec)

    assert len(result.attempts) == 1 and result.attempts[0].truncated
    assert len(result.escalations) == 1
    assert not result.completed
    assert result.failure_reason.startswith("LLM call failed after 0 retries: HTTP 400")


def test_unreadable_answer_fails_the_phase_instead_of_raising(builder: Builder, messages_server: MessagesServer) -> None:
    messages_server.script(Raw(200, b'{"id": "msg_1", "type": "message", "content": null}'))

    result = builder.run_phase(phase("src/app/new_module.py"))

    assert result.attempts == []
    assert result.failure_reason == "LLM call failed after 0 retries: malformed answer from the Messages API"


def test_described_deliverables_match_the_files_the_model_writes(
    builder: Builder, messages_server: MessagesServer
) -> None:
    # Deliverables as Autopack phrased them; a model answers with the bare (or ./-prefixed) paths.
    spec = phase("Create src/app/new_module.py (new)", "Modify docs/guide.md to add usage")
    answer = render_files({"src/app/new_module.py": "A = 1\n", "./docs/guide.md": "# Guide\n"})
    messages_server.script(Answer(answer, output_tokens=300))

    result = builder.run_phase(spec)

    assert result.attempts[0].missing_deliverables == ()
    assert result.completed

    partial = render_files({"src/app/new_module.py": "A = 1\n"})
    messages_server.script(Answer(partial, output_tokens=300))
    result = builder.run_phase(spec)
    assert result.attempts[-1].missing_deliverables == ("Modify docs/guide.md to add usage",)
    assert not result.completed and messages_server.remaining == 0


# -- the escalation rule on its own ---------------------------------------------------------------


def attempt_with(selected: int, ceiling: int, used: int) -> Attempt:
    return Attempt(
        attempt=2, predicted_output_tokens=1, selected_budget=selected, actual_max_tokens=ceiling,
        output_tokens=used, input_tokens=0, stop_reason="max_tokens", truncated=True, success=False,
        missing_deliverables=(), model=MODEL, api_retries=0,
    )


@pytest.mark.parametrize(
    ("selected", "ceiling", "used", "source", "base", "retry"),
    [
        (8192, 16384, 16384, "actual_max_tokens", 16384, 20480),
        (20000, 16384, 16384, "selected_budget", 20000, 25000),
        (8192, 8000, 9001, "tokens_used", 9001, 11251),
        (60000, 60000, 60000, "selected_budget", 60000, MAX_TOKENS_CAP),
    ],
)
def test_escalation_base_and_cap(selected, ceiling, used, source, base, retry) -> None:
    escalation = escalation_for(attempt_with(selected, ceiling, used))

    assert (escalation.base_source, escalation.base_value, escalation.retry_max_tokens) == (source, base, retry)
    assert escalation.attempt_index == 2
    assert escalation.output_utilization == round(100 * used / ceiling, 2)


# -- the Builder with the simulated backend -------------------------------------------------------


def test_simulated_phase_escalates_past_its_intended_length(estimator, profile) -> None:
    backend = SimulatedBackend(profile, seed=3)
    # a phase whose intended answer is longer than its first ceiling but fits the escalated one
    for index in range(400):
        spec = phase("src/app/new_module.py", phase_id=f"S{index}")
        _, budget = selected_budget(estimator, spec)
        wanted = backend.intended_output_tokens(spec)
        if budget < wanted < int(budget * 1.25):
            break
    else:
        pytest.fail("no phase in range: the profile changed")

    result = Builder(estimator, backend, MODEL).run_phase(spec)

    assert result.attempts[0].truncated and result.attempts[0].output_tokens == budget
    assert len(result.escalations) == 1
    assert result.attempts[1].actual_max_tokens == int(budget * 1.25)
    assert result.completed
    assert result.attempts[1].output_tokens == wanted
    assert result.attempts[1].stop_reason == "end_turn"
