"""Approving, rejecting and completing a generated task are jobs a person launches from the UI with
config (task_id, reason); they call tasks_review as the CLI does, and fail clearly on an unknown or
closed task."""

from __future__ import annotations

import dagster as dg
import pytest

from autopack_pipeline.defs.definitions import defs
from autopack_pipeline.storage import tasks as store
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline_tests.integration.dagster_layer.conftest import SMALL_COLLECTION, materialize_slice


def _decide(instance, job: str, **config) -> dg.ExecuteInProcessResult:
    op = job.removesuffix("_job")
    return defs.resolve_job_def(job).execute_in_process(
        run_config={"ops": {op: {"config": config}}}, instance=instance, raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult, op: str) -> str:
    assert not result.success
    failure = result.failure_data_for_node(op)
    assert failure is not None and failure.user_failure_data is not None, "crashed instead of failing clearly"
    return failure.user_failure_data.description


@pytest.fixture
def pending(sqlite_url, instance) -> list[dict]:
    """The pipeline on a small collection: the gate stays closed and collect-samples tasks wait for a person."""
    assert materialize_slice(instance, sqlite_url, run_config=SMALL_COLLECTION).success
    tasks = store.list_generated_tasks(make_engine(sqlite_url), status="pending")
    assert len(tasks) >= 2
    return tasks


@pytest.mark.parametrize("job", ["approve_task_job", "reject_task_job", "complete_task_job"])
def test_an_unknown_task_id_fails_the_run_naming_it(sqlite_url, instance, pending, job):
    description = _failure(_decide(instance, job, task_id="TASK-NOSUCHTASK0"), job.removesuffix("_job"))
    assert description == "no task TASK-NOSUCHTASK0 (see `autopack-telemetry tasks list`)"


def test_approve_then_reject_from_the_ui(sqlite_url, instance, pending):
    engine = make_engine(sqlite_url)
    first, second = pending[0]["task_id"], pending[1]["task_id"]

    approved = _decide(instance, "approve_task_job", task_id=first, reason="worth the samples")
    assert approved.success
    assert approved.output_for_node("approve_task")["status"] == "pending"
    task = store.get_task(engine, first)
    assert task["requires_approval"] is False and task["evidence"]["approval"]["note"] == "worth the samples"

    rejected = _decide(instance, "reject_task_job", task_id=second, reason="group retired")
    assert rejected.success
    assert store.get_task(engine, second)["status"] == "skipped"
    assert store.get_task(engine, second)["failure_reason"] == "Rejected: group retired"

    again = _decide(instance, "reject_task_job", task_id=second, reason="twice")
    assert "is skipped; only a pending task can be rejected" in _failure(again, "reject_task")


def test_task_jobs_are_launched_by_a_person_only():
    for job in ("approve_task_job", "reject_task_job", "complete_task_job"):
        assert defs.resolve_job_def(job).tags["autopack/telemetry-db"] == "write"
    targeted = {target.job_name for sensor in defs.sensors for target in sensor.targets}
    targeted |= {schedule.job_name for schedule in defs.schedules or []}
    assert not targeted & {"approve_task_job", "reject_task_job", "complete_task_job"}
