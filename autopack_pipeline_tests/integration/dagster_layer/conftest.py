"""Helpers for the Dagster-layer tests: run slices of the real graph, checks included, on a test instance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import dagster as dg
import pytest

from autopack_pipeline.defs.asset_graph import ALL_CHECKS, PIPELINE_ASSETS
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase, record_estimation_event
from autopack_pipeline_tests.support.messages_server import MessagesServer

FAKE_KEY = "sk-test-asset-key-4b1e0d"
SMALL_COLLECTION = {"ops": {"telemetry_collection_run": {"config": {"template_phases_per_group": 0}}}}


def materialize_slice(
    instance: dg.DagsterInstance,
    url: str,
    selection: str | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialise ``selection`` (default: all six assets) with every check of the selected assets."""
    return dg.materialize(
        [*PIPELINE_ASSETS, *ALL_CHECKS],
        selection=selection,
        instance=instance,
        resources={"telemetry_db": TelemetryDatabase(database_url=url), "llm": LLMBackendResource(), **event_io_resources()},
        run_config=run_config,
        raise_on_error=False,
    )


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def write_events(sqlite_url) -> Callable[..., int]:
    """Write events with chosen timestamps and token counts straight into the telemetry database."""
    engine = TelemetryDatabase(database_url=sqlite_url).engine()

    def write(rows: list[tuple[datetime, int, int]], *, category="implementation", complexity="medium", run_id="seeded",
              phase_per_event: bool = False) -> int:
        """``rows`` as calls of one phase, or with ``phase_per_event`` each call its own phase (as the
        drift checks, which count a phase once, need them)."""
        written = 0
        for index, (moment, predicted, actual) in enumerate(rows):
            phase_id = f"{category}-{complexity}" + (f"-{index}" if phase_per_event else "")
            if phase_per_event or index == 0:
                ensure_run_and_phase(engine, run_id, phase_id, category=category, complexity=complexity)
            event = EstimationEvent(
                run_id=run_id,
                phase_id=phase_id,
                category=category,
                complexity=complexity,
                deliverables=["src/module.py"],
                predicted_output_tokens=predicted,
                actual_output_tokens=actual,
                selected_budget=predicted * 2,
                success=True,
                model="claude-sonnet-4-5",
                timestamp=moment,
            )
            written += record_estimation_event(engine, event, respect_flag=False)
        return written

    return write


@pytest.fixture
def messages_server(monkeypatch) -> Iterator[MessagesServer]:
    """The local Messages API, reached by the anthropic backend the asset builds from the environment."""
    server = MessagesServer().start()
    for name in ("ANTHROPIC_AUTH_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    try:
        yield server
    finally:
        server.stop()
