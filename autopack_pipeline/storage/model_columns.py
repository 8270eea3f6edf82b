"""The telemetry tables and the columns the models give each, spelled out so that opening a database
(every command, every asset) checks its schema without importing SQLAlchemy's ORM and the models:
seven hundredths of a second of ``calibrate``'s start. ``test_migrations`` checks they are the models';
a new column goes into the model and here."""

from __future__ import annotations

TELEMETRY_TABLES: tuple[str, ...] = (
    "runs",
    "tiers",
    "phases",
    "token_estimation_v2_events",
    "token_budget_escalation_events",
    "phase_outcome_events",
    "generated_tasks",
    "llm_usage_events",
)
"""The eight tables of the telemetry schema, parents before children."""

MODEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "id", "state", "created_at", "updated_at", "started_at", "completed_at", "safety_profile", "run_scope",
        "token_cap", "max_phases", "max_duration_minutes", "max_minor_issues_total", "tokens_used", "ci_runs_used",
        "minor_issues_count", "major_issues_count", "promotion_eligible_to_main", "debt_status", "failure_reason",
        "goal_anchor",
    ),
    "tiers": (
        "id", "tier_id", "run_id", "tier_index", "name", "description", "state", "token_cap", "ci_run_cap",
        "max_minor_issues_tolerated", "max_major_issues_tolerated", "tokens_used", "ci_runs_used",
        "minor_issues_count", "major_issues_count", "cleanliness", "created_at", "updated_at", "started_at",
        "completed_at",
    ),
    "phases": (
        "id", "phase_id", "run_id", "tier_id", "phase_index", "name", "description", "state", "task_category",
        "complexity", "builder_mode", "phase_type", "scope", "deployment_config", "max_builder_attempts",
        "max_auditor_attempts", "incident_token_cap", "builder_attempts", "auditor_attempts", "tokens_used",
        "minor_issues_count", "major_issues_count", "issue_state", "quality_level", "quality_blocked",
        "retry_attempt", "revision_epoch", "escalation_level", "last_attempt_timestamp", "last_failure_reason",
        "created_at", "updated_at", "started_at", "completed_at",
    ),
    "token_estimation_v2_events": (
        "event_id", "run_id", "phase_id", "timestamp", "category", "complexity", "deliverable_count",
        "deliverables_json", "predicted_output_tokens", "actual_output_tokens", "selected_budget",
        "actual_max_tokens", "success", "truncated", "stop_reason", "model", "smape_percent", "waste_ratio",
        "underestimated", "is_truncated_output", "api_reference_required", "examples_required", "research_required",
        "usage_guide_required", "context_quality", "is_sot_file", "sot_file_name", "sot_entry_count_hint",
        "created_at", "attempt", "event_uid", "actual_is_total_tokens", "phase_completed", "coefficients_version",
    ),
    "token_budget_escalation_events": (
        "event_id", "run_id", "phase_id", "timestamp", "attempt_index", "reason", "was_truncated",
        "output_utilization", "escalation_factor", "base_value", "base_source", "retry_max_tokens",
        "selected_budget", "actual_max_tokens", "tokens_used",
    ),
    "phase_outcome_events": (
        "id", "run_id", "phase_id", "phase_type", "phase_outcome", "stop_reason", "stuck_decision_rationale",
        "tokens_used", "duration_seconds", "model_used", "timestamp", "context_injected", "context_item_count",
    ),
    "generated_tasks": (
        "id", "task_id", "title", "description", "priority", "source_insights", "suggested_files",
        "estimated_effort", "created_at", "status", "run_id", "completed_at", "executed_in_run_id", "updated_at",
        "failure_reason", "retry_count", "max_retries", "failure_runs", "requires_approval", "estimated_cost",
        "kind", "evidence", "confidence", "fingerprint",
    ),
    "llm_usage_events": (
        "id", "provider", "model", "run_id", "phase_id", "role", "total_tokens", "prompt_tokens",
        "completion_tokens", "created_at", "client_id", "is_doctor_call", "doctor_model", "doctor_action",
        "phase_type", "intent",
    ),
}
"""Per table, its columns in the models' order."""
