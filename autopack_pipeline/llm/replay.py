"""Record answers to an NDJSON file, and answer from such a file later.

A recording made against the real API (or the simulator) can be replayed offline, so a collection
run, a bug report or a test can be reproduced exactly without a key or network. Answers are keyed by
(phase_id, attempt); the prompt is not part of the key, so a replay survives prompt wording changes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from autopack_pipeline.llm.backends import (
    LLMBackend,
    LLMCallError,
    LLMRequest,
    LLMResponse,
)
from autopack_pipeline.output_files import check_appendable

RECORD_FIELDS = ("text", "output_tokens", "input_tokens", "stop_reason", "model")


class ReplayFileError(ValueError):
    """The replay file cannot be used; the message names the file and the line."""


def _key(request: LLMRequest) -> tuple[str, int]:
    return str(request.phase.get("phase_id", "")), int(request.phase.get("attempt", 1))


class ReplayBackend:
    """Answers each (phase, attempt) with what a recording holds for it."""

    name = "replay"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._answers: dict[tuple[str, int], LLMResponse] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ReplayFileError(f"{self.path}: cannot read the replay file ({exc.strerror})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["phase_id"]), int(record.get("attempt", 1)))
                self._answers[key] = LLMResponse(**{name: record[name] for name in RECORD_FIELDS})
            except (ValueError, KeyError, TypeError) as exc:
                raise ReplayFileError(f"{self.path}:{number}: not a recorded answer ({exc})") from None

    def complete(self, request: LLMRequest) -> LLMResponse:
        phase_id, attempt = _key(request)
        answer = self._answers.get((phase_id, attempt))
        if answer is None:
            raise LLMCallError(f"no recorded answer for phase {phase_id} attempt {attempt}")
        if answer.output_tokens > request.max_tokens:
            # The recording came from a larger ceiling: cut it as the API would have.
            return LLMResponse(answer.text[: request.max_tokens * 4], request.max_tokens, answer.input_tokens,
                               "max_tokens", answer.model)
        return answer


class RecordingBackend:
    """Passes every request to ``inner`` and appends the answer to ``path`` (one JSON object a line)."""

    def __init__(self, inner: LLMBackend, path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = Path(path)
        check_appendable(self.path)  # a bad --record path fails before the first LLM call
        self._lock = threading.Lock()

    def complete(self, request: LLMRequest) -> LLMResponse:
        response = self.inner.complete(request)
        phase_id, attempt = _key(request)
        record = {"phase_id": phase_id, "attempt": attempt} | {name: getattr(response, name) for name in RECORD_FIELDS}
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return response
