"""Task jobs: generate tasks from the latest analysis, and a person's decisions on a generated task."""

import dagster as dg

from autopack_pipeline.defs.shared.run_tags import WRITES
from autopack_pipeline.defs.tasks.assets import generated_tasks
from autopack_pipeline.defs.tasks.ops import approve_task_op, complete_task_op, reject_task_op

task_generation_job = dg.define_asset_job(
    name="task_generation_job",
    selection=dg.AssetSelection.assets(generated_tasks),
    description="Turn the latest metrics, calibration and drift into improvement tasks. Requested by task_generation_sensor.",
    tags=WRITES,
)

# A person's decisions on generated tasks, launched from the UI with config
# {ops: {<op>: {config: {task_id: TASK-..., reason: ...}}}}; an unknown or closed task fails the run.
_TASK_DECISION = "Launched by a person from the UI (config: task_id, reason); fails on an unknown or closed task."


@dg.job(description=f"Approve a pending generated task. {_TASK_DECISION}", tags=WRITES)
def approve_task_job():
    approve_task_op()


@dg.job(description=f"Reject a pending generated task, with a reason. {_TASK_DECISION}", tags=WRITES)
def reject_task_job():
    reject_task_op()


@dg.job(description=f"Mark a generated task completed once it was carried out. {_TASK_DECISION}", tags=WRITES)
def complete_task_job():
    complete_task_op()
