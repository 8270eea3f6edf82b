"""Faults that strike a streamed answer after it has begun, and the headers that steer retries, through
the real ``anthropic`` SDK against the local Messages API server.

Retries before an answer starts are the SDK's and it really sleeps, so waits it chose are measured
from the times the server received the requests; waits of our own loop are recorded (``delays``).
"""

from __future__ import annotations

import time

import pytest

from autopack_pipeline.llm.backends import LLMCallError, LLMRequest
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.settings import SettingsError, load_settings
from autopack_pipeline_tests.support.llm_fixtures import FAKE_KEY
from autopack_pipeline_tests.support.messages_server import (
    Answer,
    DropMidStream,
    Error,
    ErrorMidStream,
    MessagesServer,
    StallMidStream,
    authentication_failed,
    invalid_request,
    overloaded,
)

MODEL = "claude-test-model"


@pytest.fixture
def stream_mode() -> bool:
    """These faults are the streamed call's (the default); a plain call's are in test_anthropic_backend."""
    return True


def request() -> LLMRequest:
    return LLMRequest(model=MODEL, max_tokens=1000, system="You are a test.", prompt="Write src/app.py")


def gaps(server: MessagesServer) -> list[float]:
    times = [r.received_at for r in server.requests]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_connection_dropped_mid_stream_is_retried(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(DropMidStream(after_events=5), Answer("the whole answer", output_tokens=4))

    response = make_anthropic(max_retries=2).complete(request())

    assert response.text == "the whole answer"
    assert response.output_tokens == 4
    assert response.retries == 1
    assert [r.answered_with for r in messages_server.requests] == ["DropMidStream", "Answer"]
    assert len(delays) == 1


def test_connection_dropped_mid_stream_until_retries_run_out(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(DropMidStream(), DropMidStream(), DropMidStream())

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=2).complete(request())

    assert "dropped" in caught.value.reason
    assert caught.value.retries == 2 and caught.value.status_code is None
    assert messages_server.remaining == 0


def test_stream_that_ends_before_message_stop_is_retried(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(DropMidStream(after_events=5, cleanly=True), Answer("complete this time"))

    response = make_anthropic(max_retries=2).complete(request())

    assert response.text == "complete this time" and response.retries == 1


def test_overloaded_error_event_mid_stream_is_retried(make_anthropic, messages_server: MessagesServer, delays) -> None:
    messages_server.script(ErrorMidStream("overloaded_error", after_events=4), Answer("after the overload"))

    response = make_anthropic(max_retries=2).complete(request())

    assert response.text == "after the overload"
    assert response.retries == 1
    assert len(messages_server.requests) == 2


@pytest.mark.parametrize(("error_type", "status"), [("overloaded_error", 529), ("api_error", 500)])
def test_error_events_until_retries_run_out_name_the_error_not_http_200(
    make_anthropic, messages_server: MessagesServer, error_type: str, status: int
) -> None:
    messages_server.script(*[ErrorMidStream(error_type, message=f"secret-looking {FAKE_KEY}") for _ in range(3)])

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=2).complete(request())

    assert error_type.split("_")[0] in caught.value.reason
    assert "200" not in caught.value.reason
    assert FAKE_KEY not in caught.value.reason  # server-provided text never reaches the stored reason
    assert caught.value.status_code == status
    assert caught.value.retries == 2
    assert messages_server.remaining == 0


def test_invalid_request_error_event_is_not_retried(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(ErrorMidStream("invalid_request_error", message="bad"), Answer("never sent"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=3).complete(request())

    assert caught.value.status_code == 400 and caught.value.retries == 0
    assert messages_server.remaining == 1


def test_stalled_stream_times_out_and_is_retried(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(StallMidStream(after_events=4, seconds=30), Answer("unstuck", output_tokens=2))
    started = time.monotonic()

    response = make_anthropic(max_retries=2, timeout_seconds=0.4).complete(request())

    assert response.text == "unstuck" and response.retries == 1
    assert time.monotonic() - started < 5


def test_stalled_streams_until_retries_run_out(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(StallMidStream(after_events=0, seconds=30), StallMidStream(after_events=6, seconds=30))
    started = time.monotonic()

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=1, timeout_seconds=0.4).complete(request())

    assert "timed out" in caught.value.reason
    assert caught.value.retries == 1 and caught.value.status_code is None
    assert time.monotonic() - started < 5


def test_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, messages_server: MessagesServer) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_server.url)
    monkeypatch.setenv("AUTOPACK_LLM_READ_TIMEOUT", "0.4")
    messages_server.script(StallMidStream(after_events=3, seconds=30), Answer("unstuck"))
    started = time.monotonic()

    response = make_backend(load_settings(), backend="anthropic").complete(request())

    assert response.text == "unstuck" and response.retries == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("variable", ["AUTOPACK_LLM_CONNECT_TIMEOUT", "AUTOPACK_LLM_READ_TIMEOUT",
                                      "AUTOPACK_LLM_TOTAL_TIMEOUT"])
def test_a_bad_timeout_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "0")
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_an_answer_longer_than_the_total_timeout_is_a_retried_timeout(
    make_anthropic, messages_server: MessagesServer
) -> None:
    messages_server.script(Answer("slow " * 50), Answer("slow " * 50))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=1, total_timeout_seconds=1e-6).complete(request())

    assert "total timeout" in caught.value.reason and caught.value.retries == 1
    assert messages_server.remaining == 0


