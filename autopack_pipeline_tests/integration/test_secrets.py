"""The API key never reaches logs, the telemetry database, reports or Dagster's event log and metadata.

The whole pipeline runs with the real anthropic SDK against a local Messages API server, with a
distinctive fake key, and every place a secret could leak to is searched for it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dagster as dg
import pytest

from autopack_pipeline.defs.asset_graph import PIPELINE_ASSETS
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
from autopack_pipeline.llm.prompt import render_files
from autopack_pipeline_tests.support.messages_server import Answer, MessagesServer

SECRET = "sk-ant-test-7Hs9-do-not-leak-0123456789"
_DELIVERABLE = re.compile(r"^- (\S+)$", re.M)


def _answer_every_phase(body: dict) -> Answer:
    prompt = body["messages"][0]["content"]
    deliverables_part = prompt.split("Deliverables (write each one in full):", 1)[1].split("\n\n", 1)[0]
    files = {path: f"# {path}\n" + "x = 1\n" * 300 for path in _DELIVERABLE.findall(deliverables_part)}
    return Answer(render_files(files))


@pytest.fixture
def messages_server():
    server = MessagesServer().start()
    server.answer_all_with(_answer_every_phase)
    yield server
    server.stop()


def test_api_key_stays_secret_through_the_whole_pipeline(sqlite_url, tmp_path, monkeypatch, caplog, messages_server):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_server.url)
    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "anthropic")
    caplog.set_level(logging.DEBUG)
    config = {"ops": {"telemetry_collection_run": {"config": {"template_phases_per_group": 2,
                                                                     "allow_paid_backend": True}}}}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize(
            PIPELINE_ASSETS,
            instance=instance,
            resources={"telemetry_db": TelemetryDatabase(database_url=sqlite_url), "llm": LLMBackendResource(), **event_io_resources()},
            run_config=config,
        )
        assert result.success
        collection = result.output_for_node("telemetry_collection_run")
        assert collection["backend"] == "anthropic" and collection["events_written"] > 0
        # The key really went out (so the search below is meaningful) ...
        assert messages_server.requests[0].headers["x-api-key"] == SECRET
        # ... and appears nowhere we keep.
        records = instance.get_records_for_run(result.run_id).records
        event_log = "\n".join(str(record.event_log_entry) for record in records)
        assert SECRET not in event_log
        assert SECRET not in str(result.output_for_node("calibration_recommendations"))
    assert SECRET not in caplog.text
    for path in Path(tmp_path).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"
    db_file = Path(sqlite_url.removeprefix("sqlite:///"))
    assert db_file.exists() and SECRET.encode() not in db_file.read_bytes()


def test_the_database_password_stays_out_of_the_resources_config_repr_and_metadata(tmp_path, monkeypatch):
    """Built from settings, the database resource names DATABASE_URL instead of holding its value."""
    from autopack_pipeline.defs.resources import build_resources
    from autopack_pipeline.settings import load_storage_settings

    password = "pw-Zq8-do-not-leak"
    url = f"postgresql://bob:{password}@db.example:5432/telemetry"
    monkeypatch.setenv("DATABASE_URL", url)
    resources = build_resources(load_storage_settings())
    database = resources["telemetry_db"]
    assert isinstance(database.database_url, dg.EnvVar) and database.database_url == "DATABASE_URL"
    assert password not in repr(database) and password not in str(database)
    assert password not in repr(resources["llm"])
    # In a run the variable is read: the engine gets the password, metadata the masked identity only.
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.handle import describe_database

    with dg.build_resources({"telemetry_db": database}) as built:
        assert built.telemetry_db.resolved_url() == url.replace("postgresql://", "postgresql+psycopg://")
        assert password not in repr(built.telemetry_db)
    identity = describe_database(make_engine(url))  # what assets put in metadata (no server needed)
    assert password not in str(identity.to_dict()) and "***" in identity.url


def test_without_database_url_the_definitions_need_no_environment(monkeypatch):
    from autopack_pipeline.defs.resources import build_resources
    from autopack_pipeline.settings import load_storage_settings

    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert build_resources(load_storage_settings())["telemetry_db"].database_url is None
