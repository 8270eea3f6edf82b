"""What a person does with a generated task, and how a new generation updates the stored ones.

One place for the decisions the CLI makes today and Dagster jobs will launch from the UI (no
Dagster import here): :func:`approve_task`, :func:`reject_task`, :func:`complete_task`,
:func:`supersede_task` return a :class:`Decision` whose message is what a person is told;
:func:`refresh_tasks` stores one generation (new findings inserted, pending ones refreshed with the
new figures, vanished ones superseded); :func:`next_step` is the command to run next on a task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import Engine

from autopack_pipeline.domain.task_evidence import evidence_lines, group_label
from autopack_pipeline.services import seed_files
from autopack_pipeline.settings import SettingsError, load_settings
from autopack_pipeline.storage import tasks as store

# What a person reads of a task, rendered from its stored evidence (the CLI prints these from here).
__all__ = ["Decision", "approve_task", "complete_task", "estimated_cost_text", "evidence_lines", "find_task",
           "group_label", "list_tasks", "next_step", "refresh_tasks", "reject_task", "supersede_task"]

CLI = "autopack-telemetry"
# The word a person reads for each decision (a verb's past tense is not always verb + "d").
PAST_TENSE = {"approve": "approved", "reject": "rejected", "complete": "completed", "supersede": "superseded"}


@dataclass(frozen=True)
class Decision:
    task_id: str
    action: str  # approve | reject | complete | supersede
    outcome: str  # done | not_found | not_allowed
    status: str | None  # the task's status after the decision
    message: str
    next_step: str | None = None

    @property
    def done(self) -> bool:
        return self.outcome == "done"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"done": self.done}


def list_tasks(engine: Engine, *, status: str | None = None, kind: str | None = None,
               include_closed: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The stored tasks, most urgent first, then oldest: those of ``status`` (closed ones included) when
    given, every one with ``include_closed``, else the open ones only (a to-do list); and how many tasks
    matched before closed ones were left out."""
    every = store.list_generated_tasks(engine, status=status)
    if kind:
        every = [t for t in every if t.get("kind") == kind]
    tasks = every if status or include_closed else [t for t in every if t["status"] in store.OPEN_STATUSES]
    return tasks, len(every)


def find_task(engine: Engine, task_id: str) -> dict[str, Any] | None:
    """One stored task, or ``None``."""
    return store.get_task(engine, task_id)


def estimated_cost_text(tokens: int) -> str:
    """The estimated cost in tokens and, at the configured model's output price, in dollars."""
    text = f"{tokens:,} tokens (Autopack's estimate of the work)"
    try:
        settings = load_settings()
        price = seed_files.load_prices_for(settings).price_of(settings.model).output
    except (OSError, ValueError, SettingsError):  # no price table is no reason to refuse showing a task
        return text
    return text + f", about ${tokens * price / 1_000_000:,.2f} at {settings.model}'s output price"


def next_step(task: Mapping[str, Any]) -> str | None:
    """The command a person runs next on ``task``, or ``None`` when it is closed."""
    task_id, kind, status = task["task_id"], task.get("kind"), task.get("status")
    if status == "in_progress":
        run = task.get("executed_in_run_id") or "in progress"
        return f"wait for its run ({run}), then `{CLI} tasks show {task_id}`"
    if status != "pending":
        return None
    if kind == "collect_samples":
        if task.get("requires_approval") is not False:
            return f"`{CLI} tasks approve {task_id}`, then `{CLI} tasks execute` collects the samples"
        return f"`{CLI} tasks execute` runs it (a targeted collection for its group)"
    if kind == "review_coefficients":
        method = (task.get("evidence") or {}).get("method") or "coverage"
        return (f"review the report of `{CLI} calibrate --method {method}`, apply it with `{CLI} apply-calibration "
                f"PATCH.json`, then `{CLI} tasks complete {task_id}` (or `tasks reject {task_id} --reason ...`)")
    if kind == "investigate_estimator":
        return (f"look at `{CLI} metrics --stratify` for the group, then `{CLI} tasks complete {task_id}` "
                f"(or `tasks reject {task_id} --reason ...`)")
    return f"carry it out, then `{CLI} tasks complete {task_id}` (or `tasks reject {task_id} --reason ...`)"


def _decision(engine: Engine, task_id: str, action: str, outcome: str, *, refusal: str = "") -> Decision:
    task = store.get_task(engine, task_id)
    if outcome == "not_found" or task is None:
        return Decision(task_id, action, "not_found", None, f"no task {task_id} (see `{CLI} tasks list`)")
    if outcome != "updated":
        return Decision(task_id, action, "not_allowed", task["status"],
                        f"task {task_id} is {task['status']}; {refusal or 'only a pending task'} can be "
                        f"{PAST_TENSE[action]}")
    # A rejection is stored under Autopack's word for it, which a person would not guess.
    message = f"{task_id} {PAST_TENSE[action]}" + (f" (status {task['status']})" if action == "reject" else "") + "."
    return Decision(task_id, action, "done", task["status"], message, next_step(task))


def approve_task(engine: Engine, task_id: str, *, note: str | None = None) -> Decision:
    """A person approves a pending task (a collect-samples task may then run on its own)."""
    return _decision(engine, task_id, "approve", store.approve_task(engine, task_id, note=note))


def reject_task(engine: Engine, task_id: str, *, reason: str | None = None) -> Decision:
    """A person rejects a pending task: status ``skipped`` with the reason."""
    return _decision(engine, task_id, "reject", store.reject_task(engine, task_id, reason=reason))


def complete_task(engine: Engine, task_id: str) -> Decision:
    """A person closes a pending or in-progress task they carried out."""
    task = store.get_task(engine, task_id)
    if task is not None and task["status"] in store.OPEN_STATUSES:
        outcome = store.mark_task_status(engine, task_id, "completed")
    else:
        outcome = "not_found" if task is None else "not_pending"
    return _decision(engine, task_id, "complete", outcome, refusal="only a pending or in-progress task")


def supersede_task(engine: Engine, task_id: str, *, reason: str) -> Decision:
    """Close a pending task whose finding no longer holds (or is carried by another task)."""
    return _decision(engine, task_id, "supersede", store.supersede_task(engine, task_id, reason=reason))


def _group_finding(evidence: Mapping[str, Any] | None) -> bool:
    """A (category, complexity) group's Tier-1 finding: an investigation of its breaches or the review
    of its recommendation (one replaces the other as the calibration starts or stops recommending)."""
    evidence = evidence or {}
    return "/" in group_label(evidence) and any(evidence.get(k) for k in ("metric", "symptoms", "method"))


def refresh_tasks(engine: Engine, detected: list[dict[str, Any]], *, max_new: int,
                  detected_by: str) -> store.TaskRefresh:
    """Store one generation's ``detected`` tasks (most urgent first, as dicts with column names).

    At most ``max_new`` of the first findings open a task; every pending task still detected gets the
    new figures; a pending task no longer detected is superseded, naming the task of its group that
    carries the finding now, if there is one. ``detected_by`` names the generation, for the reason.
    """
    carriers: dict[str, str] = {}
    for task in detected[:max_new]:
        if _group_finding(task.get("evidence")):
            carriers.setdefault(group_label(task.get("evidence")), task["task_id"])

    def reason(task: Mapping[str, Any]) -> str:
        found = f"not detected by {detected_by}"
        carrier = carriers.get(group_label(task["evidence"])) if _group_finding(task["evidence"]) else None
        return f"{found}; the group's finding is now {carrier}" if carrier else found

    return store.refresh_generated_tasks(engine, detected, insert_at_most=max_new, supersede_reason=reason)
