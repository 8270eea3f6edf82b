"""LLM backends behind one small interface: the Builder never knows which one it talks to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LLMRequest:
    model: str
    max_tokens: int
    system: str
    prompt: str
    # What the phase is about. The simulated backend shapes its answer from it; the real API never sees it.
    phase: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LLMResponse:
    text: str
    output_tokens: int
    input_tokens: int
    stop_reason: str | None
    model: str
    # API retries spent before this answer came back (429, 529, 5xx, timeouts, dropped connections)
    retries: int = 0


class LLMCallError(RuntimeError):
    """The backend gave up on a request; ``reason`` is safe to store (it never holds a secret)."""

    def __init__(self, reason: str, *, retries: int = 0, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retries = retries
        self.status_code = status_code


class LLMBackend(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> LLMResponse: ...
