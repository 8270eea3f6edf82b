"""Auto-execution through Dagster: collect-samples tasks become targeted collection runs, and the
run-status sensors close them from the database's count when the runs end."""

import dagster as dg

from autopack_pipeline.defs.definitions import defs
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.tasks.sensors import (
    auto_execution_sensor,
    collection_task_failure_sensor,
    collection_task_success_sensor,
)
from autopack_pipeline.services.tasks_execution import AUTO_EXECUTE_OFF, group_sample_counts
from autopack_pipeline.storage.tasks import get_task, pending_tasks

from .conftest import SMALL_COLLECTION, materialize_slice


def tick(instance, url):
    resources = {"telemetry_db": TelemetryDatabase(database_url=url), **event_io_resources()}
    # The telemetry_db resource holds its engine for its lifetime (set up and torn down), so the context
    # opens and closes it as the daemon does.
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return auto_execution_sensor.evaluate_tick(context)


def close(sensor, instance, url, result, event):
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=event,
        resources={"telemetry_db": TelemetryDatabase(database_url=url), **event_io_resources()},
    )
    with context:
        if sensor is collection_task_failure_sensor:
            return sensor(context.for_run_failure())
        return sensor(context)


def test_auto_execution_off_says_so(instance, sqlite_url, monkeypatch):
    monkeypatch.setenv("AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "false")
    data = tick(instance, sqlite_url)
    assert not data.run_requests and data.skip_message == AUTO_EXECUTE_OFF


def test_nothing_to_execute_is_a_skip_with_the_count_waiting_for_a_person(instance, sqlite_url):
    data = tick(instance, sqlite_url)
    assert data.skip_message == "no pending collect-samples task without approval; 0 pending task(s) wait for a person"


def test_collect_samples_tasks_run_as_targeted_collections_and_close_from_the_outcome(instance, sqlite_url):
    assert materialize_slice(instance, sqlite_url, run_config=SMALL_COLLECTION).success
    engine = TelemetryDatabase(database_url=sqlite_url).engine()
    runnable = pending_tasks(engine, kind="collect_samples", auto_executable_only=True, limit=100)
    assert len(runnable) >= 2

    first = tick(instance, sqlite_url)
    assert 2 <= len(first.run_requests) <= 5
    request, doomed = first.run_requests[:2]
    task_id = request.tags["autopack/task-id"]
    assert request.run_key == f"{task_id}-attempt-1" == request.tags["autopack/task-attempt"]
    config = request.run_config["ops"]["telemetry_collection_run"]["config"]
    assert config["run_id"] == request.run_key and config["phases"] >= 1
    assert config["category"] and config["complexity"]
    assert get_task(engine, task_id)["status"] == "in_progress"
    # Claimed tasks are no longer pending: the next tick does not request them again.
    again = tick(instance, sqlite_url)
    assert task_id not in {r.tags["autopack/task-id"] for r in again.run_requests}

    job = defs.resolve_job_def("targeted_collection_job")
    assert {n.name for n in job.nodes} >= {"telemetry_collection_run", "raw_events", "success_samples", "tier_metrics"}
    result = job.execute_in_process(instance=instance, run_config=request.run_config, tags=request.tags)
    assert result.success
    assert result.output_for_node("telemetry_collection_run")["run_id"] == request.run_key

    task = get_task(engine, task_id)
    category, complexity, threshold = (task["evidence"][k] for k in ("category", "complexity", "threshold"))
    after, _ = group_sample_counts(engine, category, complexity)
    message = close(collection_task_success_sensor, instance, sqlite_url, result, result.get_run_success_event())
    task = get_task(engine, task_id)
    if after >= threshold:
        assert task["status"] == "completed" and "completed" in message.skip_message
    else:
        assert task["status"] == "pending" and task["retry_count"] == 1 and "retry" in message.skip_message
    assert task["executed_in_run_id"] == request.run_key
    # A second notification of the same run changes nothing.
    repeat = close(collection_task_success_sensor, instance, sqlite_url, result, result.get_run_success_event())
    assert "nothing to close" in repeat.skip_message

    # A run that fails before collecting anything sends its task back for a retry, with the reason.
    doomed_id = doomed.tags["autopack/task-id"]
    broken = {"ops": {"telemetry_collection_run": {"config": {**doomed.run_config["ops"]["telemetry_collection_run"][
        "config"], "category": "no_such_category"}}}}
    failed = job.execute_in_process(instance=instance, run_config=broken, tags=doomed.tags, raise_on_error=False)
    assert not failed.success
    failure_event = next(e for e in failed.all_events if e.event_type_value == "PIPELINE_FAILURE")
    message = close(collection_task_failure_sensor, instance, sqlite_url, failed, failure_event)
    task = get_task(engine, doomed_id)
    assert task["status"] == "pending" and task["retry_count"] == 1
    assert "FAILURE" in task["failure_reason"] and "clean samples" in task["failure_reason"]
    assert "back to pending for a retry" in message.skip_message


def test_a_paid_backend_gets_no_automatic_collection(instance, sqlite_url, monkeypatch):
    """Collecting on a paid backend spends money: the sensor leaves pending collect-samples tasks alone
    and says how a person runs them."""
    monkeypatch.setenv("AUTOPACK_LLM_BACKEND", "anthropic")
    data = tick(instance, sqlite_url)
    assert not data.run_requests
    assert "anthropic backend is paid" in data.skip_message and "allow_paid_backend: true" in data.skip_message
