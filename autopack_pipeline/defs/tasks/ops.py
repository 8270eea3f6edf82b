"""A person's decisions on generated tasks (the CLI's `tasks approve|reject|complete`), as ops the UI launches."""

import dagster as dg
from pydantic import Field

from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.services import tasks_review


class TaskDecisionConfig(dg.Config):
    task_id: str = Field(description="The task's id, as the generated_tasks asset's `tasks` table shows it "
                                     "(TASK-...).")
    reason: str | None = Field(default=None, description="Why: stored with a rejection, or as the approval's note.")


def _decide(context: dg.OpExecutionContext, decision) -> dg.Output[dict]:
    """A decision that was not taken fails the run with the reason (unknown id, task not pending)."""
    if not decision.done:
        raise dg.Failure(description=decision.message, allow_retries=False,
                         metadata={"task_id": decision.task_id, "outcome": decision.outcome})
    context.log.info(decision.message)
    metadata = {"task_id": decision.task_id, "status": decision.status or "-",
                "message": dg.MetadataValue.text(decision.message)}
    if decision.next_step:
        metadata["next_step"] = dg.MetadataValue.md(decision.next_step)
    return dg.Output(decision.as_dict(), metadata=metadata)


@dg.op(name="approve_task", description="Approve a pending task (a collect-samples task may then run on its own).")
def approve_task_op(context: dg.OpExecutionContext, config: TaskDecisionConfig,
                    telemetry_db: TelemetryDatabase) -> dg.Output[dict]:
    return _decide(context, tasks_review.approve_task(telemetry_db.engine(), config.task_id, note=config.reason))


@dg.op(name="reject_task", description="Reject a pending task (status skipped), with the reason.")
def reject_task_op(context: dg.OpExecutionContext, config: TaskDecisionConfig,
                   telemetry_db: TelemetryDatabase) -> dg.Output[dict]:
    return _decide(context, tasks_review.reject_task(telemetry_db.engine(), config.task_id, reason=config.reason))


@dg.op(name="complete_task", description="Close a pending or in-progress task that was carried out.")
def complete_task_op(context: dg.OpExecutionContext, config: TaskDecisionConfig,
                     telemetry_db: TelemetryDatabase) -> dg.Output[dict]:
    return _decide(context, tasks_review.complete_task(telemetry_db.engine(), config.task_id))
