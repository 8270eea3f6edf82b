"""Autopack baseline: the seven telemetry tables as Autopack creates them.

Revision: 0001 (first), the schema of Autopack's ``src/autopack/models.py`` without any of our
columns. A database that Autopack already wrote has these tables but no ``alembic_version`` table,
so every table is created only when it is missing: on such a database this revision changes
nothing and merely records that the baseline is there. Downgrade never drops a table, because the
tables (and their rows) may belong to Autopack.

State columns are VARCHAR: Autopack stored enum names in them (native enum types on PostgreSQL,
which an existing database keeps). The definitions are frozen here on purpose instead of being taken
from ``models.py``, so later model edits cannot change what this revision did.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
    ]


def _issue_counters() -> list[sa.Column]:
    return [
        sa.Column("minor_issues_count", sa.Integer(), nullable=False),
        sa.Column("major_issues_count", sa.Integer(), nullable=False),
    ]


def _create_runs() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        *_timestamps(),
        sa.Column("safety_profile", sa.String(), nullable=False),
        sa.Column("run_scope", sa.String(), nullable=False),
        sa.Column("token_cap", sa.Integer(), nullable=False),
        sa.Column("max_phases", sa.Integer(), nullable=False),
        sa.Column("max_duration_minutes", sa.Integer(), nullable=False),
        sa.Column("max_minor_issues_total", sa.Integer(), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("ci_runs_used", sa.Integer(), nullable=False),
        *_issue_counters(),
        sa.Column("promotion_eligible_to_main", sa.String(), nullable=False),
        sa.Column("debt_status", sa.String(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("goal_anchor", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_runs_id", "runs", ["id"])
    op.create_index("ix_runs_state_created", "runs", ["state", "created_at"])


def _create_tiers() -> None:
    op.create_table(
        "tiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tier_id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("tier_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("token_cap", sa.Integer(), nullable=True),
        sa.Column("ci_run_cap", sa.Integer(), nullable=True),
        sa.Column("max_minor_issues_tolerated", sa.Integer(), nullable=True),
        sa.Column("max_major_issues_tolerated", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("ci_runs_used", sa.Integer(), nullable=False),
        *_issue_counters(),
        sa.Column("cleanliness", sa.String(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tiers_id", "tiers", ["id"])
    op.create_index("ix_tiers_tier_id", "tiers", ["tier_id"])


def _create_phases() -> None:
    op.create_table(
        "phases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("tier_id", sa.Integer(), nullable=False),
        sa.Column("phase_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("task_category", sa.String(), nullable=True),
        sa.Column("complexity", sa.String(), nullable=True),
        sa.Column("builder_mode", sa.String(), nullable=True),
        sa.Column("phase_type", sa.String(), nullable=True),
        sa.Column("scope", sa.JSON(), nullable=True),
        sa.Column("max_builder_attempts", sa.Integer(), nullable=True),
        sa.Column("max_auditor_attempts", sa.Integer(), nullable=True),
        sa.Column("incident_token_cap", sa.Integer(), nullable=True),
        sa.Column("builder_attempts", sa.Integer(), nullable=False),
        sa.Column("auditor_attempts", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        *_issue_counters(),
        sa.Column("issue_state", sa.String(), nullable=False),
        sa.Column("quality_level", sa.String(), nullable=True),
        sa.Column("quality_blocked", sa.Boolean(), nullable=False),
        sa.Column("retry_attempt", sa.Integer(), nullable=False),
        sa.Column("revision_epoch", sa.Integer(), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("last_attempt_timestamp", sa.DateTime(), nullable=True),
        sa.Column("last_failure_reason", sa.String(), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tier_id"], ["tiers.id"]),
        sa.PrimaryKeyConstraint("id"),
        # phase_id repeats across runs; the composite FKs of the event tables point here.
        sa.UniqueConstraint("run_id", "phase_id", name="uq_phases_run_id_phase_id"),
    )
    for name, columns in (
        ("ix_phases_id", ["id"]),
        ("ix_phases_phase_id", ["phase_id"]),
        ("ix_phases_run_id", ["run_id"]),
        ("ix_phases_state", ["state"]),
        ("ix_phases_run_state", ["run_id", "state"]),
        ("ix_phases_state_started", ["state", "started_at"]),
    ):
        op.create_index(name, "phases", columns)


def _create_token_estimation_v2_events() -> None:
    table = "token_estimation_v2_events"
    op.create_table(
        table,
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("complexity", sa.String(), nullable=False),
        sa.Column("deliverable_count", sa.Integer(), nullable=False),
        sa.Column("deliverables_json", sa.Text(), nullable=False),
        sa.Column("predicted_output_tokens", sa.Integer(), nullable=False),
        sa.Column("actual_output_tokens", sa.Integer(), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=False),
        sa.Column("actual_max_tokens", sa.Integer(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("stop_reason", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("smape_percent", sa.Float(), nullable=True),
        sa.Column("waste_ratio", sa.Float(), nullable=True),
        sa.Column("underestimated", sa.Boolean(), nullable=True),
        sa.Column("is_truncated_output", sa.Boolean(), nullable=False),
        sa.Column("api_reference_required", sa.Boolean(), nullable=True),
        sa.Column("examples_required", sa.Boolean(), nullable=True),
        sa.Column("research_required", sa.Boolean(), nullable=True),
        sa.Column("usage_guide_required", sa.Boolean(), nullable=True),
        sa.Column("context_quality", sa.String(), nullable=True),
        sa.Column("is_sot_file", sa.Boolean(), nullable=True),
        sa.Column("sot_file_name", sa.String(), nullable=True),
        sa.Column("sot_entry_count_hint", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "phase_id"],
            ["phases.run_id", "phases.phase_id"],
            name="fk_token_est_v2_run_phase",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("event_id"),
    )
    for column in (
        "event_id", "run_id", "phase_id", "timestamp", "category", "complexity", "deliverable_count",
        "success", "truncated", "underestimated", "is_truncated_output", "created_at",
    ):
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_index("ix_telemetry_run_category", table, ["run_id", "category"])
    op.create_index("ix_telemetry_category_timestamp", table, ["category", "timestamp"])


def _create_token_budget_escalation_events() -> None:
    table = "token_budget_escalation_events"
    op.create_table(
        table,
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("attempt_index", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("was_truncated", sa.Boolean(), nullable=False),
        sa.Column("output_utilization", sa.Float(), nullable=True),
        sa.Column("escalation_factor", sa.Float(), nullable=False),
        sa.Column("base_value", sa.Integer(), nullable=False),
        sa.Column("base_source", sa.String(), nullable=False),
        sa.Column("retry_max_tokens", sa.Integer(), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=True),
        sa.Column("actual_max_tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id", "phase_id"],
            ["phases.run_id", "phases.phase_id"],
            name="fk_token_budget_escalation_run_phase",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("event_id"),
    )
    for column in ("event_id", "run_id", "phase_id", "timestamp"):
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_index("ix_escalation_run_timestamp", table, ["run_id", "timestamp"])
    op.create_index("ix_escalation_reason_timestamp", table, ["reason", "timestamp"])


def _create_phase_outcome_events() -> None:
    table = "phase_outcome_events"
    op.create_table(
        table,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.String(), nullable=False),
        sa.Column("phase_type", sa.String(), nullable=True),
        sa.Column("phase_outcome", sa.String(), nullable=False),
        sa.Column("stop_reason", sa.String(), nullable=True),
        sa.Column("stuck_decision_rationale", sa.String(), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("model_used", sa.String(), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=True),
        sa.Column("context_injected", sa.Boolean(), nullable=True),
        sa.Column("context_item_count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # Autopack declares both column-level and named indexes on run_id/phase_id; keep both.
    for name, columns in (
        (f"ix_{table}_run_id", ["run_id"]),
        (f"ix_{table}_phase_id", ["phase_id"]),
        ("ix_phase_outcome_run_id", ["run_id"]),
        ("ix_phase_outcome_phase_id", ["phase_id"]),
        ("ix_phase_outcome_outcome", ["phase_outcome"]),
        ("ix_phase_outcome_timestamp", ["timestamp"]),
        ("ix_phase_outcome_phase_type", ["phase_type"]),
    ):
        op.create_index(name, table, columns)


def _create_generated_tasks() -> None:
    table = "generated_tasks"
    op.create_table(
        table,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=50), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("priority", sa.String(length=20), nullable=False),
        sa.Column("source_insights", sa.JSON(), nullable=True),
        sa.Column("suggested_files", sa.JSON(), nullable=True),
        sa.Column("estimated_effort", sa.String(length=10), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("run_id", sa.String(length=50), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("executed_in_run_id", sa.String(length=50), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("failure_runs", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # unique=True + index=True in Autopack's model yields a unique index, not a separate constraint.
    op.create_index(f"ix_{table}_task_id", table, ["task_id"], unique=True)
    for column in ("status", "priority", "run_id", "created_at"):
        op.create_index(f"ix_{table}_{column}", table, [column])


# Parents before children, so foreign keys always find their target.
_CREATORS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("runs", _create_runs),
    ("tiers", _create_tiers),
    ("phases", _create_phases),
    ("token_estimation_v2_events", _create_token_estimation_v2_events),
    ("token_budget_escalation_events", _create_token_budget_escalation_events),
    ("phase_outcome_events", _create_phase_outcome_events),
    ("generated_tasks", _create_generated_tasks),
)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in _CREATORS:
        if name not in existing:
            create()


def downgrade() -> None:
    # Deliberately empty: the baseline tables may hold Autopack's data, which we never drop.
    pass
