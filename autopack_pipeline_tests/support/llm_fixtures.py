"""Fixtures for the LLM-layer tests: a local Messages API server and a clean environment for the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autopack_pipeline.llm.anthropic_backend import AnthropicBackend
from autopack_pipeline.llm.simulated import SimulationProfile
from autopack_pipeline_tests.support.messages_server import MessagesServer

FAKE_KEY = "sk-test-not-a-real-key-7f3a9c"
SEEDS_DIR = Path(__file__).resolve().parents[2] / "seeds"

# Variables the SDK or httpx read from the environment: unset so nothing leaves 127.0.0.1 and no
# real credential is picked up.
_ENVIRONMENT = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "AUTOPACK_LLM_BACKEND",
    "AUTOPACK_SIM_SEED",
    "AUTOPACK_MODEL",
    "AUTOPACK_SEEDS_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def messages_server() -> Iterator[MessagesServer]:
    server = MessagesServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def delays() -> list[float]:
    """What the backend asked to sleep, in order (nothing actually sleeps)."""
    return []


@pytest.fixture(params=[False, True], ids=["create", "stream"])
def stream_mode(request: pytest.FixtureRequest) -> bool:
    """Every backend test runs twice: a plain Messages call and a streamed one."""
    return request.param


@pytest.fixture
def make_anthropic(messages_server: MessagesServer, delays: list[float], stream_mode: bool):
    """An AnthropicBackend pointed at the local server, with the sleeps of its own retry loop recorded
    instead of slept (the SDK's retries before an answer starts sleep for real)."""

    def make(max_retries: int = 2, timeout_seconds: float = 5.0, **kwargs) -> AnthropicBackend:
        """``timeout_seconds`` is the read timeout of a streamed call and the total one of a plain call."""
        kwargs.setdefault("stream", stream_mode)
        return AnthropicBackend(
            FAKE_KEY,
            base_url=messages_server.url,
            max_retries=max_retries,
            connect_timeout_seconds=kwargs.pop("connect_timeout_seconds", 5.0),
            read_timeout_seconds=timeout_seconds,
            total_timeout_seconds=kwargs.pop("total_timeout_seconds", 60.0 if kwargs["stream"] else timeout_seconds),
            backoff_base_seconds=kwargs.pop("backoff_base_seconds", 0.5),
            backoff_max_seconds=kwargs.pop("backoff_max_seconds", 8.0),
            sleep=delays.append,
            **kwargs,
        )

    return make


@pytest.fixture(scope="session")
def profile() -> SimulationProfile:
    return SimulationProfile.load(SEEDS_DIR)
