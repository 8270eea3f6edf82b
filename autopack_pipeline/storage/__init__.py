"""Telemetry storage: Autopack-compatible tables, one database identity, migrations, readers, writers.

Nothing here binds an engine at import time; callers create one with :func:`make_engine` when a
command or asset starts, so a ``DATABASE_URL`` set later is honoured (pitfall P1).
"""

from autopack_pipeline.storage.database import (
    DatabaseIdentity,
    describe_database,
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
from autopack_pipeline.storage.migrate import (
    SchemaOutOfDate,
    current_revision,
    head_revision,
    require_current_schema,
    upgrade_database,
)
from autopack_pipeline.storage.summary import database_summary
from autopack_pipeline.storage.tasks import list_generated_tasks, save_generated_tasks

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
