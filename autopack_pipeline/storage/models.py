"""SQLAlchemy models for the telemetry tables, with Autopack's names, types and constraints.

A database written by Autopack must open here unchanged and one written by us must stay readable by
Autopack's scripts, so table names, column names, nullability, Python-side defaults, index names and
constraint names follow Autopack's ``src/autopack/models.py``: every column of Autopack's models (as of
hshk99/Autopack c81c7189) is here, because Autopack's ORM selects every mapped column and fails on a
database lacking one. Everything we add is nullable and is marked "ours" below; migration 0002 adds
exactly those columns, 0003 any of Autopack's that an older database lacks.

Enum-like state columns are plain strings: Autopack stores enum *names* ("QUEUED", "DONE_SUCCESS"),
and on PostgreSQL it created native enum types for them (see :class:`StateString`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, synonym
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

# The eight tables of the telemetry schema, parents before children: named in model_columns, where
# opening a database reads them without these models.
from autopack_pipeline.storage.model_columns import TELEMETRY_TABLES  # noqa: F401 (re-exported)


def utc_now() -> datetime:
    """Current UTC time without tzinfo.

    Autopack's columns are ``DateTime`` without time zone. Handing PostgreSQL an aware value would
    make it convert through the session time zone; naive UTC is stored as-is on both backends.
    """
    return datetime.now(timezone.utc).replace(tzinfo=None)


def naive_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as the columns hold it: naive UTC. Aware values are converted, naive ones taken as UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


class _UncastVarchar(UserDefinedType):
    """VARCHAR whose bound parameters carry no ``::VARCHAR`` cast (see :class:`StateString`)."""

    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def get_col_spec(self, **_kw: Any) -> str:
        return "VARCHAR" if self.length is None else f"VARCHAR({self.length})"


class StateString(TypeDecorator):
    """A string column that also accepts Autopack's native PostgreSQL enum columns.

    SQLAlchemy's psycopg dialect renders every string parameter as ``%(x)s::VARCHAR``; PostgreSQL
    refuses to store a VARCHAR in an enum column (``runstate``, ``phasestate``, ...) or compare one
    with it. Without the cast psycopg sends the value untyped and the server coerces it to whatever
    the column is, so one model works for our VARCHAR columns and Autopack's enum columns alike.
    """

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return _UncastVarchar(self.impl.length)
        return dialect.type_descriptor(self.impl)


class Base(DeclarativeBase):
    """Declarative base of the telemetry schema (Autopack's tables)."""


class Run(Base):
    """An Autopack run (``runs``)."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String, primary_key=True, index=True)
    run_id = synonym("id")  # Autopack's legacy spelling of the key
    state: Mapped[str] = mapped_column(StateString, nullable=False, default="RUN_CREATED")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, onupdate=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    safety_profile: Mapped[str] = mapped_column(String, nullable=False, default="normal")
    run_scope: Mapped[str] = mapped_column(String, nullable=False, default="multi_tier")
    token_cap: Mapped[int] = mapped_column(Integer, nullable=False, default=5_000_000)
    max_phases: Mapped[int] = mapped_column(Integer, nullable=False, default=25)
    max_duration_minutes: Mapped[int] = mapped_column(Integer, nullable=False, default=120)
    max_minor_issues_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ci_runs_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    minor_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    major_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    promotion_eligible_to_main: Mapped[str] = mapped_column(String, nullable=False, default="false")
    debt_status: Mapped[str | None] = mapped_column(String, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    goal_anchor: Mapped[str | None] = mapped_column(Text, nullable=True)


class Tier(Base):
    """A tier grouping phases of a run (``tiers``); ``id`` is an integer surrogate key."""

    __tablename__ = "tiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    tier_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    run_id: Mapped[str] = mapped_column(String, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    tier_index: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String, nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(StateString, nullable=False, default="PENDING")
    token_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ci_run_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_minor_issues_tolerated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_major_issues_tolerated: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    tokens_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ci_runs_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    minor_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    major_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cleanliness: Mapped[str] = mapped_column(String, nullable=False, default="clean")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, onupdate=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Phase(Base):
    """A phase of a run (``phases``). ``phase_id`` is unique per run only, hence the composite key."""

    __tablename__ = "phases"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", name="uq_phases_run_id_phase_id"),
        Index("ix_phases_run_state", "run_id", "state"),
        Index("ix_phases_state_started", "state", "started_at"),
        # Several new phases in one flush would otherwise go out as PostgreSQL's batched
        # "INSERT ... SELECT p0::INTEGER, p7::VARCHAR ... FROM (VALUES ...)", whose VARCHAR cast
        # Autopack's native ``phasestate`` enum column refuses. Without implicit RETURNING each id
        # comes from the SERIAL sequence and the rows are inserted with plain parameters.
        {"implicit_returning": False},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    phase_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    run_id: Mapped[str] = mapped_column(
        String, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    tier_id: Mapped[int] = mapped_column(Integer, ForeignKey("tiers.id"), nullable=False)
    phase_index: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String, nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(StateString, nullable=False, default="QUEUED", index=True)
    task_category: Mapped[str | None] = mapped_column(String, nullable=True)
    complexity: Mapped[str | None] = mapped_column(String, nullable=True)
    builder_mode: Mapped[str | None] = mapped_column(String, nullable=True)
    phase_type: Mapped[str | None] = mapped_column(String, nullable=True)
    scope: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    deployment_config: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    max_builder_attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_auditor_attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    incident_token_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    builder_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    auditor_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    tokens_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    minor_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    major_issues_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    issue_state: Mapped[str] = mapped_column(String, nullable=False, default="no_issues")
    quality_level: Mapped[str | None] = mapped_column(String, nullable=True)
    quality_blocked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    retry_attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    revision_epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    escalation_level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_attempt_timestamp: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_failure_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, onupdate=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class TokenEstimationV2Event(Base):
    """One Builder call's predicted vs actual output tokens (``token_estimation_v2_events``)."""

    __tablename__ = "token_estimation_v2_events"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "phase_id"],
            ["phases.run_id", "phases.phase_id"],
            ondelete="CASCADE",
            name="fk_token_est_v2_run_phase",
        ),
        Index("ix_telemetry_run_category", "run_id", "category"),
        Index("ix_telemetry_category_timestamp", "category", "timestamp"),
    )

    id: Mapped[int] = mapped_column("event_id", Integer, primary_key=True, index=True)
    run_id: Mapped[str] = mapped_column(
        String, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    phase_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, index=True)
    category: Mapped[str] = mapped_column(String, nullable=False, index=True)
    complexity: Mapped[str] = mapped_column(String, nullable=False, index=True)
    deliverable_count: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    deliverables_json: Mapped[str] = mapped_column(Text, nullable=False)
    predicted_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    success: Mapped[bool] = mapped_column(Boolean, nullable=False, index=True)
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
    stop_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    model: Mapped[str] = mapped_column(String, nullable=False)
    smape_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    waste_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    underestimated: Mapped[bool | None] = mapped_column(Boolean, nullable=True, index=True)
    is_truncated_output: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
    api_reference_required: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    examples_required: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    research_required: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    usage_guide_required: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    context_quality: Mapped[str | None] = mapped_column(String, nullable=True)
    is_sot_file: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=False)
    sot_file_name: Mapped[str | None] = mapped_column(String, nullable=True)
    sot_entry_count_hint: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, index=True)
    # Ours (migration 0002), all nullable so Autopack's writer keeps working against our schema.
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Stable id for idempotent import/replay; NULLs do not collide in a unique index.
    event_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)
    # P10: rows whose "actual" is total (input+output) tokens because output tokens were unknown.
    actual_is_total_tokens: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # P12: whether the phase reached COMPLETE, as opposed to ``success`` (the Builder call parsed).
    phase_completed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Migration 0005: the coefficient file version that predicted this call, so calibration can
    # re-express old predictions under the coefficients in force instead of compounding multipliers.
    coefficients_version: Mapped[str | None] = mapped_column(String, nullable=True)


