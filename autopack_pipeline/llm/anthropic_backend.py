"""The real Messages API through the ``anthropic`` SDK, with our own retry loop.

The SDK can retry by itself, but then the number of retries and their causes are invisible. We set
the SDK's ``max_retries`` to 0 and retry here, honouring ``retry-after``, so every retry is counted
and the reason for a final failure can be stored with the phase.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

import anthropic

from autopack_pipeline.llm.backends import LLMCallError, LLMRequest, LLMResponse

logger = logging.getLogger(__name__)

TEMPERATURE = 0.2  # as Autopack's Builder
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class AnthropicBackend:
    """Claude through the Messages API. ``base_url`` defaults to the SDK's (which honours ANTHROPIC_BASE_URL)."""

    name = "anthropic"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_seconds: float = 600.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        stream: bool = True,
    ) -> None:
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_seconds
        )
        self.max_retries = max_retries
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep
        # Autopack streams its Builder calls: a 64k-token answer outlasts any sane non-streaming timeout.
        self.stream = stream

    def complete(self, request: LLMRequest) -> LLMResponse:
        retries = 0
        while True:
            try:
                message = self._send(request)
            except anthropic.APIStatusError as exc:
                reason = f"HTTP {exc.status_code} from the Messages API"
                if exc.status_code not in RETRYABLE_STATUS or retries >= self.max_retries:
                    raise LLMCallError(reason, retries=retries, status_code=exc.status_code) from None
                delay = self._retry_after(exc) or self._backoff(retries)
            except anthropic.APITimeoutError:
                reason = "request timed out"
                if retries >= self.max_retries:
                    raise LLMCallError(reason, retries=retries) from None
                delay = self._backoff(retries)
            except anthropic.APIConnectionError:
                reason = "connection failed or dropped"
                if retries >= self.max_retries:
                    raise LLMCallError(reason, retries=retries) from None
                delay = self._backoff(retries)
            except (anthropic.APIResponseValidationError, json.JSONDecodeError):
                # A 2xx whose body is not a Messages API answer (a proxy's page, a cut body).
                raise LLMCallError("unreadable answer from the Messages API", retries=retries) from None
            except (TypeError, AttributeError):
                raise LLMCallError("malformed answer from the Messages API", retries=retries) from None
            except ValueError:
                # The SDK refuses some requests before sending them (e.g. a non-streaming call it
                # expects to outlast its timeout). Its message is not kept: only fixed text is stored.
                raise LLMCallError("the anthropic SDK refused the request before sending it", retries=retries) from None
            else:
                try:
                    return _response_from(message, request.model, retries)
                except (TypeError, AttributeError, ValueError):
                    raise LLMCallError("malformed answer from the Messages API", retries=retries) from None
            retries += 1
            logger.warning("LLM call failed (%s); retry %d of %d in %.1fs", reason, retries, self.max_retries, delay)
            self._sleep(delay)

    def _send(self, request: LLMRequest) -> anthropic.types.Message:
        arguments = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": [{"role": "user", "content": request.prompt}],
            "temperature": TEMPERATURE,
        }
        if not self.stream:
            return self._client.messages.create(**arguments)
        with self._client.messages.stream(**arguments) as stream:
            try:
                return stream.get_final_message()
            except AssertionError:
                # The SDK asserts when the body held no message events (not an event stream at all).
                raise TypeError("no message in the event stream") from None

    def _backoff(self, retries: int) -> float:
        # Full jitter: spreads retries from concurrent phases so they do not arrive together.
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2**retries)
        return random.uniform(0, ceiling)

    def _retry_after(self, exc: anthropic.APIStatusError) -> float | None:
        value = exc.response.headers.get("retry-after") if exc.response is not None else None
        try:
            return min(self.backoff_max_seconds, max(0.0, float(value))) if value is not None else None
        except ValueError:
            return None


def _response_from(message: anthropic.types.Message, requested_model: str, retries: int) -> LLMResponse:
    """Our response from the SDK's message; raises TypeError/AttributeError if the body lacked a field."""
    text = "".join(getattr(block, "text", None) or "" for block in message.content)
    return LLMResponse(
        text=text,
        output_tokens=int(message.usage.output_tokens),
        input_tokens=int(message.usage.input_tokens),
        stop_reason=message.stop_reason,
        model=message.model or requested_model,
        retries=retries,
    )
