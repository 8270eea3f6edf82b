"""Task generation: insights from the metrics, the calibration, the sample counts, the phase outcomes
and drift, turned into stored, deduplicated improvement tasks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.budget_calibration import GroupBudgetProposal
from autopack_pipeline.domain.budget_insights import insights_from_budget_proposals
from autopack_pipeline.domain.outcome_insights import analyse_outcomes, insights_from_outcomes
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.domain.tasks import (
    GeneratedTask,
    Insight,
    generate_tasks,
    insights_from_calibration,
    insights_from_group_metrics,
    insights_from_sample_shortfalls,
    insights_from_tier_metrics,
)
from autopack_pipeline.services.analysis import TierMetrics
from autopack_pipeline.services.calibrating import CalibrationOutcome
from autopack_pipeline.services.tasks_review import refresh_tasks
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline.storage.outcomes import read_phase_outcome_rows
from autopack_pipeline.storage.tasks import TaskRefresh

if TYPE_CHECKING:
    import pandas as pd


def improvement_tasks(
    engine: Engine,
    settings: Settings,
    metrics: TierMetrics | dict[str, Any],
    sample_counts: dict[tuple[str, str], int],
    calibration: CalibrationOutcome | dict[str, Any] | None,
    *,
    min_samples: int = 5,
    extra_insights: list[Insight] | None = None,
    events: pd.DataFrame | EventArrays | None = None,
    source: dict[str, Any] | None = None,
    outcome_window_days: float = 7,
    now: datetime | None = None,
) -> tuple[list[GeneratedTask], TaskRefresh]:
    """Insights from metrics, calibration, clean-sample counts per group, phase outcomes and ``extra_insights`` (drift),
    as tasks; returns (the first ``MAX_TASKS`` tasks, what storing every detected task did: inserted,
    refreshed, reopened, superseded; see :func:`~autopack_pipeline.services.tasks_review.refresh_tasks`).

    With ``events`` the Tier-1 breaches and truncation hot spots are looked for per (category,
    complexity) group, else per category. ``source`` is the provenance stored in every task's evidence
    (see :func:`~autopack_pipeline.domain.tasks.generate_tasks`); its ``dagster_run_id`` also fills
    Autopack's ``run_id`` column.
    """
    if not settings.task_generation_enabled:
        return [], TaskRefresh()
    if not isinstance(metrics, TierMetrics):  # a tier metrics document, as `tier_metrics_document` returns it
        metrics = TierMetrics(metrics)
    tier1 = metrics.tier1
    insights = insights_from_tier_metrics(tier1, scope="overall")
    if events is not None:
        insights += insights_from_group_metrics(as_event_arrays(events),
                                                under_multiplier=tier1.get("under_multiplier") or UNDER_TOLERANCE)
    else:
        for category, block in metrics.strata.get("category", {}).items():
            insights += insights_from_tier_metrics(block, scope=f"category={category}")
    if isinstance(calibration, CalibrationOutcome):
        calibration = calibration.as_dict()
    result = (calibration or {}).get("result")
    if result:
        insights += insights_from_calibration(result["groups"], result["method"])
    insights += insights_from_sample_shortfalls(sample_counts, min_samples)
    # A group whose truncation budget is unidentifiable: a collect-samples task carrying its floor raise
    # (the same subject as a plain shortfall, so the two are one task).
    section = (calibration or {}).get("calibration") or {}
    insights += insights_from_budget_proposals([GroupBudgetProposal(**g) for g in section.get("groups", [])],
                                               min_samples)
    end = now or datetime.now(timezone.utc)
    outcomes = read_phase_outcome_rows(engine, since=end - timedelta(days=outcome_window_days), until=end)
    insights += insights_from_outcomes(analyse_outcomes(outcomes, now=end, window_days=outcome_window_days))
    insights += list(extra_insights or [])
    # Every finding, uncapped: a pending task whose finding is still seen below the MAX_TASKS cut is
    # refreshed, not superseded.
    detected = generate_tasks(insights, max_tasks=None, min_confidence=settings.task_generation_min_confidence,
                              source=source)
    tasks = detected[:settings.task_generation_max_tasks]
    run_id = str((source or {}).get("dagster_run_id") or f"tasks-{end:%Y%m%d-%H%M%S}")[:50]
    stored = refresh_tasks(engine, [task.as_dict() | {"run_id": run_id} for task in detected],
                           max_new=settings.task_generation_max_tasks,
                           detected_by=f"the generation of {end:%Y-%m-%d %H:%M} UTC ({run_id})")
    return tasks, stored