def test_retries_before_and_during_the_stream_share_one_budget(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(overloaded(), DropMidStream(), Answer("third time"))

    assert make_anthropic(max_retries=2).complete(request()).retries == 2

    messages_server.script(overloaded(), DropMidStream(), Answer("never sent"))
    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=1).complete(request())
    assert caught.value.retries == 1
    assert messages_server.remaining == 1


def test_retry_after_ms_is_honoured_before_retry_after(make_anthropic, messages_server: MessagesServer) -> None:
    # The SDK's own back-off waits at most 0.5 s before a first retry; retry-after alone would wait 20 s.
    headers = (("retry-after-ms", "1500"), ("retry-after", "20"))
    messages_server.script(Error(529, "overloaded_error", "Overloaded", headers), Answer("ok"))

    assert make_anthropic(max_retries=2).complete(request()).retries == 1

    [gap] = gaps(messages_server)
    assert 1.5 <= gap < 5


def test_x_should_retry_false_stops_a_retryable_status(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(Error(529, "overloaded_error", "Overloaded", (("x-should-retry", "false"),)), Answer("no"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=3).complete(request())

    assert caught.value.status_code == 529 and caught.value.retries == 0
    assert messages_server.remaining == 1


def test_x_should_retry_true_retries_a_bad_request(make_anthropic, messages_server: MessagesServer) -> None:
    should_retry = (("x-should-retry", "true"),)
    messages_server.script(Error(400, "invalid_request_error", "try again", should_retry), Answer("ok"))

    response = make_anthropic(max_retries=3).complete(request())

    assert response.text == "ok" and response.retries == 1


def test_plain_bad_request_is_not_retried(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(invalid_request(), Answer("never sent"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=3).complete(request())

    assert caught.value.status_code == 400 and caught.value.retries == 0


def test_refused_key_is_not_retried_and_names_the_variable(make_anthropic, messages_server: MessagesServer) -> None:
    messages_server.script(authentication_failed(), Answer("never sent"))

    with pytest.raises(LLMCallError) as caught:
        make_anthropic(max_retries=3).complete(request())

    assert caught.value.status_code == 401 and caught.value.retries == 0
    assert "ANTHROPIC_API_KEY" in caught.value.reason
    assert FAKE_KEY not in caught.value.reason
    assert messages_server.remaining == 1
