"""The collection asset fails its materialisation, naming why, whenever the run did not do what was asked
(as `collect` exits 1): materialised in-process with the project's resources, the real `anthropic` SDK
talking to the local Messages API server, and a real SQLite telemetry database."""

from __future__ import annotations

import threading
import time

import dagster as dg
from sqlalchemy import select
from sqlalchemy.engine import make_url

from autopack_pipeline.llm.prompt import render_files
from autopack_pipeline.storage import database
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.models import Phase
from autopack_pipeline_tests.collection_support import hold_write_lock
from autopack_pipeline_tests.integration.dagster_layer.conftest import FAKE_KEY, materialize_slice
from autopack_pipeline_tests.support.messages_server import Answer, Error, invalid_request

ASSET = "telemetry_collection_run"
PHASES = 3
# Enough for any template phase's deliverables check: one file per deliverable path asked for.
ANSWER_FILE_BODY = "def handler():\n    return 1\n" * 30


def _run_config(run_id: str) -> dict:
    config = {"backend": "anthropic", "run_id": run_id, "category": "docs", "complexity": "low", "phases": PHASES,
              "concurrency": 1, "allow_paid_backend": True}
    return {"ops": {ASSET: {"config": config}}}


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, dict]:
    assert not result.success
    failure = result.failure_data_for_node(ASSET)
    assert failure is not None and failure.user_failure_data is not None, "the asset crashed instead of failing"
    return failure.user_failure_data.description, failure.user_failure_data.metadata


def _phase_states(url: str, run_id: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(Phase.state).where(Phase.run_id == run_id)).scalars())
    finally:
        engine.dispose()


def _answer_with_files(body: dict) -> Answer:
    """A good answer: every deliverable the prompt asks for, as a file block."""
    prompt = body["messages"][0]["content"]
    prompt = prompt if isinstance(prompt, str) else "".join(part.get("text", "") for part in prompt)
    listed = prompt.split("Deliverables (write each one in full):\n", 1)[1].split("\n\n", 1)[0]
    paths = [line.removeprefix("- ").strip() for line in listed.splitlines()]
    return Answer(render_files({path: ANSWER_FILE_BODY for path in paths}))


def test_a_refused_key_fails_the_materialisation_naming_the_variable(sqlite_url, instance, messages_server):
    messages_server.answer_all_with(lambda _body: Error(401, "authentication_error", "invalid x-api-key"))

    result = materialize_slice(instance, sqlite_url, ASSET, _run_config("asset-401"))

    reason, metadata = _failure(result)
    assert "HTTP 401" in reason and "ANTHROPIC_API_KEY" in reason
    assert FAKE_KEY not in reason + str(metadata)
    assert metadata["phases_pending"].value == PHASES
    assert len(messages_server.message_requests()) == 1  # stopped at the first refusal
    assert _phase_states(sqlite_url, "asset-401") == ["QUEUED"] * PHASES


def test_every_phase_failing_fails_the_materialisation(sqlite_url, instance, messages_server):
    messages_server.answer_all_with(lambda _body: invalid_request())

    result = materialize_slice(instance, sqlite_url, ASSET, _run_config("asset-all-failed"))

    reason, metadata = _failure(result)
    assert f"every phase drained failed ({PHASES})" in reason
    assert metadata["phases_failed"].value == PHASES
    assert _phase_states(sqlite_url, "asset-all-failed") == ["FAILED"] * PHASES


def test_a_database_outage_fails_the_materialisation_and_the_next_one_resumes(sqlite_url, instance,
                                                                              messages_server, monkeypatch):
    # The lock outlives SQLite's busy timeout and the retry budget: the run must stop, not hang.
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setenv("AUTOPACK_DB_RETRY_SECONDS", "0.3")
    monkeypatch.setenv("AUTOPACK_RUN_LEASE_SECONDS", "1")
    released = threading.Event()  # the lock lasts until the first materialisation is over
    holders: list[threading.Thread] = []

    def answer(body: dict) -> Answer:
        if not holders:  # the first answer arrives while the telemetry database is locked
            holders.append(hold_write_lock(make_url(sqlite_url).database, until=released))
        return _answer_with_files(body)

    messages_server.answer_all_with(answer)

    try:
        stopped = materialize_slice(instance, sqlite_url, ASSET, _run_config("asset-outage"))
    finally:
        released.set()

    reason, metadata = _failure(stopped)
    assert "telemetry database was unavailable" in reason
    assert "re-run with --run-id asset-outage" in reason
    assert metadata["events_spooled"].value > 0 and "still spooled" in reason

    holders[0].join()
    time.sleep(1.1)  # the stopped run's lease has expired
    resumed = materialize_slice(instance, sqlite_url, ASSET, _run_config("asset-outage"))

    assert resumed.success, resumed.failure_data_for_node(ASSET)
    assert _phase_states(sqlite_url, "asset-outage") == ["COMPLETE"] * PHASES
    # Every answer the server sent is one stored event: the spooled one replayed, none asked twice.
    engine = make_engine(sqlite_url)
    events = read_events(engine, ["asset-outage"])
    engine.dispose()
    assert len(events) == len(messages_server.message_requests()) == PHASES
    assert not events.duplicated(["phase_id", "attempt"]).any()
