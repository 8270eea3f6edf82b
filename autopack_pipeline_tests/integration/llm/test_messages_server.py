"""The local Messages API server itself: it validates, records, streams, and stops cleanly.

The streaming tests use the SDK's own ``client.messages.stream(...)``: if the server's event stream
were wrong, the SDK's accumulator would fail or disagree with the script.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import anthropic
import pytest

from autopack_pipeline.llm.prompt import parse_files, render_files
from autopack_pipeline_tests.support.llm_fixtures import FAKE_KEY
from autopack_pipeline_tests.support.messages_server import Answer, MessagesServer, Slow, Truncated, validation_problem

MODEL = "claude-test-model"


def sdk_client(server: MessagesServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=FAKE_KEY, base_url=server.url, max_retries=0, timeout=5.0)


def raw_post(server: MessagesServer, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        sent = {"content-type": "application/json", "x-api-key": FAKE_KEY, "anthropic-version": "2023-06-01"}
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v is not None}
        conn.request("POST", "/v1/messages", body=json.dumps(body), headers=sent)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_streaming_answer_through_the_sdk(messages_server: MessagesServer) -> None:
    text = render_files({"src/app.py": "def main():\n    return 42\n" * 5})
    messages_server.script(Answer(text, output_tokens=77, input_tokens=9))

    with sdk_client(messages_server).messages.stream(
        model=MODEL, max_tokens=500, messages=[{"role": "user", "content": "write it"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert len(pieces) > 1  # really streamed, in several deltas
    assert "".join(pieces) == text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 77
    assert final.usage.input_tokens == 9
    assert final.model == MODEL
    [sent] = messages_server.requests
    assert sent.body["stream"] is True
    assert sent.body["max_tokens"] == 500


def test_streaming_truncated_answer(messages_server: MessagesServer) -> None:
    text = render_files({"a.py": "x = 1\n" * 40, "b.py": "y = 2\n" * 40})
    messages_server.script(Truncated(text))

    with sdk_client(messages_server).messages.stream(
        model=MODEL, max_tokens=321, messages=[{"role": "user", "content": "write both"}]
    ) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 321
    assert list(parse_files(final.content[0].text)) == ["a.py"]


def test_truncated_text_is_cut_inside_the_last_file() -> None:
    text = render_files({"one.py": "a = 1\n" * 10, "two.py": "b = 2\n" * 10})
    cut = Truncated(text).cut_text()

    assert text.startswith(cut) and len(cut) < len(text)
    assert list(parse_files(cut)) == ["one.py"]
    assert "=== FILE: two.py ===\nb = 2" in cut  # some of the second file's body made it


def test_non_streaming_answer_shape(messages_server: MessagesServer) -> None:
    messages_server.script(Answer("plain", output_tokens=3, input_tokens=4, stop_reason="stop_sequence"))

    status, body = raw_post(messages_server, {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})

    assert status == 200
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "plain"}]
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] is None
    assert body["usage"] == {"input_tokens": 4, "output_tokens": 3}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": True, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user"}]}, "messages.0.content"),
    ],
)
def test_invalid_bodies_are_refused_without_using_the_script(messages_server: MessagesServer, body, field) -> None:
    messages_server.script(Answer("unused"))

    status, answer = raw_post(messages_server, body)

    assert status == 400
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith(field)
    assert messages_server.remaining == 1
    [recorded] = messages_server.requests
    assert recorded.body == body and recorded.answered_with == "invalid_request_error"


def test_valid_body_passes_validation() -> None:
    assert validation_problem({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": []}]}) is None


def test_missing_api_key_is_an_authentication_error(messages_server: MessagesServer) -> None:
    messages_server.script(Answer("unused"))

    status, answer = raw_post(
        messages_server,
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": None},
    )

    assert status == 401 and answer["error"]["type"] == "authentication_error"
    assert messages_server.remaining == 1


def test_a_request_beyond_the_script_fails_loudly(messages_server: MessagesServer) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_client(messages_server).messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.status_code == 418
    assert [r.answered_with for r in messages_server.requests] == ["script_exhausted"]


def test_stop_ends_slow_answers_and_frees_the_port() -> None:
    server = MessagesServer().start()
    port = server.port
    server.script(Slow(30.0))
    outcome: list[object] = []

    def call() -> None:
        try:
            raw_post(server, {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
            outcome.append("answered")
        except Exception as exc:  # the connection is closed under it, which is the point
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests, "the slow request never reached the server"

    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 3
    assert not caller.is_alive()
    assert outcome and outcome[0] != "answered"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
