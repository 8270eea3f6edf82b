"""What every calibration method returns (DESIGN §7), and the median method's wording and confidence.

Every method returns the same :class:`CalibrationResult`: the fields every method shares live on
:class:`GroupCalibration`, and method-specific figures (a coverage quantile, a shrinkage weight) go in
its ``method_details``. Nothing here edits the coefficient file; a person applies a recommendation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autopack_pipeline.domain.targets import DECREASE_BELOW, INCREASE_ABOVE

AUTOPACK_MEDIAN = "autopack-median"
DEFAULT_CONFIDENCE_THRESHOLD = 0.7
# Below 12 samples the sample-size half of the confidence score is not yet full.
FULL_CONFIDENCE_SAMPLES = 12


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GroupCalibration(_Frozen):
    """The figures for one (category, complexity) group with enough samples."""

    category: str
    complexity: str
    sample_count: int
    avg_actual: float
    avg_estimated: float
    avg_ratio: float
    median_ratio: float
    min_ratio: float
    max_ratio: float
    ratio_std: float
    confidence: float
    proposed_multiplier: float
    median_budget_waste: float | None
    p90_budget_waste: float | None
    avg_selected_budget: float | None
    actionable: bool
    action: str
    method_details: dict[str, Any] = Field(default_factory=dict)


class BelowThresholdGroup(_Frozen):
    """A group with fewer samples than the method needs, and how many more it needs."""

    category: str
    complexity: str
    sample_count: int
    needed: int

    @property
    def note(self) -> str:
        return f"{self.sample_count} samples (need {self.needed} more)"


class Provenance(_Frozen):
    """What an auditor needs to walk from a recommendation back to its events (DESIGN §7)."""

    event_id_min: int | None = None
    event_id_max: int | None = None
    time_window_start: datetime | None = None
    time_window_end: datetime | None = None
    samples_kept: int = 0
    samples_excluded: int = 0
    exclusions: dict[str, int] = Field(default_factory=dict)
    coefficient_file_version: str | None = None
    dagster_run_id: str | None = None
    forced: bool = False
    dedup: bool | None = None
    run_ids: list[str] | None = None
    database: str | None = None
    gate_summary: str | None = None
    # Which coefficient versions' events calibration read, and why (domain.calibration_window).
    window: dict[str, Any] | None = None


class CalibrationResult(_Frozen):
    """What a calibration method proposes, for every group, and where it came from."""

    method: str
    parameters: dict[str, Any]
    groups: list[GroupCalibration]
    below_threshold: list[BelowThresholdGroup]
    provenance: Provenance

    @property
    def confidence_threshold(self) -> float:
        return float(self.parameters.get("confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD))

    @property
    def actionable_groups(self) -> list[GroupCalibration]:
        """Groups at or above the confidence threshold, most confident first."""
        chosen = [g for g in self.groups if g.actionable]
        return sorted(chosen, key=lambda g: (-g.confidence, g.category, g.complexity))

    @property
    def total_samples(self) -> int:
        """Samples in groups that reached ``min_samples`` (Autopack's ``total_samples``)."""
        return sum(g.sample_count for g in self.groups)


def action_text(median_ratio: float) -> str:
    """Autopack's recommendation wording for a median ratio."""
    if median_ratio > INCREASE_ABOVE:
        return f"Increase coefficients by {(median_ratio - 1) * 100:.0f}%"
    if median_ratio < DECREASE_BELOW:
        return f"Decrease coefficients by {(1 - median_ratio) * 100:.0f}%"
    return "No adjustment needed (within ±20% tolerance)"


def median_confidence(count: int, ratio_std: float) -> float:
    """``0.6 * min(1, n/12) + 0.4 / (1 + population std of ratios)``: more and steadier is surer."""
    sample_part = min(1.0, count / FULL_CONFIDENCE_SAMPLES)
    spread_part = 1.0 / (1.0 + ratio_std)
    return 0.6 * sample_part + 0.4 * spread_part


def group_order(item: Any) -> tuple[int, str, str]:
    """Sort key of calibrated groups: most samples first, then category and complexity."""
    return (-item.sample_count, item.category, item.complexity)
