"""Generated improvement tasks in Autopack's ``generated_tasks`` table: storing them and their lifecycle.

Statuses are Autopack's: ``pending`` -> ``in_progress`` -> ``completed`` or ``failed``, and ``skipped``
for a task a person rejected. A failure with retries left sends the task back to ``pending`` (its
``retry_count`` and ``failure_runs`` grow); at ``max_retries`` it is ``failed`` for good. An
``in_progress`` task nobody has touched for a day was abandoned (a crash, a killed process) and is
failed by :func:`cleanup_stale_tasks`, so it cannot block its group forever.

Ours: ``superseded``, for a pending task whose finding a later generation no longer detects (the
reason is its ``failure_reason``, the time its ``updated_at`` and ``evidence.superseded``). Such a task
is reopened if its finding comes back. :func:`refresh_generated_tasks` stores one generation's
findings: new ones inserted, pending ones given the new figures, the vanished ones superseded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import case, false, func, select, update
from sqlalchemy.engine import Connection, Engine

from autopack_pipeline.storage.database import insert_ignoring_conflicts
from autopack_pipeline.storage.models import GeneratedTask, naive_utc, utc_now

_TASKS = GeneratedTask.__table__
_WRITABLE = frozenset(column.key for column in _TASKS.columns) - {"id"}
# Autopack's get_pending_tasks order: most urgent first, then oldest first.
_PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}

STATUSES = ("pending", "in_progress", "completed", "failed", "skipped", "superseded")
OPEN_STATUSES = ("pending", "in_progress")
# What a re-detection refreshes on a pending task: its figures. Status, approval, retries, kind and
# the run that first found it stay as they are.
REFRESHED_COLUMNS = ("title", "description", "priority", "confidence", "estimated_effort", "estimated_cost",
                     "source_insights", "evidence")
# Evidence a person or the lifecycle added, carried over when the figures are refreshed.
_KEPT_EVIDENCE = ("approval", "reopened")
DEFAULT_MAX_RETRIES = 3
DEFAULT_STALE_HOURS = 24


def _to_row(task: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(task) - _WRITABLE
    if unknown:
        raise ValueError(f"generated_tasks has no column(s) {sorted(unknown)}; known: {sorted(_WRITABLE)}")
    if not task.get("task_id") or not task.get("title"):
        raise ValueError("every generated task needs a task_id and a title")
    row = dict(task)
    for key, value in row.items():
        # PostgreSQL enforces VARCHAR(n) and SQLite does not; checking here makes both refuse alike.
        length = getattr(_TASKS.c[key].type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            raise ValueError(f"generated_tasks.{key} holds at most {length} characters, got {len(value)}")
        # Columns are timezone-less UTC, as everywhere in Autopack's schema.
        if isinstance(value, datetime):
            row[key] = naive_utc(value)
    return row


def save_generated_tasks(engine: Engine, tasks: list[dict[str, Any]]) -> int:
    """Insert tasks whose ``task_id`` is new and return how many were inserted.

    A task_id already in the table is left alone (its status, retries and history belong to whoever
    is executing it), so saving the same batch twice inserts nothing the second time. Keys must be
    column names of ``generated_tasks``; a misspelt key raises ``ValueError`` before anything is written.
    """
    rows = [_to_row(task) for task in tasks]
    inserted = 0
    with engine.begin() as connection:
        for row in rows:
            inserted += insert_ignoring_conflicts(connection, _TASKS, row, ["task_id"])
    return inserted


def _plain(value: Any) -> Any:
    """JSON-ready value: datetimes as ISO 8601 UTC strings."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc).isoformat() if value.tzinfo is None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _ordered(statement):
    rank = case(_PRIORITY_RANK, value=_TASKS.c.priority, else_=len(_PRIORITY_RANK))
    return statement.order_by(rank, _TASKS.c.created_at, _TASKS.c.id)


def _plain_rows(rows) -> list[dict[str, Any]]:
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def list_generated_tasks(engine: Engine, status: str | None = None) -> list[dict[str, Any]]:
    """Tasks (optionally only those with ``status``), most urgent priority first, then oldest first.

    Each task is a dict keyed by column name; datetimes are ISO strings so the result can be
    printed as JSON as it is.
    """
    statement = _ordered(select(_TASKS))
    if status is not None:
        statement = statement.where(_TASKS.c.status == status)
    with engine.connect() as connection:
        return _plain_rows(connection.execute(statement).mappings().all())


def get_task(engine: Engine, task_id: str) -> dict[str, Any] | None:
    """One task as a JSON-ready dict, or ``None``."""
    with engine.connect() as connection:
        row = connection.execute(select(_TASKS).where(_TASKS.c.task_id == task_id)).mappings().first()
    return _plain_rows([row])[0] if row is not None else None


