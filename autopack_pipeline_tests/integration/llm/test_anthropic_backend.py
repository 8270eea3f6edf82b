"""AnthropicBackend through the real ``anthropic`` SDK against the local Messages API server.

Every test scripts the server's answers, calls ``complete`` once, and checks both what came back
and what reached the wire. Retries before an answer starts are the SDK's, which really sleeps: its
waits are measured between the times the server received the requests, and the sleeps of our own loop
(``delays``, only for streams that break part-way: test_anthropic_stream_faults) stay empty here.
"""

from __future__ import annotations

import logging

import pytest

from autopack_pipeline.llm.backends import LLMCallError, LLMRequest
from autopack_pipeline_tests.support.llm_fixtures import FAKE_KEY
from autopack_pipeline_tests.support.messages_server import (
    Answer,
    Drop,
    MessagesServer,
    Raw,
    Slow,
    invalid_request,
    overloaded,
    rate_limited,
    server_error,
)

MODEL = "claude-test-model"


def gaps(server: MessagesServer) -> list[float]:
    times = [r.received_at for r in server.requests]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def retry_counts(server: MessagesServer) -> list[str]:
    """The SDK's attempt numbers, as it sent them: proof that its retry loop made the retries."""
    return [r.headers.get("x-stainless-retry-count") for r in server.requests]


def request(max_tokens: int = 1000, prompt: str = "Write src/app.py") -> LLMRequest:
    return LLMRequest(model=MODEL, max_tokens=max_tokens, system="You are a test.", prompt=prompt)


def test_normal_answer_comes_back_as_sent(make_anthropic, messages_server: MessagesServer, delays, stream_mode) -> None:
    messages_server.script(Answer("hello from the server", output_tokens=37, input_tokens=11, stop_reason="end_turn"))

    response = make_anthropic().complete(request(max_tokens=1234, prompt="the prompt"))

    assert response.text == "hello from the server"
    assert (response.output_tokens, response.input_tokens) == (37, 11)
    assert response.stop_reason == "end_turn"
    assert response.model == MODEL
    assert response.retries == 0
    assert delays == []
    [sent] = messages_server.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == FAKE_KEY
    assert sent.headers.get("anthropic-version")
    assert sent.body["model"] == MODEL
    assert sent.body["max_tokens"] == 1234
    assert sent.body["system"] == "You are a test."
    assert sent.body["messages"] == [{"role": "user", "content": "the prompt"}]
    assert sent.body.get("stream", False) is stream_mode
    assert sent.body["temperature"] == 0.2


