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

S, T, I, F, B, D, J = sa.String, sa.Text, sa.Integer, sa.Float, sa.Boolean, sa.DateTime, sa.JSON
NN, NULL = False, True  # the ``nullable`` flag
ZERO, NO = "0", sa.false()

# table -> (name, type, nullable, server default or None); in Autopack's column order.
_AUTOPACK_COLUMNS: dict[str, tuple[tuple[str, type, bool, object], ...]] = {
    "runs": (
        ("id", S, NN, None), ("state", S, NN, "RUN_CREATED"), ("created_at", D, NN, None),
        ("updated_at", D, NN, None), ("started_at", D, NULL, None), ("completed_at", D, NULL, None),
        ("safety_profile", S, NN, "normal"), ("run_scope", S, NN, "multi_tier"), ("token_cap", I, NN, "5000000"),
        ("max_phases", I, NN, "25"), ("max_duration_minutes", I, NN, "120"),
        ("max_minor_issues_total", I, NULL, None), ("tokens_used", I, NN, ZERO), ("ci_runs_used", I, NN, ZERO),
        ("minor_issues_count", I, NN, ZERO), ("major_issues_count", I, NN, ZERO),
        ("promotion_eligible_to_main", S, NN, "false"), ("debt_status", S, NULL, None),
        ("failure_reason", T, NULL, None), ("goal_anchor", T, NULL, None),
    ),
    "tiers": (
        ("id", I, NN, None), ("tier_id", S, NN, None), ("run_id", S, NN, None), ("tier_index", I, NN, None),
        ("name", S, NN, None), ("description", T, NULL, None), ("state", S, NN, "PENDING"),
        ("token_cap", I, NULL, None), ("ci_run_cap", I, NULL, None), ("max_minor_issues_tolerated", I, NULL, None),
        ("max_major_issues_tolerated", I, NN, ZERO), ("tokens_used", I, NN, ZERO), ("ci_runs_used", I, NN, ZERO),
        ("minor_issues_count", I, NN, ZERO), ("major_issues_count", I, NN, ZERO), ("cleanliness", S, NN, "clean"),
        ("created_at", D, NN, None), ("updated_at", D, NN, None), ("started_at", D, NULL, None),
        ("completed_at", D, NULL, None),
    ),
    "phases": (
        ("id", I, NN, None), ("phase_id", S, NN, None), ("run_id", S, NN, None), ("tier_id", I, NN, None),
        ("phase_index", I, NN, None), ("name", S, NN, None), ("description", T, NULL, None),
        ("state", S, NN, "QUEUED"), ("task_category", S, NULL, None), ("complexity", S, NULL, None),
        ("builder_mode", S, NULL, None), ("phase_type", S, NULL, None), ("scope", J, NULL, None),
        ("deployment_config", J, NULL, None), ("max_builder_attempts", I, NULL, None),
        ("max_auditor_attempts", I, NULL, None), ("incident_token_cap", I, NULL, None),
        ("builder_attempts", I, NN, ZERO), ("auditor_attempts", I, NN, ZERO), ("tokens_used", I, NN, ZERO),
        ("minor_issues_count", I, NN, ZERO), ("major_issues_count", I, NN, ZERO),
        ("issue_state", S, NN, "no_issues"), ("quality_level", S, NULL, None), ("quality_blocked", B, NN, NO),
        ("retry_attempt", I, NN, ZERO), ("revision_epoch", I, NN, ZERO), ("escalation_level", I, NN, ZERO),
        ("last_attempt_timestamp", D, NULL, None), ("last_failure_reason", S, NULL, None),
        ("created_at", D, NN, None), ("updated_at", D, NN, None), ("started_at", D, NULL, None),
        ("completed_at", D, NULL, None),
    ),
    "token_estimation_v2_events": (
        ("event_id", I, NN, None), ("run_id", S, NN, None), ("phase_id", S, NN, None), ("timestamp", D, NN, None),
        ("category", S, NN, None), ("complexity", S, NN, None), ("deliverable_count", I, NN, None),
        ("deliverables_json", T, NN, None), ("predicted_output_tokens", I, NN, None),
        ("actual_output_tokens", I, NN, None), ("selected_budget", I, NN, None),
        ("actual_max_tokens", I, NULL, None), ("success", B, NN, None), ("truncated", B, NN, NO),
        ("stop_reason", S, NULL, None), ("model", S, NN, None), ("smape_percent", F, NULL, None),
        ("waste_ratio", F, NULL, None), ("underestimated", B, NULL, None), ("is_truncated_output", B, NN, NO),
        ("api_reference_required", B, NULL, None), ("examples_required", B, NULL, None),
        ("research_required", B, NULL, None), ("usage_guide_required", B, NULL, None),
        ("context_quality", S, NULL, None), ("is_sot_file", B, NULL, None), ("sot_file_name", S, NULL, None),
        ("sot_entry_count_hint", I, NULL, None), ("created_at", D, NN, None),
    ),
    "token_budget_escalation_events": (
        ("event_id", I, NN, None), ("run_id", S, NN, None), ("phase_id", S, NN, None), ("timestamp", D, NN, None),
        ("attempt_index", I, NN, None), ("reason", S, NN, None), ("was_truncated", B, NN, NO),
        ("output_utilization", F, NULL, None), ("escalation_factor", F, NN, None), ("base_value", I, NN, None),
        ("base_source", S, NN, None), ("retry_max_tokens", I, NN, None), ("selected_budget", I, NULL, None),
        ("actual_max_tokens", I, NULL, None), ("tokens_used", I, NULL, None),
    ),
    "llm_usage_events": (
        ("id", I, NN, None), ("provider", S, NN, None), ("model", S, NN, None), ("run_id", S, NULL, None),
        ("phase_id", S, NULL, None), ("role", S, NN, None), ("total_tokens", I, NN, None),
        ("prompt_tokens", I, NULL, None), ("completion_tokens", I, NULL, None), ("created_at", D, NN, None),
        ("client_id", S, NULL, None), ("is_doctor_call", B, NN, NO), ("doctor_model", S, NULL, None),
        ("doctor_action", S, NULL, None), ("phase_type", S, NULL, None), ("intent", S, NULL, None),
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
