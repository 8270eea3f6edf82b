"""Choose the backend from settings: simulated unless the real API is asked for and a key exists."""

from __future__ import annotations

from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.simulated import SimulatedBackend, SimulationProfile
from autopack_pipeline.settings import Settings, SettingsError


def make_backend(settings: Settings, backend: str | None = None, seed: int | None = None) -> LLMBackend:
    name = backend or settings.llm_backend
    if name == "simulated":
        return SimulatedBackend(SimulationProfile.load(settings.seeds_dir), seed=settings.simulation_seed if seed is None else seed)
    if name == "anthropic":
        if settings.anthropic_api_key is None or not settings.anthropic_api_key.get_secret_value():
            raise SettingsError(
                "the anthropic backend needs ANTHROPIC_API_KEY; set it, or use --backend simulated"
            )
        from autopack_pipeline.llm.anthropic_backend import AnthropicBackend

        return AnthropicBackend(settings.anthropic_api_key.get_secret_value())
    raise SettingsError(f"unknown LLM backend {name!r}: choose simulated or anthropic")
