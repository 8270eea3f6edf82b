"""No accidental spending: with the paid (anthropic) backend set, a collection runs only when its run
config says ``allow_paid_backend: true``; "Materialize all" analyses the stored events and stops before
the API. The real `anthropic` SDK would talk to the local Messages API server, which counts requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autopack_pipeline_tests.integration.dagster_layer.conftest import materialize_slice
from autopack_pipeline_tests.integration.dagster_layer.test_collection_asset_failures import ASSET, _answer_with_files


def _seed(write_events) -> int:
    start = datetime(2026, 11, 30, tzinfo=UTC)
    return write_events([(start + timedelta(minutes=i), 1000, 900 + 10 * i) for i in range(12)])


def test_materialize_all_on_the_paid_backend_analyses_and_stops_before_the_api(
        sqlite_url, instance, messages_server, write_events, monkeypatch):
    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "anthropic")
    messages_server.answer_all_with(_answer_with_files)
    stored = _seed(write_events)

    result = materialize_slice(instance, sqlite_url)  # "Materialize all": no run config at all

    assert result.success
    assert messages_server.requests == []  # not one call to the paid API
    (collection,) = result.asset_materializations_for_node(ASSET)
    assert collection.metadata["collection"].value == "skipped"
    assert "allow_paid_backend: true" in collection.metadata["skipped_reason"].value
    assert collection.metadata["backend"].value == "anthropic"
    assert collection.metadata["events_written"].value == 0
    assert "allow_paid_backend" in collection.metadata["next_step"].value
    # Downstream assets still ran, on the events already stored.
    metrics = result.output_for_node("tier_metrics")
    assert metrics.tier1["total_samples"] == stored
    assert result.output_for_node("generated_tasks") is not None


def test_a_paid_collection_runs_when_its_config_allows_it(sqlite_url, instance, messages_server):
    messages_server.answer_all_with(_answer_with_files)
    config = {"backend": "anthropic", "run_id": "paid-ok", "category": "docs", "complexity": "low", "phases": 2,
              "concurrency": 1, "allow_paid_backend": True}

    result = materialize_slice(instance, sqlite_url, ASSET, {"ops": {ASSET: {"config": config}}})

    assert result.success
    assert len(messages_server.message_requests()) == 2
    (collection,) = result.asset_materializations_for_node(ASSET)
    assert collection.metadata["collection"].value == "ran"
    assert collection.metadata["events_written"].value == 2


def test_naming_the_paid_backend_in_config_is_not_consent(sqlite_url, instance, messages_server):
    config = {"backend": "anthropic", "run_id": "paid-no", "category": "docs", "complexity": "low", "phases": 2}

    result = materialize_slice(instance, sqlite_url, ASSET, {"ops": {ASSET: {"config": config}}})

    assert result.success and messages_server.requests == []
    (collection,) = result.asset_materializations_for_node(ASSET)
    assert collection.metadata["collection"].value == "skipped"


def test_the_quickstart_on_the_paid_backend_says_the_collection_was_skipped(
        sqlite_url, messages_server, write_events, monkeypatch, tmp_path, capsys):
    from autopack_pipeline.defs.dagster_runner import run_pipeline

    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "anthropic")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    stored = _seed(write_events)

    assert run_pipeline() == 0

    out = capsys.readouterr().out
    assert "Collection skipped: the anthropic backend is paid" in out
    assert f"Tier 1 over {stored} Builder calls" in out
    assert messages_server.requests == []