class TokenBudgetEscalationEvent(Base):
    """An executor decision to retry a phase with a larger ``max_tokens`` (``token_budget_escalation_events``)."""

    __tablename__ = "token_budget_escalation_events"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "phase_id"],
            ["phases.run_id", "phases.phase_id"],
            ondelete="CASCADE",
            name="fk_token_budget_escalation_run_phase",
        ),
        Index("ix_escalation_run_timestamp", "run_id", "timestamp"),
        Index("ix_escalation_reason_timestamp", "reason", "timestamp"),
    )

    id: Mapped[int] = mapped_column("event_id", Integer, primary_key=True, index=True)
    run_id: Mapped[str] = mapped_column(
        String, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    phase_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, index=True)
    attempt_index: Mapped[int] = mapped_column(Integer, nullable=False)  # 1-based
    reason: Mapped[str] = mapped_column(String, nullable=False)  # "truncation" | "utilization"
    was_truncated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    output_utilization: Mapped[float | None] = mapped_column(Float, nullable=True)  # percent, 0-100
    escalation_factor: Mapped[float] = mapped_column(Float, nullable=False)
    base_value: Mapped[int] = mapped_column(Integer, nullable=False)
    base_source: Mapped[str] = mapped_column(String, nullable=False)
    retry_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actual_max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_used: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PhaseOutcomeEvent(Base):
    """How a phase ended (``phase_outcome_events``); Autopack's task generator reads it. No FK by design."""

    __tablename__ = "phase_outcome_events"
    __table_args__ = (
        Index("ix_phase_outcome_run_id", "run_id"),
        Index("ix_phase_outcome_phase_id", "phase_id"),
        Index("ix_phase_outcome_outcome", "phase_outcome"),
        Index("ix_phase_outcome_timestamp", "timestamp"),
        Index("ix_phase_outcome_phase_type", "phase_type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    phase_id: Mapped[str] = mapped_column(String, nullable=False, index=True)
    phase_type: Mapped[str | None] = mapped_column(String, nullable=True)
    phase_outcome: Mapped[str] = mapped_column(StateString, nullable=False)  # SUCCESS/FAILED/TIMEOUT/STUCK
    stop_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    stuck_decision_rationale: Mapped[str | None] = mapped_column(String, nullable=True)
    tokens_used: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_used: Mapped[str | None] = mapped_column(String, nullable=True)
    timestamp: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, default=utc_now)
    context_injected: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    context_item_count: Mapped[int | None] = mapped_column(Integer, nullable=True)


class GeneratedTask(Base):
    """An improvement task derived from telemetry (``generated_tasks``, Autopack's GeneratedTaskModel)."""

    __tablename__ = "generated_tasks"
    __table_args__ = (
        Index("ix_generated_tasks_status", "status"),
        Index("ix_generated_tasks_priority", "priority"),
        Index("ix_generated_tasks_run_id", "run_id"),
        Index("ix_generated_tasks_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(50), unique=True, nullable=False, index=True)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[str] = mapped_column(String(20), nullable=False, default="medium")
    source_insights: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    suggested_files: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    estimated_effort: Mapped[str | None] = mapped_column(String(10), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="pending")
    run_id: Mapped[str | None] = mapped_column(String(50), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    executed_in_run_id: Mapped[str | None] = mapped_column(String(50), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    failure_runs: Mapped[Any | None] = mapped_column(JSON, nullable=True, default=list)
    # Ours (migration 0002): Autopack computed these and then dropped them for want of columns.
    requires_approval: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    estimated_cost: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str | None] = mapped_column(String, nullable=True)
    evidence: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Content fingerprint; Autopack's random task ids could not dedup across runs.
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class LlmUsageEvent(Base):
    """Tokens of one LLM call as Autopack's usage recorder logs them (``llm_usage_events``).

    We never write it; it exists because Autopack's ``db_identity_check.py`` counts its rows and
    Autopack's writer expects it. No foreign keys: Autopack logs calls outside any run too.
    """

    __tablename__ = "llm_usage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String, nullable=False)
    model: Mapped[str] = mapped_column(String, nullable=False)
    run_id: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    phase_id: Mapped[str | None] = mapped_column(String, nullable=True)
    role: Mapped[str] = mapped_column(String, nullable=False)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now, index=True)
    client_id: Mapped[str | None] = mapped_column(String, nullable=True)
    is_doctor_call: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    doctor_model: Mapped[str | None] = mapped_column(String, nullable=True)
    doctor_action: Mapped[str | None] = mapped_column(String, nullable=True)
    phase_type: Mapped[str | None] = mapped_column(String, nullable=True)
    intent: Mapped[str | None] = mapped_column(String, nullable=True)
