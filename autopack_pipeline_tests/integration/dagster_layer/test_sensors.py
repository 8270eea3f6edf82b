"""The gate and task-generation sensors, evaluated against a real test instance after real runs."""

import dagster as dg

from autopack_pipeline.defs.calibration.sensors import calibration_gate_sensor
from autopack_pipeline.defs.definitions import defs
from autopack_pipeline.defs.tasks.sensors import task_generation_sensor

from .conftest import SMALL_COLLECTION, materialize_slice

UP_TO_METRICS = "key:telemetry_collection_run or key:raw_events or key:success_samples or key:tier_metrics"


def tick(sensor, instance, cursor=None):
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def latest_storage_id(instance, name):
    return instance.fetch_materializations(dg.AssetKey(name), limit=1).records[0].storage_id


def test_sensors_and_schedule_run_by_default():
    for sensor in (calibration_gate_sensor, task_generation_sensor):
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("drift_check_schedule").default_status == dg.DefaultScheduleStatus.RUNNING
    assert calibration_gate_sensor.job_name == "calibration_job"
    assert task_generation_sensor.job_name == "task_generation_job"


def test_gate_sensor_skips_before_anything_was_materialised(instance):
    data = tick(calibration_gate_sensor, instance)
    assert not data.run_requests
    assert "success_samples has never been materialised" in data.skip_message


def test_gate_sensor_skip_gives_the_failing_numbers(instance, sqlite_url):
    assert materialize_slice(instance, sqlite_url, UP_TO_METRICS, SMALL_COLLECTION).success
    samples = instance.fetch_materializations(dg.AssetKey("success_samples"), limit=1).records[0]
    n = samples.asset_materialization.metadata["sample_count"].value
    largest = samples.asset_materialization.metadata["largest_group_samples"].value
    assert 0 < n < 20
    data = tick(calibration_gate_sensor, instance)
    assert not data.run_requests
    assert f"samples batch {samples.storage_id}" in data.skip_message
    assert f"only {n} clean samples; the gate needs at least 20" in data.skip_message
    assert f"has {largest} clean samples; the gate needs one with at least 5" in data.skip_message


def test_gate_sensor_requests_calibration_once_per_batch(instance, sqlite_url):
    assert materialize_slice(instance, sqlite_url, UP_TO_METRICS).success
    batch = latest_storage_id(instance, "success_samples")
    first = tick(calibration_gate_sensor, instance)
    (request,) = first.run_requests
    assert request.run_key == f"calibration-samples-{batch}"
    assert request.tags["autopack/samples-batch"] == str(batch)
    assert first.cursor == str(batch)
    # The next tick carries the cursor: the same batch is not requested again.
    second = tick(calibration_gate_sensor, instance, cursor=first.cursor)
    assert not second.run_requests
    assert f"samples batch {batch} was already handed to calibration_job" in second.skip_message
    # Even without the cursor the run key is the same, so the daemon would not launch twice.
    assert tick(calibration_gate_sensor, instance).run_requests[0].run_key == request.run_key

    # The requested job calibrates on those samples without collecting again.
    job = defs.resolve_job_def("calibration_job")
    assert {node.name for node in job.nodes} == {"calibration_recommendations", "generated_tasks"}
    outcome = job.execute_in_process(instance=instance, tags=request.tags)
    assert outcome.success
    assert outcome.output_for_node("calibration_recommendations").gate.open
    after = tick(calibration_gate_sensor, instance)
    assert not after.run_requests and "calibration already ran on it" in after.skip_message
    assert "Calibration gate open" in after.skip_message

    # A new batch of samples is a new request, with a new key.
    assert materialize_slice(instance, sqlite_url, UP_TO_METRICS).success
    (again,) = tick(calibration_gate_sensor, instance, cursor=first.cursor).run_requests
    assert again.run_key == f"calibration-samples-{latest_storage_id(instance, 'success_samples')}" != request.run_key


def test_gate_sensor_reads_the_latest_data_quality_results_across_runs(instance, sqlite_url, tmp_path):
    assert materialize_slice(instance, sqlite_url, UP_TO_METRICS).success
    assert tick(calibration_gate_sensor, instance).run_requests
    # A later run finds an empty database: its blocking check fails, and only that run stops.
    empty_url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert not materialize_slice(instance, empty_url, "key:raw_events").success
    data = tick(calibration_gate_sensor, instance)
    assert not data.run_requests
    assert "calibration waits for clean data" in data.skip_message
    assert "events_exist failed: no events in the telemetry database" in data.skip_message


def test_gate_sensor_waits_for_metrics_on_the_new_samples(instance, sqlite_url):
    assert materialize_slice(instance, sqlite_url, UP_TO_METRICS).success
    assert materialize_slice(instance, sqlite_url, "key:raw_events or key:success_samples").success
    data = tick(calibration_gate_sensor, instance)
    assert "tier_metrics has not been materialised on these samples yet" in data.skip_message


def test_gate_sensor_skips_when_the_pipeline_already_calibrated(instance, sqlite_url):
    assert materialize_slice(instance, sqlite_url).success
    data = tick(calibration_gate_sensor, instance)
    assert not data.run_requests and "calibration already ran on it" in data.skip_message


def test_task_sensor_explains_when_generation_is_off(instance, sqlite_url, monkeypatch):
    monkeypatch.setenv("AUTOPACK_TASK_GENERATION_ENABLED", "false")
    data = tick(task_generation_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == "task generation is off (AUTOPACK_TASK_GENERATION_ENABLED=false)"


def test_task_sensor_requests_generation_once_per_new_metrics_or_recommendations(instance, sqlite_url, monkeypatch):
    monkeypatch.setenv("AUTOPACK_TASK_GENERATION_ENABLED", "true")
    data = tick(task_generation_sensor, instance)
    assert "generated_tasks needs tier_metrics and calibration_recommendations" in data.skip_message

    assert materialize_slice(instance, sqlite_url, "+key:calibration_recommendations").success
    metrics, recommendations = latest_storage_id(instance, "tier_metrics"), latest_storage_id(
        instance, "calibration_recommendations"
    )
    first = tick(task_generation_sensor, instance)
    (request,) = first.run_requests
    assert request.run_key == f"tasks-{metrics}-{recommendations}"
    second = tick(task_generation_sensor, instance, cursor=first.cursor)
    assert not second.run_requests and "already handed to task_generation_job" in second.skip_message

    outcome = defs.resolve_job_def("task_generation_job").execute_in_process(instance=instance)
    assert outcome.success and outcome.output_for_node("generated_tasks")
    done = tick(task_generation_sensor, instance)
    assert not done.run_requests and "generated_tasks already materialised after them" in done.skip_message

    # New metrics alone are a new batch.
    assert materialize_slice(instance, sqlite_url, "key:tier_metrics").success
    (again,) = tick(task_generation_sensor, instance, cursor=first.cursor).run_requests
    assert again.run_key == f"tasks-{latest_storage_id(instance, 'tier_metrics')}-{recommendations}"