def test_stop_reason_and_model_are_the_servers(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(Answer("cut", output_tokens=1000, stop_reason="max_tokens", model="claude-other"))

    response = make_anthropic().complete(request(max_tokens=1000))

    assert response.stop_reason == "max_tokens"
    assert response.output_tokens == 1000
    assert response.model == "claude-other"


def test_overloaded_then_success_is_one_retry(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(overloaded(), Answer("second time lucky", output_tokens=5))

    response = make_anthropic(max_retries=3).complete(request())

    assert response.text == "second time lucky"
    assert response.retries == 1
    assert retry_counts(messages_server) == ["0", "1"]
    assert delays == []
    [gap] = gaps(messages_server)
    assert 0.37 <= gap < 3  # the SDK's first back-off: 0.5 s less up to 25% jitter


def test_rate_limit_honours_retry_after(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(rate_limited(retry_after="1"), Answer("ok", output_tokens=1))

    response = make_anthropic().complete(request())

    assert response.retries == 1
    [gap] = gaps(messages_server)
    assert 1.0 <= gap < 4  # not the SDK's 0.5 s back-off


def test_rate_limit_without_retry_after_backs_off(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(rate_limited(retry_after=None), rate_limited(retry_after=None), Answer("ok"))

    response = make_anthropic(max_retries=2).complete(request())

    assert response.retries == 2
    first, second = gaps(messages_server)
    assert 0.37 <= first < 3 and 0.75 <= second < 4  # 0.5 s then 1 s, less up to 25% jitter


def test_retry_after_over_a_minute_gives_way_to_backoff(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(rate_limited(retry_after="120"), Answer("ok"))

    assert make_anthropic().complete(request()).retries == 1

    [gap] = gaps(messages_server)
    assert gap < 3


@pytest.mark.parametrize("max_retries", [0, 2])
def test_server_errors_exhaust_retries(make_anthropic, messages_server: MessagesServer, delays, max_retries) -> None:
    messages_server.script(*[server_error() for _ in range(max_retries + 1)])

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=max_retries).complete(request())

    assert caught.value.status_code == 500
    assert caught.value.retries == max_retries
    assert "500" in caught.value.reason
    assert retry_counts(messages_server) == [str(n) for n in range(max_retries + 1)]
    assert messages_server.remaining == 0


def test_invalid_request_fails_at_once(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(invalid_request("max_tokens: too large"), Answer("never sent"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=4).complete(request())

    assert caught.value.status_code == 400
    assert caught.value.retries == 0
    assert len(messages_server.requests) == 1
    assert messages_server.remaining == 1
    assert delays == []


def test_timeout_is_retried_then_succeeds(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(Slow(3.0), Answer("in time", output_tokens=3))

    response = make_anthropic(max_retries=2, timeout_seconds=0.3).complete(request())

    assert response.text == "in time"
    assert response.retries == 1
    assert retry_counts(messages_server) == ["0", "1"]


def test_timeouts_exhaust_retries(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(Slow(3.0), Slow(3.0))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=1, timeout_seconds=0.3).complete(request())

    assert "timed out" in caught.value.reason
    assert caught.value.retries == 1
    assert caught.value.status_code is None
    assert len(messages_server.requests) == 2


def test_dropped_connection_is_retried(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(Drop(), Answer("reconnected", output_tokens=2))

    response = make_anthropic(max_retries=2).complete(request())

    assert response.text == "reconnected"
    assert response.retries == 1
    assert retry_counts(messages_server) == ["0", "1"]


def test_dropped_connections_exhaust_retries(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(Drop(), Drop(), Drop())

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=2).complete(request())

    assert "connection" in caught.value.reason
    assert caught.value.retries == 2
    assert caught.value.status_code is None
    assert len(messages_server.requests) == 3


def test_api_key_never_in_errors_or_logs(
    make_anthropic, messages_server: MessagesServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages_server.script(
        overloaded(), Drop(), server_error(),  # exhausts max_retries=2
        rate_limited("0.1"), invalid_request(),  # 400 after one retry
    )
    backend = make_anthropic(max_retries=2)

    errors = []
    for _ in range(2):
        with pytest.raises(LLMCallError) as caught:
            backend.complete(request())
        errors.append(caught.value)

    assert [e.status_code for e in errors] == [500, 400]
    # The capture really saw the SDK's debug output and its retry messages, so an absence means something.
    messages = [record.getMessage() for record in caplog.records]
    assert any(record.name.startswith("anthropic") and record.levelno == logging.DEBUG for record in caplog.records)
    assert sum(m.startswith("Retrying request") for m in messages) == 3
    for error in errors:
        for text in (str(error), error.reason, repr(error)):
            assert FAKE_KEY not in text
        assert error.__cause__ is None and error.__suppress_context__
    for record in caplog.records:
        assert FAKE_KEY not in record.getMessage()
        assert FAKE_KEY not in (record.exc_text or "")
    assert FAKE_KEY not in caplog.text
    # and it was sent, so the check above was not vacuous
    assert all(r.headers["x-api-key"] == FAKE_KEY for r in messages_server.requests)



@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (Raw(200, b"<html>gateway says hi</html>", "text/html"), "malformed answer from the Messages API"),
        (Raw(200, b"{not json", "application/json"), "unreadable answer from the Messages API"),
        (Raw(200, b'{"id": "msg_1", "type": "message", "content": null}'), "malformed answer from the Messages API"),
        (Raw(200, b'{"id": "msg_1", "type": "message", "role": "assistant", "content": []}'), "malformed answer from the Messages API"),
        (Raw(200, b"[]"), "malformed answer from the Messages API"),
    ],
)
def test_unusable_success_bodies_become_call_errors(
    make_anthropic, messages_server: MessagesServer, delays, raw, reason, stream_mode
) -> None:
    messages_server.script(raw, Answer("unused"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=2).complete(request())

    # A streamed call reads server-sent events: any body that is not a message stream is malformed.
    assert caught.value.reason == ("malformed answer from the Messages API" if stream_mode else reason)
    assert caught.value.retries == 0 and caught.value.status_code is None
    assert messages_server.remaining == 1 and delays == []


def test_gateway_error_page_is_retried(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(Raw(502, b"<html>bad gateway</html>", "text/html"), Answer("through", output_tokens=1))

    assert make_anthropic().complete(request()).retries == 1
