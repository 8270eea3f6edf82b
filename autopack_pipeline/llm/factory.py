"""Choose the backend from settings: simulated unless another is asked for."""

from __future__ import annotations

from pathlib import Path

from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.replay import RecordingBackend, ReplayBackend
from autopack_pipeline.llm.simulated import SimulatedBackend, SimulationProfile
from autopack_pipeline.settings import Settings, SettingsError

BACKENDS = ("simulated", "anthropic", "replay")
# Backends whose calls are billed: an orchestrated collection on one needs explicit consent.
PAID_BACKENDS = frozenset({"anthropic"})


def make_backend(
    settings: Settings,
    backend: str | None = None,
    seed: int | None = None,
    *,
    replay_file: Path | None = None,
    record_file: Path | None = None,
) -> LLMBackend:
    """The backend named by ``backend`` or AUTOPACK_LLM_BACKEND, optionally recording its answers."""
    name = backend or settings.llm_backend
    chosen: LLMBackend
    if name == "simulated":
        chosen = SimulatedBackend(
            SimulationProfile.load(settings.seeds_dir), seed=settings.simulation_seed if seed is None else seed
        )
    elif name == "anthropic":
        if settings.anthropic_api_key is None or not settings.anthropic_api_key.get_secret_value():
            raise SettingsError("the anthropic backend needs ANTHROPIC_API_KEY; set it, or use --backend simulated")
        from autopack_pipeline.llm.anthropic_backend import AnthropicBackend

        chosen = AnthropicBackend(
            settings.anthropic_api_key.get_secret_value(),
            stream=settings.llm_stream,
            connect_timeout_seconds=settings.llm_connect_timeout,
            read_timeout_seconds=settings.llm_read_timeout,
            total_timeout_seconds=settings.llm_total_timeout,
        )
    elif name == "replay":
        path = replay_file or settings.replay_file
        if path is None:
            raise SettingsError("the replay backend needs a recording: --replay-file FILE or AUTOPACK_REPLAY_FILE")
        chosen = ReplayBackend(path)
    else:
        raise SettingsError(f"unknown LLM backend {name!r}: choose one of {', '.join(BACKENDS)}")
    record = record_file or settings.record_file
    return RecordingBackend(chosen, record) if record else chosen
