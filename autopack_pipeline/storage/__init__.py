"""Telemetry storage: Autopack-compatible tables, one database identity, migrations, readers, writers.

Nothing here binds an engine at import time; callers create one with :func:`make_engine` when a
command or asset starts, so a ``DATABASE_URL`` set later is honoured (pitfall P1).

The names below are loaded on first use (PEP 562), not when the package is: importing any
``autopack_pipeline.storage.*`` module runs this file first, and loading the writers (pandas, the ORM)
and the migrations (Alembic) here made every command that only reads the columnar copy pay for them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "DatabaseIdentity": "database",
    "describe_database": "handle",
    "make_engine": "database",
    "resolve_database_url": "database",
    "EstimationEvent": "events",
    "ensure_run_and_phase": "events",
    "read_events": "events",
    "record_escalation_event": "events",
    "record_estimation_event": "events",
    "telemetry_enabled": "events",
    "SchemaOutOfDate": "migrate",
    "current_revision": "migrate",
    "head_revision": "migrate",
    "require_current_schema": "migrate",
    "upgrade_database": "migrate",
    "database_summary": "summary",
    "list_generated_tasks": "tasks",
    "save_generated_tasks": "tasks",
}

__all__ = [
    "DatabaseIdentity",
    "EstimationEvent",
    "SchemaOutOfDate",
    "current_revision",
    "database_summary",
    "describe_database",
    "ensure_run_and_phase",
    "head_revision",
    "list_generated_tasks",
    "make_engine",
    "read_events",
    "record_escalation_event",
    "record_estimation_event",
    "require_current_schema",
    "resolve_database_url",
    "save_generated_tasks",
    "telemetry_enabled",
    "upgrade_database",
]

if TYPE_CHECKING:
    from autopack_pipeline.storage.database import (
        DatabaseIdentity,
        make_engine,
        resolve_database_url,
    )
    from autopack_pipeline.storage.events import (
        EstimationEvent,
        ensure_run_and_phase,
        read_events,
        record_escalation_event,
        record_estimation_event,
        telemetry_enabled,
    )
    from autopack_pipeline.storage.handle import describe_database
    from autopack_pipeline.storage.migrate import (
        SchemaOutOfDate,
        current_revision,
        head_revision,
        require_current_schema,
        upgrade_database,
    )
    from autopack_pipeline.storage.summary import database_summary
    from autopack_pipeline.storage.tasks import list_generated_tasks, save_generated_tasks


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