def pending_tasks(
    engine: Engine, *, kind: str | None = None, auto_executable_only: bool = False, limit: int = 10
) -> list[dict[str, Any]]:
    """Pending tasks, critical > high > medium > low, then oldest first.

    ``auto_executable_only`` keeps tasks that need no approval; a NULL ``requires_approval`` (a row
    written by Autopack, which never stored it) counts as needing one.
    """
    statement = _ordered(select(_TASKS).where(_TASKS.c.status == "pending")).limit(limit)
    if kind is not None:
        statement = statement.where(_TASKS.c.kind == kind)
    if auto_executable_only:
        statement = statement.where(_TASKS.c.requires_approval == false())
    with engine.connect() as connection:
        return _plain_rows(connection.execute(statement).mappings().all())


def _locked(connection: Connection, task_id: str) -> Mapping[str, Any] | None:
    # FOR UPDATE on PostgreSQL, so a sensor and a terminal updating one task serialise; SQLite ignores
    # it and serialises writers by itself.
    statement = select(_TASKS).where(_TASKS.c.task_id == task_id).with_for_update()
    return connection.execute(statement).mappings().first()


def _set(connection: Connection, task_id: str, **values: Any) -> None:
    connection.execute(update(_TASKS).where(_TASKS.c.task_id == task_id).values(**values))


