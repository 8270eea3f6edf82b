"""Writing and reading token-estimation and escalation events (Autopack's §3.3 writer, and readers).

The writers are best-effort by contract: telemetry must never fail a build, so they catch every
exception, log it without secrets, and return ``False``. A write that failed because the database was
locked, down or unreachable is not lost: the row goes to the local spool (:mod:`.spool`) and is
written after the next successful write, or by ``autopack-telemetry spool replay``. The reader
returns the events DataFrame shape of :mod:`autopack_pipeline.storage.frames`, also for databases that lack our newer columns.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Table, insert, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

import autopack_pipeline.storage.spool as spool
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.storage.database import (
    in_chunks,
    insert_ignoring_conflicts,
    insert_many_ignoring_conflicts,
    insert_unless_exists,
    safe_error_text,
)
from autopack_pipeline.storage.frames import (
    EVENT_COLUMNS,
    conform_events_frame,
    empty_events_frame,
)
from autopack_pipeline.storage.models import (
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
    naive_utc,
    utc_now,
)
from autopack_pipeline.storage.phase_rows import PhaseRow, ensure_phase_rows
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, readable_column, set_aside_in_frame

logger = logging.getLogger(__name__)

TELEMETRY_FLAG = "TELEMETRY_DB_ENABLED"  # read by settings.StorageSettings.telemetry_flag
MIN_VALID_OUTPUT_TOKENS = 50  # smaller outputs are parser/API failures (e.g. an empty "files: []")
MAX_STORED_DELIVERABLES = 20
MAX_DELIVERABLE_CHARS = 200

_EVENTS = TokenEstimationV2Event.__table__
_ESCALATIONS = TokenBudgetEscalationEvent.__table__


def telemetry_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the Builder should persist events: ``TELEMETRY_DB_ENABLED`` is 1/true/yes (default off),
    in ``env`` when given, else in the process environment (read by the settings, at each call)."""
    from autopack_pipeline.settings import load_storage_settings

    return load_storage_settings(env).telemetry_db_enabled


