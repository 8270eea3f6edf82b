"""How :func:`load_settings` finds its variables: the rules of pydantic-settings' ``BaseSettings``, which
``Settings`` was until it became a plain model (it read them the same way at ten times the cost).

Names in any case, the first of several aliases that is set, an override beating the environment, a
bad value named by the variable it came from.
"""

from __future__ import annotations

import os

import pytest

from autopack_pipeline.settings import SettingsError, load_settings


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith(("AUTOPACK_", "TASK_GENERATION_", "ANTHROPIC_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_a_variable_is_found_whatever_its_case(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("autopack_llm_backend", "replay")
    bare_environment.setenv("Autopack_Sim_Seed", "7")
    settings = load_settings()
    assert settings.llm_backend == "replay" and settings.simulation_seed == 7


def test_the_first_alias_set_wins(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("TASK_GENERATION_MAX_TASKS_PER_RUN", "3")
    assert load_settings().task_generation_max_tasks == 3  # Autopack's name alone
    bare_environment.setenv("AUTOPACK_TASK_GENERATION_MAX_TASKS", "4")
    assert load_settings().task_generation_max_tasks == 4  # ours first


def test_an_override_beats_the_environment(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("AUTOPACK_SIM_SEED", "7")
    bare_environment.setenv("TASK_GENERATION_ENABLED", "false")
    settings = load_settings(simulation_seed=99, task_generation_enabled=True, not_a_setting=1)
    assert settings.simulation_seed == 99 and settings.task_generation_enabled is True


def test_values_are_strings_converted_by_the_model(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("AUTOPACK_LLM_STREAM", "no")
    bare_environment.setenv("AUTOPACK_LLM_READ_TIMEOUT", "2.5")
    bare_environment.setenv("ANTHROPIC_API_KEY", "sk-test")
    settings = load_settings()
    assert settings.llm_stream is False and settings.llm_read_timeout == 2.5
    assert settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)


def test_a_bad_value_is_named_by_its_variable(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("task_generation_min_confidence", "1.5")
    with pytest.raises(SettingsError, match=r"TASK_GENERATION_MIN_CONFIDENCE: .*less than or equal to 1 \(got '1.5'\)"):
        load_settings()
