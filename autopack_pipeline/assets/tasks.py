"""Generated tasks: insights from metrics and calibration as deduplicated improvement tasks."""

from typing import Any

import dagster as dg
import pandas as pd

from autopack_pipeline import workflows
from autopack_pipeline.assets.metadata import markdown_table
from autopack_pipeline.resources import TelemetryDatabase
from autopack_pipeline.settings import load_settings


@dg.asset(group_name="tasks", kinds={"python", "sqlite"})
def generated_tasks(
    telemetry_db: TelemetryDatabase,
    success_samples: pd.DataFrame,
    tier_metrics: dict[str, Any],
    calibration_recommendations: dict[str, Any],
) -> dg.MaterializeResult:
    """Improvement tasks from Tier-1 breaches, actionable recommendations and groups short of samples,
    stored in generated_tasks. A task's id is a fingerprint of its finding, so a finding seen again
    is not stored twice. Coefficient changes always wait for a person.
    """
    tasks, stored = workflows.improvement_tasks(
        telemetry_db.engine(), load_settings(), tier_metrics, success_samples, calibration_recommendations
    )
    return dg.MaterializeResult(
        value=[task.as_dict() for task in tasks],
        metadata={
            "tasks_generated": len(tasks),
            "tasks_new": stored,
            "tasks": dg.MetadataValue.md(
                markdown_table(
                    ["task", "priority", "kind", "confidence", "title"],
                    [[t.task_id, t.priority, t.kind, t.confidence, t.title] for t in tasks],
                )
            ),
        },
    )
