"""SimulatedBackend (determinism, truncation, rates against its profile) and make_backend."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopack_pipeline.llm.anthropic_backend import AnthropicBackend
from autopack_pipeline.llm.backends import LLMRequest
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.llm.prompt import parse_files
from autopack_pipeline.llm.simulated import CHARS_PER_TOKEN, DEGENERATE_TOKENS, SimulatedBackend, SimulationProfile
from autopack_pipeline.settings import Settings, SettingsError, load_settings
from autopack_pipeline_tests.support.llm_fixtures import FAKE_KEY
from autopack_pipeline_tests.support.messages_server import Answer, MessagesServer

MODEL = "claude-test-model"


def phase(phase_id: str = "P1", deliverables: list[str] | None = None, run_id: str = "run-sim", **extra) -> dict:
    spec = {
        "run_id": run_id,
        "phase_id": phase_id,
        "category": "implementation",
        "complexity": "medium",
        "deliverables": deliverables if deliverables is not None else ["src/app/module.py", "tests/test_module.py"],
        "attempt": 1,
    }
    spec.update(extra)
    return spec


def call(backend: SimulatedBackend, spec: dict, max_tokens: int = 64000):
    return backend.complete(LLMRequest(MODEL, max_tokens, "system text", "prompt text for the phase", spec))


def clean(profile: SimulationProfile) -> SimulationProfile:
    """The same profile without degenerate or malformed answers, for tests about length alone."""
    return profile.model_copy(update={"degenerate_probability": 0.0, "malformed_probability": 0.0})


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_run_and_phase_give_identical_answers(profile) -> None:
    first, second = SimulatedBackend(profile, seed=11), SimulatedBackend(profile, seed=11)
    for index in range(30):
        spec = phase(f"P{index}")
        assert first.intended_output_tokens(spec) == second.intended_output_tokens(spec)
        assert call(first, spec) == call(second, spec)
        assert call(first, spec, max_tokens=500) == call(second, spec, max_tokens=500)


def test_different_seed_gives_different_lengths(profile) -> None:
    specs = [phase(f"P{index}") for index in range(30)]
    a = [SimulatedBackend(profile, seed=1).intended_output_tokens(s) for s in specs]
    b = [SimulatedBackend(profile, seed=2).intended_output_tokens(s) for s in specs]
    assert sum(x != y for x, y in zip(a, b)) >= 28


def test_run_and_phase_shape_the_length_but_attempt_does_not(profile) -> None:
    backend = SimulatedBackend(profile, seed=5)
    base = backend.intended_output_tokens(phase("P1"))
    assert backend.intended_output_tokens(phase("P1", attempt=2)) == base
    others = {backend.intended_output_tokens(phase("P1", run_id=f"run-{i}")) for i in range(10)}
    assert len(others) >= 9


def test_answer_lengths_match_their_token_counts(profile) -> None:
    backend = SimulatedBackend(clean(profile), seed=8)
    for index in range(50):
        spec = phase(f"P{index}")
        response = call(backend, spec)
        assert response.stop_reason == "end_turn"
        assert response.output_tokens == backend.intended_output_tokens(spec)
        assert abs(len(response.text) - response.output_tokens * CHARS_PER_TOKEN) <= 0.05 * len(response.text) + 100
        assert response.input_tokens == int((len("system text") + len("prompt text for the phase")) * 0.25)
        assert set(parse_files(response.text)) == set(spec["deliverables"])


# -- truncation and escalation --------------------------------------------------------------------

paths = st.lists(
    st.sampled_from(["a.py", "x.md", "src/app/module.py", "tests/test_module.py", "docs/" + "long_name_" * 8 + ".md"]),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phase_number=st.integers(0, 10_000), deliverables=paths, short_by=st.integers(1, 400))
def test_ceiling_below_intended_length_truncates_mid_file(profile, phase_number, deliverables, short_by) -> None:
    backend = SimulatedBackend(clean(profile), seed=21)
    spec = phase(f"P{phase_number}", deliverables)
    wanted = backend.intended_output_tokens(spec)
    ceiling = max(1, wanted - short_by)

    response = call(backend, spec, max_tokens=ceiling)

    assert response.stop_reason == "max_tokens"
    assert response.output_tokens == ceiling
    assert len(response.text) <= ceiling * CHARS_PER_TOKEN
    parsed = parse_files(response.text)
    assert deliverables[-1] not in parsed  # the last block was cut and does not parse
    assert set(parsed) < set(deliverables)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phase_number=st.integers(0, 10_000), deliverables=paths, headroom=st.floats(1.0, 2.0))
def test_escalated_ceiling_above_intended_length_completes(profile, phase_number, deliverables, headroom) -> None:
    backend = SimulatedBackend(clean(profile), seed=21)
    spec = phase(f"P{phase_number}", deliverables)
    wanted = backend.intended_output_tokens(spec)
    first = call(backend, spec, max_tokens=max(1, int(wanted * 0.8)))
    escalated = max(wanted + 1, int(wanted * headroom))

    retry = call(backend, {**spec, "attempt": 2}, max_tokens=escalated)

    assert first.stop_reason == "max_tokens"
    assert retry.stop_reason == "end_turn"
    assert retry.output_tokens == wanted < escalated
    assert set(parse_files(retry.text)) == set(deliverables)


# -- rates against the profile --------------------------------------------------------------------


def test_rates_over_many_phases_match_the_profile(profile) -> None:
    backend = SimulatedBackend(profile, seed=42)
    n = 3000
    degenerate = malformed = 0
    for index in range(n):
        spec = phase(f"R{index}")
        response = call(backend, spec)
        if response.text == "files: []":
            degenerate += 1
            assert response.output_tokens == DEGENERATE_TOKENS and response.stop_reason == "end_turn"
        elif set(parse_files(response.text)) != set(spec["deliverables"]):
            malformed += 1
            assert set(parse_files(response.text)) == {spec["deliverables"][0]}
    expected_degenerate = n * profile.degenerate_probability
    expected_malformed = n * (1 - profile.degenerate_probability) * profile.malformed_probability
    assert 0.4 * expected_degenerate <= degenerate <= 1.8 * expected_degenerate
    assert 0.6 * expected_malformed <= malformed <= 1.5 * expected_malformed


@pytest.mark.parametrize(("category", "complexity"), [("implementation", "medium"), ("tests", "low"), ("docs", "high")])
def test_median_length_follows_the_profile(profile, category, complexity) -> None:
    backend = SimulatedBackend(profile, seed=42)
    lengths = [
        backend.intended_output_tokens(phase(f"M{i}", ["one_file.py"], category=category, complexity=complexity))
        for i in range(1500)
    ]
    median = profile.median_for(category, complexity)
    assert 0.92 * median <= statistics.median(lengths) <= 1.1 * median
    # the heavy tail exists but stays a tail
    assert 0.005 <= sum(x > 2.5 * median for x in lengths) / len(lengths) <= 0.08


def test_extra_deliverables_lengthen_the_answer(profile) -> None:
    backend = SimulatedBackend(profile, seed=42)
    one = statistics.median(backend.intended_output_tokens(phase(f"D{i}", ["a.py"])) for i in range(600))
    three = statistics.median(backend.intended_output_tokens(phase(f"D{i}", ["a.py", "b.py", "c.py"])) for i in range(600))
    expected = 1 + 2 * profile.extra_deliverable_fraction
    assert 0.9 * expected <= three / one <= 1.1 * expected


# -- make_backend ---------------------------------------------------------------------------------


def test_make_backend_defaults_to_simulated() -> None:
    settings_ = load_settings()
    assert settings_.llm_backend == "simulated"

    backend = make_backend(settings_)

    assert isinstance(backend, SimulatedBackend)
    assert backend.name == "simulated"
    assert backend.seed == settings_.simulation_seed
    assert make_backend(settings_, seed=7).seed == 7
    assert make_backend(load_settings(simulation_seed=99)).seed == 99


def test_make_backend_reads_the_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "anthropic")
    with pytest.raises(SettingsError, match="ANTHROPIC_API_KEY"):
        make_backend(load_settings())
    assert isinstance(make_backend(load_settings(), backend="simulated"), SimulatedBackend)


@pytest.mark.parametrize("key", [None, ""])
def test_make_backend_refuses_anthropic_without_a_key(key) -> None:
    with pytest.raises(SettingsError, match="ANTHROPIC_API_KEY"):
        make_backend(load_settings(anthropic_api_key=key), backend="anthropic")


def test_make_backend_refuses_unknown_names() -> None:
    with pytest.raises(SettingsError, match="unknown LLM backend 'replay-x'"):
        make_backend(load_settings(), backend="replay-x")


@pytest.mark.integration  # talks to the local Messages API server
def test_make_backend_anthropic_talks_to_the_configured_server(
    monkeypatch: pytest.MonkeyPatch, messages_server: MessagesServer
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_server.url)
    settings_: Settings = load_settings(llm_backend="anthropic")
    messages_server.script(Answer("from the factory", output_tokens=4))

    backend = make_backend(settings_)
    response = backend.complete(LLMRequest(MODEL, 100, "s", "p"))

    assert isinstance(backend, AnthropicBackend)
    assert response.text == "from the factory"
    assert messages_server.requests[0].headers["x-api-key"] == FAKE_KEY
    assert FAKE_KEY not in repr(settings_)