def mark_task_status(
    engine: Engine,
    task_id: str,
    status: str,
    *,
    executed_in_run_id: str | None = None,
    failure_reason: str | None = None,
    increment_retry: bool = False,
) -> str:
    """Move a task to ``status``; returns ``"updated"``, ``"retry"``, ``"failed"`` or ``"not_found"``.

    With ``increment_retry`` this records a failed attempt, whatever ``status`` says (Autopack's
    semantics): ``retry_count`` grows, ``executed_in_run_id`` joins ``failure_runs`` if new, and the
    task goes back to ``pending`` ("retry") or, at ``max_retries``, to ``failed`` ("failed").
    ``completed`` stamps ``completed_at``; ``updated_at`` is always stamped.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown task status {status!r}; known: {', '.join(STATUSES)}")
    now = utc_now()
    with engine.begin() as connection:
        task = _locked(connection, task_id)
        if task is None:
            return "not_found"
        values: dict[str, Any] = {"updated_at": now}
        if executed_in_run_id is not None:
            values["executed_in_run_id"] = executed_in_run_id
        if failure_reason is not None:
            values["failure_reason"] = failure_reason
        if increment_retry:
            retries = int(task["retry_count"] or 0) + 1
            runs = list(task["failure_runs"] or [])
            if executed_in_run_id is not None and executed_in_run_id not in runs:
                runs.append(executed_in_run_id)
            limit = int(task["max_retries"] if task["max_retries"] is not None else DEFAULT_MAX_RETRIES)
            exhausted = retries >= limit
            values |= {"retry_count": retries, "failure_runs": runs, "status": "failed" if exhausted else "pending"}
            if exhausted:
                values["failure_reason"] = f"{failure_reason or 'failed'} (gave up after {retries} attempts)"
            _set(connection, task_id, **values)
            return "failed" if exhausted else "retry"
        values["status"] = status
        if status == "completed":
            values["completed_at"] = now
        _set(connection, task_id, **values)
        return "updated"


def claim_task(engine: Engine, task_id: str, *, executed_in_run_id: str | None = None) -> bool:
    """Atomically move a ``pending`` task to ``in_progress``; ``False`` if it is not pending (any more).

    One conditional UPDATE, so two executors racing for the same task cannot both win it.
    """
    values: dict[str, Any] = {"status": "in_progress", "updated_at": utc_now()}
    if executed_in_run_id is not None:
        values["executed_in_run_id"] = executed_in_run_id
    statement = update(_TASKS).where(_TASKS.c.task_id == task_id, _TASKS.c.status == "pending").values(**values)
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def cleanup_stale_tasks(engine: Engine, threshold_hours: float = DEFAULT_STALE_HOURS) -> int:
    """Fail ``in_progress`` tasks last touched (``updated_at``, else ``created_at``) more than
    ``threshold_hours`` ago; returns how many."""
    now = utc_now()
    cutoff = now - timedelta(hours=threshold_hours)
    touched = func.coalesce(_TASKS.c.updated_at, _TASKS.c.created_at)
    with engine.begin() as connection:
        stale = connection.execute(
            select(_TASKS.c.task_id, touched.label("touched")).where(_TASKS.c.status == "in_progress", touched < cutoff)
        ).all()
        for task_id, last in stale:
            reason = f"Stale: in progress since {_plain(last)} with no update for more than {threshold_hours:g} h"
            connection.execute(
                update(_TASKS)
                .where(_TASKS.c.task_id == task_id, _TASKS.c.status == "in_progress")
                .values(status="failed", failure_reason=reason, updated_at=now)
            )
    return len(stale)


def approve_task(engine: Engine, task_id: str, *, note: str | None = None) -> str:
    """A person approves a pending task: it no longer needs approval, and the approval is kept in its
    evidence. Returns ``"updated"``, ``"not_found"`` or ``"not_pending"``.

    Approval makes a collect-samples task executable; a coefficient review stays a person's job.
    """
    with engine.begin() as connection:
        task = _locked(connection, task_id)
        if task is None:
            return "not_found"
        if task["status"] != "pending":
            return "not_pending"
        evidence = dict(task["evidence"] or {})
        evidence["approval"] = {"approved_at": _plain(utc_now()), "note": note}
        _set(connection, task_id, requires_approval=False, evidence=evidence, updated_at=utc_now())
    return "updated"


def reject_task(engine: Engine, task_id: str, *, reason: str | None = None) -> str:
    """A person rejects a pending task: status ``skipped`` (Autopack's word) with the reason.
    Returns ``"updated"``, ``"not_found"`` or ``"not_pending"``."""
    with engine.begin() as connection:
        task = _locked(connection, task_id)
        if task is None:
            return "not_found"
        if task["status"] != "pending":
            return "not_pending"
        _set(connection, task_id, status="skipped", failure_reason=f"Rejected: {reason or 'no reason given'}",
             updated_at=utc_now())
    return "updated"


@dataclass(frozen=True)
class TaskRefresh:
    """What storing one generation did, by task id."""

    inserted: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    reopened: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"inserted": self.inserted, "refreshed": self.refreshed, "reopened": self.reopened,
                "superseded": self.superseded}


def _figures(row: Mapping[str, Any], old: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    values = {key: row[key] for key in REFRESHED_COLUMNS if key in row}
    kept = {key: value for key, value in (old["evidence"] or {}).items() if key in _KEPT_EVIDENCE}
    values["evidence"] = dict(row.get("evidence") or {}) | kept
    return values | {"updated_at": now}


def _supersede(connection: Connection, task: Mapping[str, Any], reason: str, now: datetime) -> None:
    evidence = dict(task["evidence"] or {}) | {"superseded": {"at": _plain(now), "reason": reason}}
    connection.execute(update(_TASKS).where(_TASKS.c.task_id == task["task_id"], _TASKS.c.status == "pending")
                       .values(status="superseded", failure_reason=f"Superseded: {reason}", evidence=evidence,
                               updated_at=now))


def refresh_generated_tasks(
    engine: Engine,
    detected: list[dict[str, Any]],
    *,
    insert_at_most: int | None = None,
    supersede_reason: Callable[[Mapping[str, Any]], str] | None = None,
) -> TaskRefresh:
    """Store one generation's findings, in one transaction.

    ``detected`` is every task the generation found, most urgent first. A new one among the first
    ``insert_at_most`` is inserted; one already pending gets the new figures (the task keeps its
    status, approval and history); a superseded one among the first ``insert_at_most`` is reopened
    as pending; a task a person or an executor has taken further (in progress, completed, failed,
    skipped) is left alone. Every other pending generated task (one with a fingerprint) is no longer
    detected and becomes ``superseded``, with ``supersede_reason(task)`` as the reason.
    """
    now = utc_now()
    rows = [_to_row(task) for task in detected]
    ids = [row["task_id"] for row in rows]
    result = TaskRefresh()
    with engine.begin() as connection:
        stored = {row["task_id"]: row for row in connection.execute(
            select(_TASKS).where(_TASKS.c.task_id.in_(ids)).with_for_update()).mappings()} if ids else {}
        for position, row in enumerate(rows):
            old = stored.get(row["task_id"])
            may_open = insert_at_most is None or position < insert_at_most
            if old is None:
                if may_open and insert_ignoring_conflicts(connection, _TASKS, row, ["task_id"]):
                    result.inserted.append(row["task_id"])
            elif old["status"] == "pending":
                _set(connection, row["task_id"], **_figures(row, old, now))
                result.refreshed.append(row["task_id"])
            elif old["status"] == "superseded" and may_open:
                values = _figures(row, old, now)
                values["evidence"]["reopened"] = {"at": _plain(now), "after": old["failure_reason"]}
                _set(connection, row["task_id"], status="pending", failure_reason=None, **values)
                result.reopened.append(row["task_id"])
        gone = connection.execute(
            select(_TASKS).where(_TASKS.c.status == "pending", _TASKS.c.fingerprint.is_not(None),
                                 _TASKS.c.task_id.not_in(ids)).with_for_update()).mappings().all()
        for task in gone:
            _supersede(connection, task, supersede_reason(task) if supersede_reason else "no longer detected", now)
            result.superseded.append(task["task_id"])
    return result


def supersede_task(engine: Engine, task_id: str, *, reason: str) -> str:
    """Close a pending task as ``superseded`` with ``reason``. Returns ``"updated"``, ``"not_found"`` or
    ``"not_pending"``."""
    with engine.begin() as connection:
        task = _locked(connection, task_id)
        if task is None:
            return "not_found"
        if task["status"] != "pending":
            return "not_pending"
        _supersede(connection, task, reason, utc_now())
    return "updated"
