"""The names the CLI, the tests and the benchmarks used before the application layer was split by
concern (issue 14); each is defined in the module named beside it, and new code imports from there.

- collecting: ``collect``, ``DEFAULT_TEMPLATE_PHASES_PER_GROUP``
- seed_files: ``load_coefficients_for``, ``load_prices_for``
- analysis: the window rule, ``SampleSummary``, ``TierMetrics``, ``tier_metrics_document``
- calibrating: ``calibrate``, ``CalibrationOutcome``, ``calibration_economics``
- task_generation: ``improvement_tasks``
- pipeline: the composition of the stages (``analyse``)
"""

from autopack_pipeline.domain.drift import detect_drift
from autopack_pipeline.services.analysis import (
    SampleSummary,
    TierMetrics,
    analysis_window,
    summarise_samples,
    tier_metrics_document,
    window_label,
)
from autopack_pipeline.services.calibrating import CalibrationOutcome, calibrate, calibration_economics
from autopack_pipeline.services.collecting import DEFAULT_TEMPLATE_PHASES_PER_GROUP, collect
from autopack_pipeline.services.seed_files import load_coefficients_for, load_prices_for
from autopack_pipeline.services.task_generation import improvement_tasks
from autopack_pipeline.storage.tasks import TaskRefresh

__all__ = [
    "DEFAULT_TEMPLATE_PHASES_PER_GROUP", "CalibrationOutcome", "SampleSummary", "TaskRefresh", "TierMetrics",
    "analysis_window", "calibrate", "calibration_economics", "collect", "detect_drift", "improvement_tasks",
    "load_coefficients_for", "load_prices_for", "summarise_samples", "tier_metrics_document", "window_label",
]