class EstimationEvent(BaseModel):
    """What the Builder knows after one LLM call: the writer's input."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    phase_id: str
    category: str | None = None
    complexity: str | None = None
    deliverables: list[str] = Field(default_factory=list)
    predicted_output_tokens: int
    actual_output_tokens: int
    selected_budget: int = 0
    actual_max_tokens: int | None = None
    success: bool
    truncated: bool = False
    stop_reason: str | None = None
    model: str
    attempt: int | None = None
    event_uid: str | None = Field(default=None, max_length=64)
    actual_is_total_tokens: bool = False
    phase_completed: bool | None = None
    api_reference_required: bool | None = None
    examples_required: bool | None = None
    research_required: bool | None = None
    usage_guide_required: bool | None = None
    context_quality: str | None = None
    is_sot_file: bool | None = False
    sot_file_name: str | None = None
    sot_entry_count_hint: int | None = None
    coefficients_version: str | None = None
    timestamp: datetime | None = None


def deliverables_json(deliverables: list) -> str:
    """The ``deliverables_json`` column: the first MAX_STORED_DELIVERABLES, each clipped to MAX_DELIVERABLE_CHARS."""
    return json.dumps([
        text if len(text) <= MAX_DELIVERABLE_CHARS else text[: MAX_DELIVERABLE_CHARS - 3] + "..."
        for text in (str(item) for item in deliverables[:MAX_STORED_DELIVERABLES])
    ])


def estimation_metrics(predicted: int, actual: int) -> tuple[float | None, float | None, bool | None]:
    """``(smape_percent, waste_ratio, underestimated)`` as Autopack stores them; all None unless both > 0."""
    if actual <= 0 or predicted <= 0:
        return None, None, None
    smape = abs(actual - predicted) / max(1.0, (abs(actual) + abs(predicted)) / 2) * 100
    return smape, predicted / actual, actual > predicted


def estimation_row(event: EstimationEvent) -> dict[str, Any]:
    """The ``token_estimation_v2_events`` row for ``event`` (column name -> value), minus ``event_id``."""
    smape, waste, under = estimation_metrics(event.predicted_output_tokens, event.actual_output_tokens)
    now = utc_now()
    return {
        "run_id": event.run_id,
        "phase_id": event.phase_id,
        "timestamp": naive_utc(event.timestamp) or now,
        "category": normalise_category(event.category),
        "complexity": normalise_complexity(event.complexity),
        "deliverable_count": len(event.deliverables),  # the full count, not the stored 20
        "deliverables_json": deliverables_json(event.deliverables),
        "predicted_output_tokens": event.predicted_output_tokens,
        "actual_output_tokens": event.actual_output_tokens,
        "selected_budget": event.selected_budget,
        "actual_max_tokens": event.actual_max_tokens,
        "success": event.success,
        "truncated": event.truncated,
        "stop_reason": event.stop_reason,
        "model": event.model,
        "smape_percent": smape,
        "waste_ratio": waste,
        "underestimated": under,
        "is_truncated_output": event.truncated,
        "api_reference_required": event.api_reference_required,
        "examples_required": event.examples_required,
        "research_required": event.research_required,
        "usage_guide_required": event.usage_guide_required,
        "context_quality": event.context_quality,
        "is_sot_file": event.is_sot_file,
        "sot_file_name": event.sot_file_name,
        "sot_entry_count_hint": event.sot_entry_count_hint,
        "created_at": now,
        "attempt": event.attempt,
        "event_uid": event.event_uid or uuid.uuid4().hex,
        "actual_is_total_tokens": event.actual_is_total_tokens,
        "phase_completed": event.phase_completed,
        "coefficients_version": event.coefficients_version,
    }


def insert_estimation_row(connection: Connection, row: Mapping[str, Any]) -> int:
    """Insert one events row unless its ``event_uid`` is stored already; return rows inserted (0/1)."""
    return insert_ignoring_conflicts(connection, _EVENTS, row, ["event_uid"])


def insert_estimation_rows(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """:func:`insert_estimation_row` of each of ``rows``, a statement per set of columns given; return rows
    inserted."""
    by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    return sum(insert_many_ignoring_conflicts(connection, _EVENTS, same, ["event_uid"]) for same in by_columns.values())


def stored_event_uids(connection: Connection, event_uids: Sequence[str]) -> set[str]:
    """Those of ``event_uids`` an events row has (committed, or written by this transaction)."""
    stored: set[str] = set()
    for chunk in in_chunks(event_uids):
        stored.update(connection.execute(select(_EVENTS.c.event_uid).where(_EVENTS.c.event_uid.in_(chunk))).scalars())
    return stored


# What identifies one escalation decision: the table has no event id of ours, and the timestamp is
# fixed when the row is built, so a replayed row matches the original exactly.
_ESCALATION_KEY = ("run_id", "phase_id", "attempt_index", "reason", "timestamp")


def insert_escalation_row(connection: Connection, row: Mapping[str, Any]) -> int:
    """Insert one escalation row unless the same decision is stored already; return rows inserted (0/1).

    Used by spool replay, where a write that failed on the client may have committed on the server.
    Replays of one spool are serialised by the spool's lock, so check-then-insert cannot race itself.
    """
    return insert_unless_exists(connection, _ESCALATIONS, row, _ESCALATION_KEY)


def _plain_escalation_insert(connection: Connection, row: Mapping[str, Any]) -> int:
    connection.execute(insert(_ESCALATIONS).values(**row))
    return 1


# What spool replay inserts each spooled table's rows with (idempotent: a write that failed on the
# client may have committed on the server).
SPOOL_INSERTERS: spool.Inserters = {
    _EVENTS.name: insert_estimation_row,
    _ESCALATIONS.name: insert_escalation_row,
}


class WriteOutcome(str, Enum):
    """What became of one row handed to a writer."""

    WRITTEN = "written"
    ALREADY_STORED = "already_stored"  # its event_uid was in the table already
    SPOOLED = "spooled"  # the database was unavailable: the row waits in the spool
    TOO_SHORT = "too_short"  # under MIN_VALID_OUTPUT_TOKENS, refused as Autopack's writer does
    NOT_STORED = "not_stored"  # neither written nor spooled: logged, and lost

    @property
    def kept(self) -> bool:
        """In the database or on its way there."""
        return self in (WriteOutcome.WRITTEN, WriteOutcome.ALREADY_STORED, WriteOutcome.SPOOLED)


def _write_or_spool(engine: Engine, table: Table, row: dict[str, Any], inserter: Any, label: str) -> WriteOutcome:
    """Write ``row`` in its own transaction; on a transient failure spool it. Never raises.

    After a successful write, anything spooled earlier for this database is replayed (cheap when
    there is nothing: one ``stat``).
    """
    try:
        with engine.begin() as connection:
            inserted = inserter(connection, row)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raise into the Builder"
        spooled = spool.spool_row(engine, table.name, row, exc) if spool.is_transient_failure(exc) else None
        where = f"; spooled to {spooled} for replay" if spooled else ""
        logger.warning("[%s] Failed to write DB telemetry: %s%s", label, safe_error_text(exc), where)
        return WriteOutcome.SPOOLED if spooled else WriteOutcome.NOT_STORED
    spool.replay_if_pending(engine, SPOOL_INSERTERS)
    return WriteOutcome.WRITTEN if inserted else WriteOutcome.ALREADY_STORED


def store_estimation_event(engine: Engine, event: EstimationEvent | Mapping[str, Any]) -> WriteOutcome:
    """Persist one estimation event whatever ``TELEMETRY_DB_ENABLED`` says, and say what became of it.

    Never raises. A duplicate ``event_uid`` inserts nothing (ALREADY_STORED): replaying an import or a
    spool is harmless.
    """
    try:
        if not isinstance(event, EstimationEvent):
            event = EstimationEvent.model_validate(event)
        if event.actual_output_tokens < MIN_VALID_OUTPUT_TOKENS:
            logger.warning(
                "[TELEMETRY] Skipping invalid event run=%s phase=%s: actual_output_tokens=%d < %d",
                event.run_id, event.phase_id, event.actual_output_tokens, MIN_VALID_OUTPUT_TOKENS,
            )
            return WriteOutcome.TOO_SHORT
        return _write_or_spool(engine, _EVENTS, estimation_row(event), insert_estimation_row, "TokenEstimationV2")
    except Exception as exc:  # noqa: BLE001 - the contract is "never raise into the Builder"
        logger.warning("[TokenEstimationV2] Failed to write DB telemetry: %s", safe_error_text(exc))
        return WriteOutcome.NOT_STORED


def record_estimation_event(
    engine: Engine, event: EstimationEvent | Mapping[str, Any], *, respect_flag: bool = True
) -> bool:
    """Persist one estimation event; ``True`` when it is stored (or already was, by ``event_uid``).

    Returns ``False`` without writing when ``respect_flag`` and telemetry is off, or when the actual
    output is below 50 tokens. Never raises: any failure is logged and reported as ``False``; when the
    database was unavailable the event is also spooled (see the module docstring).
    """
    if respect_flag and not telemetry_enabled():
        return False
    outcome = store_estimation_event(engine, event)
    return outcome in (WriteOutcome.WRITTEN, WriteOutcome.ALREADY_STORED)


def record_escalation_event(engine: Engine, *, respect_flag: bool = False, **decision: Any) -> bool:
    """Persist one token-budget escalation decision; ``True`` when stored. Never raises.

    ``decision`` holds :func:`store_escalation_event`'s keyword arguments. The caller decides whether
    telemetry is on (pass ``respect_flag=True`` to have this function check the flag).
    """
    if respect_flag and not telemetry_enabled():
        return False
    return store_escalation_event(engine, **decision) == WriteOutcome.WRITTEN


def store_escalation_event(
    engine: Engine,
    *,
    run_id: str,
    phase_id: str,
    attempt_index: int,
    reason: str,
    was_truncated: bool,
    output_utilization: float | None,
    escalation_factor: float,
    base_value: int,
    base_source: str,
    retry_max_tokens: int,
    selected_budget: int | None,
    actual_max_tokens: int | None,
    tokens_used: int | None,
    timestamp: datetime | None = None,
) -> WriteOutcome:
    """Persist one token-budget escalation decision whatever the flag says; what became of it. Never raises.

    Autopack's version passed a keyword that is not a column, so its rows never persisted (P14).
    ``attempt_index`` is 1-based; ``output_utilization`` is a percent (0-100).
    """
    try:
        row = {
            "run_id": run_id,
            "phase_id": phase_id,
            "timestamp": naive_utc(timestamp) or utc_now(),
            "attempt_index": attempt_index,
            "reason": reason,
            "was_truncated": was_truncated,
            "output_utilization": output_utilization,
            "escalation_factor": escalation_factor,
            "base_value": base_value,
            "base_source": base_source,
            "retry_max_tokens": retry_max_tokens,
            "selected_budget": selected_budget,
            "actual_max_tokens": actual_max_tokens,
            "tokens_used": tokens_used,
        }
        return _write_or_spool(engine, _ESCALATIONS, row, _plain_escalation_insert, "TokenBudgetEscalation")
    except Exception as exc:  # noqa: BLE001 - best-effort telemetry, as the estimation writer
        logger.warning("[TokenBudgetEscalation] Failed to write DB telemetry: %s", safe_error_text(exc))
        return WriteOutcome.NOT_STORED


@contextmanager
def _connection_for(target: Session | Connection | Engine) -> Iterator[Connection]:
    """A connection for ``target``; only an engine gets its own (committed) transaction."""
    if isinstance(target, Engine):
        with target.begin() as connection:
            yield connection
    elif isinstance(target, Session):
        yield target.connection()
    elif isinstance(target, Connection):
        yield target
    else:
        raise TypeError(f"expected an Engine, Connection or Session, got {type(target).__name__}")


def ensure_run_and_phase(
    session_or_engine: Session | Connection | Engine,
    run_id: str,
    phase_id: str,
    *,
    tier_id: str = "T1",
    phase_name: str | None = None,
    category: str | None = None,
    complexity: str | None = None,
    phase_state: str = "QUEUED",
    run_state: str = "RUN_CREATED",
) -> int:
    """Create the minimal ``runs``/``tiers``/``phases`` rows an event needs, when missing.

    Returns the phase's integer primary key. Existing rows are left exactly as they are. With a
    Session or Connection the caller owns the transaction; with an Engine this commits.
    """
    with _connection_for(session_or_engine) as connection:
        row = PhaseRow(run_id, phase_id, category, complexity, phase_name)
        keys = ensure_phase_rows(connection, [row], tier_id=tier_id, phase_state=phase_state, run_state=run_state)
        return keys[(run_id, phase_id)]


def read_events(engine: Engine, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """All ``token_estimation_v2_events`` (or those of ``run_ids``) as a conformed events frame.

    Only columns the database actually has are selected, so an Autopack database without our
    columns (or without ``actual_max_tokens``) reads fine; missing columns come back as nulls.
    A database without the table gives an empty frame. Rows whose timestamp is not a date are left
    out; :func:`read_events_checked` also names them.
    """
    return read_events_checked(engine, run_ids)[0]


def read_events_checked(engine: Engine, run_ids: Iterable[str] | None = None
                        ) -> tuple[pd.DataFrame, list[UnreadableTimestamp]]:
    """:func:`read_events`, and the rows it left out because their timestamp is not a date (SQLite)."""
    inspector = inspect(engine)
    if not inspector.has_table(_EVENTS.name):
        logger.warning("table %s not found; returning no events", _EVENTS.name)
        return empty_events_frame(), []
    present = {column["name"] for column in inspector.get_columns(_EVENTS.name)}
    by_name = {column.name: column for column in _EVENTS.columns}
    wanted = [name for name in EVENT_COLUMNS if name in present and name in by_name]
    dialect = engine.dialect.name
    statement = select(*(readable_column(by_name[name], dialect) for name in wanted)).order_by(by_name["event_id"])
    if run_ids is not None:
        statement = statement.where(by_name["run_id"].in_(list(run_ids)))
    with engine.connect() as connection:
        result = connection.execute(statement)
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
    unreadable: list[UnreadableTimestamp] = []
    if dialect == "sqlite":
        frame, unreadable = set_aside_in_frame(frame, ["timestamp"])
    return conform_events_frame(frame), unreadable
