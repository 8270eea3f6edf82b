"""Every column of Autopack's models, and its ``llm_usage_events`` table.

Revision: 0003 (follows 0002).

Autopack's ORM selects every mapped column of a table, so its scripts (``calibrate_token_estimator.py``,
``db_identity_check.py``, ``export_token_estimation_telemetry.py``) fail on a database lacking any.
Autopack's own ``autopack.db`` predates some of them (``phases.phase_type``/``deployment_config``,
``actual_max_tokens``, the SOT columns), and revision 0002 stamped such a database without adding the
SOT columns. This revision adds each column below that a table lacks, judged by the live columns
(never the stamp), so it also repairs a database that 0002 already stamped and does nothing to a
column already present. ``llm_usage_events`` is created when missing.

The column list is Autopack's models at hshk99/Autopack c81c7189, frozen here on purpose. Server
defaults are Autopack's Python defaults: a NOT NULL column added to a table with rows needs a value
for them; one without a default is added nullable (see ``add_missing_columns``). Downgrade removes
nothing: these columns and the table belong to Autopack and may hold its data.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autopack_pipeline.storage.migrate import add_missing_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Str, Text, Int, Float, Bool, Time, Json = sa.String, sa.Text, sa.Integer, sa.Float, sa.Boolean, sa.DateTime, sa.JSON
NN, NULL = False, True  # the ``nullable`` flag
ZERO, NO = "0", sa.false()

# table -> (name, type, nullable, server default or None); in Autopack's column order.
_AUTOPACK_COLUMNS: dict[str, tuple[tuple[str, type, bool, object], ...]] = {
    "runs": (
        ("id", Str, NN, None), ("state", Str, NN, "RUN_CREATED"), ("created_at", Time, NN, None),
        ("updated_at", Time, NN, None), ("started_at", Time, NULL, None), ("completed_at", Time, NULL, None),
        ("safety_profile", Str, NN, "normal"), ("run_scope", Str, NN, "multi_tier"), ("token_cap", Int, NN, "5000000"),
        ("max_phases", Int, NN, "25"), ("max_duration_minutes", Int, NN, "120"),
        ("max_minor_issues_total", Int, NULL, None), ("tokens_used", Int, NN, ZERO), ("ci_runs_used", Int, NN, ZERO),
        ("minor_issues_count", Int, NN, ZERO), ("major_issues_count", Int, NN, ZERO),
        ("promotion_eligible_to_main", Str, NN, "false"), ("debt_status", Str, NULL, None),
        ("failure_reason", Text, NULL, None), ("goal_anchor", Text, NULL, None),
    ),
    "tiers": (
        ("id", Int, NN, None), ("tier_id", Str, NN, None), ("run_id", Str, NN, None), ("tier_index", Int, NN, None),
        ("name", Str, NN, None), ("description", Text, NULL, None), ("state", Str, NN, "PENDING"),
        ("token_cap", Int, NULL, None), ("ci_run_cap", Int, NULL, None),
        ("max_minor_issues_tolerated", Int, NULL, None),
        ("max_major_issues_tolerated", Int, NN, ZERO), ("tokens_used", Int, NN, ZERO), ("ci_runs_used", Int, NN, ZERO),
        ("minor_issues_count", Int, NN, ZERO), ("major_issues_count", Int, NN, ZERO), ("cleanliness", Str, NN, "clean"),
        ("created_at", Time, NN, None), ("updated_at", Time, NN, None), ("started_at", Time, NULL, None),
        ("completed_at", Time, NULL, None),
    ),
    "phases": (
        ("id", Int, NN, None), ("phase_id", Str, NN, None), ("run_id", Str, NN, None), ("tier_id", Int, NN, None),
        ("phase_index", Int, NN, None), ("name", Str, NN, None), ("description", Text, NULL, None),
        ("state", Str, NN, "QUEUED"), ("task_category", Str, NULL, None), ("complexity", Str, NULL, None),
        ("builder_mode", Str, NULL, None), ("phase_type", Str, NULL, None), ("scope", Json, NULL, None),
        ("deployment_config", Json, NULL, None), ("max_builder_attempts", Int, NULL, None),
        ("max_auditor_attempts", Int, NULL, None), ("incident_token_cap", Int, NULL, None),
        ("builder_attempts", Int, NN, ZERO), ("auditor_attempts", Int, NN, ZERO), ("tokens_used", Int, NN, ZERO),
        ("minor_issues_count", Int, NN, ZERO), ("major_issues_count", Int, NN, ZERO),
        ("issue_state", Str, NN, "no_issues"), ("quality_level", Str, NULL, None), ("quality_blocked", Bool, NN, NO),
        ("retry_attempt", Int, NN, ZERO), ("revision_epoch", Int, NN, ZERO), ("escalation_level", Int, NN, ZERO),
        ("last_attempt_timestamp", Time, NULL, None), ("last_failure_reason", Str, NULL, None),
        ("created_at", Time, NN, None), ("updated_at", Time, NN, None), ("started_at", Time, NULL, None),
        ("completed_at", Time, NULL, None),
    ),
    "token_estimation_v2_events": (
        ("event_id", Int, NN, None), ("run_id", Str, NN, None), ("phase_id", Str, NN, None),
        ("timestamp", Time, NN, None),
        ("category", Str, NN, None), ("complexity", Str, NN, None), ("deliverable_count", Int, NN, None),
        ("deliverables_json", Text, NN, None), ("predicted_output_tokens", Int, NN, None),
        ("actual_output_tokens", Int, NN, None), ("selected_budget", Int, NN, None),
        ("actual_max_tokens", Int, NULL, None), ("success", Bool, NN, None), ("truncated", Bool, NN, NO),
        ("stop_reason", Str, NULL, None), ("model", Str, NN, None), ("smape_percent", Float, NULL, None),
        ("waste_ratio", Float, NULL, None), ("underestimated", Bool, NULL, None), ("is_truncated_output", Bool, NN, NO),
        ("api_reference_required", Bool, NULL, None), ("examples_required", Bool, NULL, None),
        ("research_required", Bool, NULL, None), ("usage_guide_required", Bool, NULL, None),
        ("context_quality", Str, NULL, None), ("is_sot_file", Bool, NULL, None), ("sot_file_name", Str, NULL, None),
        ("sot_entry_count_hint", Int, NULL, None), ("created_at", Time, NN, None),
    ),
    "token_budget_escalation_events": (
        ("event_id", Int, NN, None), ("run_id", Str, NN, None), ("phase_id", Str, NN, None),
        ("timestamp", Time, NN, None),
        ("attempt_index", Int, NN, None), ("reason", Str, NN, None), ("was_truncated", Bool, NN, NO),
        ("output_utilization", Float, NULL, None), ("escalation_factor", Float, NN, None),
        ("base_value", Int, NN, None),
        ("base_source", Str, NN, None), ("retry_max_tokens", Int, NN, None), ("selected_budget", Int, NULL, None),
        ("actual_max_tokens", Int, NULL, None), ("tokens_used", Int, NULL, None),
    ),
    "llm_usage_events": (
        ("id", Int, NN, None), ("provider", Str, NN, None), ("model", Str, NN, None), ("run_id", Str, NULL, None),
        ("phase_id", Str, NULL, None), ("role", Str, NN, None), ("total_tokens", Int, NN, None),
        ("prompt_tokens", Int, NULL, None), ("completion_tokens", Int, NULL, None), ("created_at", Time, NN, None),
        ("client_id", Str, NULL, None), ("is_doctor_call", Bool, NN, NO), ("doctor_model", Str, NULL, None),
        ("doctor_action", Str, NULL, None), ("phase_type", Str, NULL, None), ("intent", Str, NULL, None),
    ),
}


def _columns(table: str) -> list[sa.Column]:
    return [sa.Column(name, kind(), nullable=nullable, server_default=default)
            for name, kind, nullable, default in _AUTOPACK_COLUMNS[table]]


def _create_llm_usage_events() -> None:
    table = "llm_usage_events"
    # Only ``id`` is the key; the other columns as Autopack's model has them, without server defaults
    # (Autopack's writer fills them, and we never write this table).
    columns = [sa.Column(name, kind(), nullable=nullable) for name, kind, nullable, _default in
               _AUTOPACK_COLUMNS[table]]
    op.create_table(table, *columns, sa.PrimaryKeyConstraint("id"))
    op.create_index(f"ix_{table}_run_id", table, ["run_id"])
    op.create_index(f"ix_{table}_created_at", table, ["created_at"])


def upgrade() -> None:
    if "llm_usage_events" not in sa.inspect(op.get_bind()).get_table_names():
        _create_llm_usage_events()
    add_missing_columns(op, {table: _columns(table) for table in _AUTOPACK_COLUMNS})


def downgrade() -> None:
    # Deliberately empty: the columns and the table are Autopack's and may hold its data.
    pass
