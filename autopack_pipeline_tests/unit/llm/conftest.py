"""The LLM-layer fixtures (a clean environment for the SDK, the local Messages API server), from support/."""

from autopack_pipeline_tests.support.llm_fixtures import (  # noqa: F401 - re-exported fixtures
    _clean_environment,
    delays,
    make_anthropic,
    messages_server,
    profile,
    stream_mode,
)
