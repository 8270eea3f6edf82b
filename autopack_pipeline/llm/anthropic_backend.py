"""The real Messages API through the ``anthropic`` SDK.

Retries come from two places that share one budget of ``max_retries``:

- Before an answer starts (an HTTP error status, a connection refused or dropped, no response within
  the timeout) the SDK's own retry loop decides, as Anthropic documents it: 408, 409, 429 and 5xx
  (529 included) and connection faults are retried, ``x-should-retry: true|false`` overrides that,
  ``retry-after-ms`` then ``retry-after`` (up to 60 s) set the wait, else exponential back-off with
  jitter (0.5 s to 8 s). We give the SDK the retries left and do not copy its rules.
- Once a streamed answer has begun (status 200 and some events sent), the SDK no longer retries: a
  connection dropped part-way, an ``event: error`` part-way, or a stall past the read timeout is raised
  from the stream. Only for those is there a loop of ours: each is retried as its HTTP equivalent (a
  dropped connection, the error type's status, a timeout) with full-jitter back-off.

The SDK numbers its attempts in the ``x-stainless-retry-count`` request header; adding that to our
own retries gives the count that ``LLMResponse``/``LLMCallError`` carry. A final failure's reason is
fixed text chosen here (never the server's message, which could echo anything), so it is safe to store.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

import anthropic
import httpx

from autopack_pipeline.llm.backends import LLMCallError, LLMRequest, LLMResponse

logger = logging.getLogger(__name__)

TEMPERATURE = 0.2  # as Autopack's Builder

# The HTTP status of each error type the Messages API documents: an ``event: error`` part-way through a
# stream is what that status would have been had the fault come before the 200.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
UNKNOWN_ERROR_TYPE = "api_error"  # an error type we do not know is taken as the API's internal error


class _MidStreamFault(Exception):
    """A streamed answer that failed after it began; ``retries_before`` are the SDK's for this stream."""

    def __init__(self, reason: str, *, retries_before: int, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retries_before = retries_before
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        # The SDK's rule for a status without an x-should-retry header; no status: a drop or a timeout.
        code = self.status_code
        return code is None or code in (408, 409, 429) or code >= 500


class AnthropicBackend:
    """Claude through the Messages API. ``base_url`` defaults to the SDK's (which honours ANTHROPIC_BASE_URL).

    ``connect_timeout_seconds`` bounds opening a connection; ``read_timeout_seconds`` the silence
    allowed between two pieces of a streamed answer (a plain call has no pieces, so it gets
    ``total_timeout_seconds`` instead); ``total_timeout_seconds`` one answer from request to last event.
    """

    name = "anthropic"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        max_retries: int = 4,
        connect_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 120.0,
        total_timeout_seconds: float = 1800.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        stream: bool = True,
    ) -> None:
        # Autopack streams its Builder calls: a 64k-token answer outlasts any sane non-streaming timeout.
        self.stream = stream
        read = read_timeout_seconds if stream else total_timeout_seconds
        timeout = httpx.Timeout(connect=connect_timeout_seconds, read=read, write=read, pool=connect_timeout_seconds)
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.max_retries = max_retries
        self.total_timeout_seconds = total_timeout_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._sleep = sleep

    def complete(self, request: LLMRequest) -> LLMResponse:
        retries = 0  # spent so far, the SDK's and ours
        while True:
            client = self._client.with_options(max_retries=self.max_retries - retries)
            try:
                message, sdk_retries = self._send(client, request)
            except _MidStreamFault as fault:
                retries += fault.retries_before
                if not fault.retryable or retries >= self.max_retries:
                    raise LLMCallError(fault.reason, retries=retries, status_code=fault.status_code) from None
                delay = self._backoff(retries)
                retries += 1
                logger.warning(
                    "LLM call failed (%s); retry %d of %d in %.1fs", fault.reason, retries, self.max_retries, delay
                )
                self._sleep(delay)
                continue
            # Everything below failed before an answer began: the SDK has already retried what it should.
            except anthropic.APIStatusError as exc:
                raise LLMCallError(
                    _status_reason(exc.status_code), retries=retries + _retries_taken(exc), status_code=exc.status_code
                ) from None
            except anthropic.APITimeoutError as exc:
                raise LLMCallError("request timed out", retries=retries + _retries_taken(exc)) from None
            except anthropic.APIConnectionError as exc:
                raise LLMCallError("connection failed or dropped", retries=retries + _retries_taken(exc)) from None
            except (anthropic.APIResponseValidationError, json.JSONDecodeError):
                # A 2xx whose body is not a Messages API answer (a proxy's page, a cut body).
                raise LLMCallError("unreadable answer from the Messages API", retries=retries) from None
            except (TypeError, AttributeError):
                raise LLMCallError("malformed answer from the Messages API", retries=retries) from None
            except ValueError:
                # The SDK refuses some requests before sending them. Its message is not kept: only fixed text is stored.
                raise LLMCallError("the anthropic SDK refused the request before sending it", retries=retries) from None
            try:
                return _response_from(message, request.model, retries + sdk_retries)
            except (TypeError, AttributeError, ValueError):
                raise LLMCallError("malformed answer from the Messages API", retries=retries + sdk_retries) from None

    def _send(self, client: anthropic.Anthropic, request: LLMRequest) -> tuple[anthropic.types.Message, int]:
        """The answer and the retries the SDK spent on it; :class:`_MidStreamFault` if a stream broke."""
        arguments = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": [{"role": "user", "content": request.prompt}],
            "temperature": TEMPERATURE,
        }
        if not self.stream:
            raw = client.messages.with_raw_response.create(**arguments)
            return raw.parse(), raw.retries_taken
        started = time.monotonic()
        with client.messages.stream(**arguments) as stream:  # the SDK's retries happen in here
            sdk_retries = _header_count(stream.response.request)
            try:
                return self._read_stream(stream, started, sdk_retries), sdk_retries
            except anthropic.APIStatusError as exc:
                # An ``event: error``: the SDK raises it with the stream's 200, which says nothing.
                error_type = exc.type if exc.type in ERROR_TYPE_STATUS else UNKNOWN_ERROR_TYPE
                status = ERROR_TYPE_STATUS[error_type]
                reason = f"{error_type} event part-way through the streamed answer (as HTTP {status})"
                if status == 401:
                    reason = _status_reason(401)
                raise _MidStreamFault(reason, retries_before=sdk_retries, status_code=status) from None
            except httpx.TimeoutException:
                reason = "request timed out part-way through the streamed answer"
                raise _MidStreamFault(reason, retries_before=sdk_retries) from None
            except httpx.TransportError:
                reason = "connection dropped part-way through the streamed answer"
                raise _MidStreamFault(reason, retries_before=sdk_retries) from None

    def _read_stream(
        self, stream: anthropic.MessageStream, started: float, sdk_retries: int
    ) -> anthropic.types.Message:
        began = stopped = False
        for event in stream:
            began = True
            stopped = stopped or event.type == "message_stop"
            # Checked as events arrive: a stream that trickles forever never trips the read timeout.
            if time.monotonic() - started > self.total_timeout_seconds:
                reason = "request timed out: the streamed answer took longer than the total timeout"
                raise _MidStreamFault(reason, retries_before=sdk_retries)
        if began and not stopped:
            # The body ended cleanly but the answer did not: as good as a dropped connection. (A body
            # with no events at all is not an event stream: get_final_message reports it malformed.)
            reason = "connection dropped part-way through the streamed answer (no message_stop)"
            raise _MidStreamFault(reason, retries_before=sdk_retries)
        try:
            return stream.get_final_message()
        except AssertionError:
            # The SDK asserts when the body held no message events (not an event stream at all).
            raise TypeError("no message in the event stream") from None

    def _backoff(self, retries: int) -> float:
        # Full jitter: spreads retries from concurrent phases so they do not arrive together.
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2**retries)
        return random.uniform(0, ceiling)


def _status_reason(status: int) -> str:
    if status == 401:
        return "HTTP 401 from the Messages API: the API key was refused; check ANTHROPIC_API_KEY"
    return f"HTTP {status} from the Messages API"


def _header_count(request: httpx.Request | None) -> int:
    """The SDK's own count of retries before this request (its ``x-stainless-retry-count`` header)."""
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) if request is not None else 0
    except ValueError:
        return 0


def _retries_taken(exc: anthropic.APIError) -> int:
    try:
        request = exc.request
    except RuntimeError:  # httpx raises when an exception was made without its request
        return 0
    return _header_count(request)


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
