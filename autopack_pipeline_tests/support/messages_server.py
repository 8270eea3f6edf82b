"""A local stand-in for Anthropic's Messages API, for tests that drive the real ``anthropic`` SDK.

It speaks just enough of ``POST /v1/messages`` for the SDK: it checks the request body and the
auth headers, records every request, and answers each one with the next entry of a per-test
script. Script entries are the small classes below: a normal answer, a truncated answer, an API
error (with any headers, e.g. ``retry-after-ms`` or ``x-should-retry``), a slow answer (to trip the
client's timeout), a dropped connection, and three faults that strike after the answer has begun: a
connection dropped part-way, an ``event: error`` part-way, and a stall part-way. Requests with
``"stream": true`` get their answer as server-sent events.

The server binds 127.0.0.1 on a port the OS picks, serves from one background thread, and
``stop()`` (called by the fixture at teardown) ends that thread, any slow answers in progress and
any keep-alive connections left open by the client.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autopack_pipeline.llm.prompt import FILE_END

CHARS_PER_TOKEN = 4
MAX_BODY_BYTES = 10_000_000
_ids = itertools.count(1)


# -- script entries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A complete answer. ``output_tokens=None`` means about one token per four characters."""

    text: str
    output_tokens: int | None = None
    input_tokens: int = 25
    stop_reason: str = "end_turn"
    model: str | None = None  # None: echo the requested model

    def tokens_for(self, request_body: dict) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return max(1, len(self.text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Truncated:
    """An answer cut off by the ceiling: stop_reason max_tokens, output_tokens = the request's max_tokens.

    The text is ``text`` cut in the middle of its last file block, so that block has no end line.
    """

    text: str
    input_tokens: int = 25

    def cut_text(self) -> str:
        last_end = self.text.rfind(FILE_END)
        if last_end < 0:
            return self.text[: max(1, len(self.text) // 2)]
        last_start = self.text.rfind("=== FILE: ", 0, last_end)
        body_start = self.text.index("\n", last_start) + 1 if last_start >= 0 else 0
        return self.text[: body_start + (last_end - body_start) // 2]


@dataclass(frozen=True)
class Error:
    """An API error: ``{"type": "error", "error": {"type": error_type, "message": message}}``."""

    status: int
    error_type: str
    message: str = "scripted error"
    headers: tuple[tuple[str, str], ...] = ()


def rate_limited(retry_after: str | None = "2") -> Error:
    headers = (("retry-after", retry_after),) if retry_after is not None else ()
    return Error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", headers)


def overloaded() -> Error:
    return Error(529, "overloaded_error", "Overloaded")


def server_error() -> Error:
    return Error(500, "api_error", "Internal server error")


def invalid_request(message: str = "max_tokens: field required") -> Error:
    return Error(400, "invalid_request_error", message)


def authentication_failed() -> Error:
    return Error(401, "authentication_error", "invalid x-api-key")


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` before sending ``then``; longer than the client's timeout, it never arrives."""

    seconds: float
    then: Answer | Truncated | Error = field(default_factory=lambda: Answer("late answer"))


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without a byte of response."""


@dataclass(frozen=True)
class Raw:
    """Exactly these bytes as the body, for answers the SDK cannot make sense of."""

    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class DropMidStream:
    """Begin ``answer`` (status 200, headers and ``after_events`` events, or part of a plain body), then
    close the connection abruptly, as a proxy or the API does when a long answer is cut. ``cleanly``:
    end the stream's body properly instead (a proxy that cuts an answer but not the HTTP framing)."""

    after_events: int = 4
    cleanly: bool = False
    answer: Answer = field(default_factory=lambda: Answer("an answer that never finishes " * 4))


@dataclass(frozen=True)
class ErrorMidStream:
    """Begin ``answer`` with ``after_events`` events, then ``event: error`` of ``error_type`` (as the API
    reports an overload that strikes after the 200 went out) and the end of the stream. A plain
    (non-streamed) request gets the error's usual HTTP status instead."""

    error_type: str = "overloaded_error"
    message: str = "Overloaded"
    after_events: int = 4
    answer: Answer = field(default_factory=lambda: Answer("an answer cut by an error " * 4))


@dataclass(frozen=True)
class StallMidStream:
    """Begin ``answer`` (headers and ``after_events`` events, or part of a plain body), then send nothing
    for ``seconds`` (the client's read timeout should fire first), then close the connection."""

    after_events: int = 4
    seconds: float = 5.0
    answer: Answer = field(default_factory=lambda: Answer("an answer that stalls " * 4))


# The HTTP status the API uses for each error type (what an ``event: error`` would have been before the 200).
ERROR_STATUS = {
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

MidStreamFault = DropMidStream | ErrorMidStream | StallMidStream
ScriptEntry = Answer | Truncated | Error | Slow | Drop | Raw | DropMidStream | ErrorMidStream | StallMidStream


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict | None
    answered_with: str  # the script entry's class name, or why the server refused the request
    received_at: float = 0.0  # time.monotonic() when the request was read, to measure the client's waits


# -- the server -----------------------------------------------------------------------------------


class MessagesServer:
    """Start with :meth:`start`, give answers with :meth:`script`, read :attr:`requests`, then :meth:`stop`."""

    def __init__(self) -> None:
        self._script: deque[ScriptEntry] = deque()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> MessagesServer:
        owner = self

        class Handler(_MessagesHandler):
            server_owner = owner

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="messages-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            _close_quietly(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # script and records

    def script(self, *entries: ScriptEntry) -> None:
        with self._lock:
            self._script.extend(entries)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def message_requests(self) -> list[RecordedRequest]:
        """Requests that reached the script (valid Messages API calls)."""
        return [r for r in self.requests if r.answered_with in _ENTRY_NAMES]

    # used by the handler

    def answer_all_with(self, responder: Callable[[dict], ScriptEntry] | None) -> None:
        """When the script is empty, answer every valid request with ``responder(request_body)``."""
        with self._lock:
            self._responder = responder

    def _next_entry(self, body: dict) -> ScriptEntry | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            responder = getattr(self, "_responder", None)
        return responder(body) if responder is not None else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


_ENTRY_NAMES = {
    cls.__name__ for cls in (Answer, Truncated, Error, Slow, Drop, Raw, DropMidStream, ErrorMidStream, StallMidStream)
}


def _close_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


def validation_problem(body: object) -> str | None:
    """What is wrong with a Messages API body, or None; the checks the real API makes first."""
    if not isinstance(body, dict):
        return "body: expected a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return "max_tokens: field required"
    if max_tokens < 1:
        return "max_tokens: must be greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: must be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{index}.content: field required"
    if messages[0]["role"] != "user":
        return "messages: the first message must use the 'user' role"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: must be a string or a list of text blocks"
    return None


class _MessagesHandler(BaseHTTPRequestHandler):
    server_owner: MessagesServer
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends after this many seconds

    def setup(self) -> None:
        super().setup()
        self.server_owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server_owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep test output clean

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass  # the client went away (timeout, dropped connection): nothing to answer

    # routing

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._send_error(404, "not_found_error", f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server_owner
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = self._read_body()
        received = time.monotonic()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None

        def record(answered_with: str) -> None:
            owner._record(RecordedRequest("POST", self.path, headers, body, answered_with, received))

        if self.path.split("?", 1)[0] != "/v1/messages":
            record("unknown_path")
            self._send_error(404, "not_found_error", f"no route POST {self.path}")
            return
        if not headers.get("x-api-key") and not headers.get("authorization"):
            record("authentication_error")
            self._send_error(401, "authentication_error", "x-api-key header is required")
            return
        if not headers.get("anthropic-version"):
            record("invalid_request_error")
            self._send_error(400, "invalid_request_error", "anthropic-version header is required")
            return
        problem = validation_problem(body)
        if problem is not None:
            record("invalid_request_error")
            self._send_error(400, "invalid_request_error", problem)
            return
        entry = owner._next_entry(body)
        if entry is None:
            # A status no client retries, so a test that sends one request too many fails loudly.
            record("script_exhausted")
            self._send_error(418, "script_exhausted", "the test's script has no answer left for this request")
            return
        record(type(entry).__name__)
        self._answer(entry, body)

    # answers

    def _answer(self, entry: ScriptEntry, body: dict) -> None:
        if isinstance(entry, Drop):
            self.close_connection = True
            _close_quietly(self.connection)
            return
        if isinstance(entry, Slow):
            if self.server_owner._stopping.wait(entry.seconds):
                self.close_connection = True
                return
            entry = entry.then
        if isinstance(entry, Raw):
            self._send_bytes(entry.status, entry.body, entry.content_type)
            return
        if isinstance(entry, Error):
            self._send_error(entry.status, entry.error_type, entry.message, entry.headers)
            return
        if isinstance(entry, (DropMidStream, ErrorMidStream, StallMidStream)):
            self._answer_then_fail(entry, body)
            return
        if isinstance(entry, Truncated):
            text, output_tokens, stop_reason = entry.cut_text(), body["max_tokens"], "max_tokens"
            input_tokens, model = entry.input_tokens, body["model"]
        else:
            text, output_tokens, stop_reason = entry.text, entry.tokens_for(body), entry.stop_reason
            input_tokens, model = entry.input_tokens, entry.model or body["model"]
        message_id = f"msg_test_{next(_ids):06d}"
        if body.get("stream") is True:
            events = _stream_events(message_id, model, text, input_tokens, output_tokens, stop_reason)
            self._start_stream(message_id)
            for name, data in events:
                self._send_event(name, data)
            self._end_stream()
            return
        message = _message(message_id, model, text, input_tokens, output_tokens, stop_reason)
        self._send_json(200, message)

    def _answer_then_fail(self, entry: MidStreamFault, body: dict) -> None:
        """Send the first part of ``entry.answer`` with status 200, then the entry's fault."""
        answer = entry.answer
        message_id = f"msg_test_{next(_ids):06d}"
        model = answer.model or body["model"]
        fields = (message_id, model, answer.text, answer.input_tokens, answer.tokens_for(body), answer.stop_reason)
        if body.get("stream") is not True:
            if isinstance(entry, ErrorMidStream):
                self._send_error(ERROR_STATUS.get(entry.error_type, 500), entry.error_type, entry.message)
                return
            data = json.dumps(_message(*fields)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
        else:
            events = _stream_events(*fields)
            # Never the whole stream: the fault must come before message_stop.
            self._start_stream(message_id)
            for name, data in events[: min(entry.after_events, len(events) - 1)]:
                self._send_event(name, data)
            if isinstance(entry, ErrorMidStream):
                error = {"type": entry.error_type, "message": entry.message}
                self._send_event("error", {"type": "error", "error": error})
                self._end_stream()
                return
            if isinstance(entry, DropMidStream) and entry.cleanly:
                self._end_stream()
                return
        if isinstance(entry, StallMidStream):
            self.server_owner._stopping.wait(entry.seconds)
        self.close_connection = True
        _close_quietly(self.connection)

    def _start_stream(self, message_id: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_{message_id}")
        self.end_headers()
        self.wfile.flush()

    def _send_event(self, name: str, data: dict) -> None:
        chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
    def _send_error(
        self, status: int, error_type: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        payload = {"type": "error", "error": {"type": error_type, "message": message}}
        self._send_json(status, payload, headers)

    def _send_json(self, status: int, payload: dict, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_test_{next(_ids):06d}")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length else b""


def _message(message_id: str, model: str, text: str, input_tokens: int, output_tokens: int, stop_reason: str) -> dict:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _stream_events(
    message_id: str, model: str, text: str, input_tokens: int, output_tokens: int, stop_reason: str
) -> list[tuple[str, dict]]:
    """The server-sent events of one answer, in the API's order."""
    start = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    pieces = [text[i : i + 16] for i in range(0, len(text), 16)] or [""]
    events: list[tuple[str, dict]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        for piece in pieces
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events
