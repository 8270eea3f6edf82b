"""Persisting generated improvement tasks in Autopack's ``generated_tasks`` table."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import insert_ignoring_conflicts
from autopack_pipeline.storage.models import GeneratedTask

_TASKS = GeneratedTask.__table__
_WRITABLE = frozenset(column.key for column in _TASKS.columns) - {"id"}
# Autopack's get_pending_tasks order: most urgent first, then oldest first.
_PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


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
        if isinstance(value, datetime) and value.tzinfo is not None:
            row[key] = value.astimezone(timezone.utc).replace(tzinfo=None)
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


def list_generated_tasks(engine: Engine, status: str | None = None) -> list[dict[str, Any]]:
    """Tasks (optionally only those with ``status``), most urgent priority first, then oldest first.

    Each task is a dict keyed by column name; datetimes are ISO strings so the result can be
    printed as JSON as it is.
    """
    rank = case(_PRIORITY_RANK, value=_TASKS.c.priority, else_=len(_PRIORITY_RANK))
    statement = select(_TASKS).order_by(rank, _TASKS.c.created_at, _TASKS.c.id)
    if status is not None:
        statement = statement.where(_TASKS.c.status == status)
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [{key: _plain(value) for key, value in row.items()} for row in rows]
