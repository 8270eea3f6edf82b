"""Per-group calibration of the estimator's coefficients, with provenance (DESIGN §7).

``autopack-median`` reproduces Autopack's ``calibrate_token_estimator.py`` figure by figure
(autopack_spec §4 step 6) so its recommendations can be compared with ours. Every method returns the
same :class:`CalibrationResult`: the fields every method shares live on :class:`GroupCalibration`,
and method-specific figures (e.g. a coverage quantile or a shrinkage weight) go in its
``method_details``. Nothing here edits the coefficient file; a person applies a recommendation.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.samples import as_events_frame, canonical_labels

AUTOPACK_MEDIAN = "autopack-median"
DEFAULT_MIN_SAMPLES = 5
DEFAULT_CONFIDENCE_THRESHOLD = 0.7
# Below 12 samples the sample-size half of the confidence score is not yet full.
FULL_CONFIDENCE_SAMPLES = 12
# A median ratio inside [0.8, 1.2] is treated as noise, not as a reason to change anything.
INCREASE_ABOVE = 1.2
DECREASE_BELOW = 0.8


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


def build_provenance(samples: pd.DataFrame, provenance: dict[str, Any]) -> Provenance:
    """Provenance from the samples' own id range and time window plus what the caller knows.

    ``provenance`` may carry ``exclusions`` (from :func:`~autopack_pipeline.domain.samples.sample_exclusions`),
    ``coefficient_file_version``, ``dagster_run_id``, ``forced``, ``dedup``, ``run_ids``, ``database``
    and ``gate_summary``; unknown keys are refused so a typo cannot silently drop audit data.
    """
    frame = as_events_frame(samples)
    ids = frame["event_id"].dropna()
    times = frame["timestamp"].dropna()
    exclusions = {str(k): int(v) for k, v in (provenance.get("exclusions") or {}).items()}
    return Provenance(
        event_id_min=int(ids.min()) if len(ids) else None,
        event_id_max=int(ids.max()) if len(ids) else None,
        time_window_start=times.min().to_pydatetime() if len(times) else None,
        time_window_end=times.max().to_pydatetime() if len(times) else None,
        samples_kept=len(frame),
        samples_excluded=sum(exclusions.values()),
        **{**provenance, "exclusions": exclusions},
    )


def action_text(median_ratio: float) -> str:
    """Autopack's recommendation wording for a median ratio."""
    if median_ratio > INCREASE_ABOVE:
        return f"Increase coefficients by {(median_ratio - 1) * 100:.0f}%"
    if median_ratio < DECREASE_BELOW:
        return f"Decrease coefficients by {(1 - median_ratio) * 100:.0f}%"
    return "No adjustment needed (within ±20% tolerance)"


def median_confidence(ratios: list[float]) -> float:
    """``0.6 * min(1, n/12) + 0.4 / (1 + population std of ratios)``: more and steadier is surer."""
    sample_part = min(1.0, len(ratios) / FULL_CONFIDENCE_SAMPLES)
    spread_part = 1.0 / (1.0 + statistics.pstdev(ratios))
    return 0.6 * sample_part + 0.4 * spread_part


def _upper_middle(values: list[float]) -> float:
    # Autopack takes sorted(v)[n // 2]: for even n the upper of the two middle values, not their mean.
    return sorted(values)[len(values) // 2]


def _autopack_group(category: str, complexity: str, rows: pd.DataFrame, threshold: float) -> GroupCalibration:
    predicted = [int(v) for v in rows["predicted_output_tokens"]]
    actual = [int(v) for v in rows["actual_output_tokens"]]
    ratios = [a / p if p != 0 else 0.0 for a, p in zip(actual, predicted)]
    n = len(ratios)

    # Budget actually sent, falling back to the estimator's intent (Python `or`: 0 falls back too).
    sent = [None if pd.isna(v) else int(v) for v in rows["actual_max_tokens"]]
    selected = [None if pd.isna(v) else int(v) for v in rows["selected_budget"]]
    budgets = [s or b or 0 for s, b in zip(sent, selected)]
    waste = sorted(b / a if a != 0 else 0.0 for b, a in zip(budgets, actual))
    known_selected = [b for b in selected if b is not None]

    median_ratio = _upper_middle(ratios)
    confidence = median_confidence(ratios)
    return GroupCalibration(
        category=category,
        complexity=complexity,
        sample_count=n,
        avg_actual=math.fsum(actual) / n,
        avg_estimated=math.fsum(predicted) / n,
        avg_ratio=math.fsum(ratios) / n,
        median_ratio=median_ratio,
        min_ratio=min(ratios),
        max_ratio=max(ratios),
        ratio_std=statistics.pstdev(ratios),
        confidence=confidence,
        proposed_multiplier=median_ratio,
        median_budget_waste=waste[n // 2] if waste else None,
        # Autopack clamps the index to the last element; int(0.9 n) < n for any n >= 1, so it is a guard.
        p90_budget_waste=waste[min(int(0.9 * n), n - 1)] if waste else None,
        avg_selected_budget=math.fsum(known_selected) / len(known_selected) if known_selected else None,
        actionable=confidence >= threshold,
        action=action_text(median_ratio),
    )


def group_samples(samples: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Split usable samples into (category, complexity) groups under canonical labels, sorted by key."""
    frame = as_events_frame(samples)
    usable = frame[frame["predicted_output_tokens"].notna() & frame["actual_output_tokens"].notna()]
    categories = canonical_labels(usable["category"], normalise_category)
    complexities = canonical_labels(usable["complexity"], normalise_complexity)
    keys = pd.Series(list(zip(categories, complexities)), index=usable.index, dtype=object)
    return {key: usable[(keys == key).to_numpy()] for key in sorted(set(keys))}


def group_order(item: Any) -> tuple[int, str, str]:
    """Sort key of calibrated groups: most samples first, then category and complexity."""
    return (-item.sample_count, item.category, item.complexity)


def calibrate_autopack_median(
    samples: pd.DataFrame,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    provenance: dict[str, Any],
) -> CalibrationResult:
    """Autopack's median-ratio calibration over clean ``samples``.

    Groups with fewer than ``min_samples`` are listed in ``below_threshold``; the others get the
    full figure set, ``actionable`` when confidence >= ``confidence_threshold``. Both lists are sorted
    by (-samples, category, complexity), the order of Autopack's detailed table.
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    groups: list[GroupCalibration] = []
    below: list[BelowThresholdGroup] = []
    for (category, complexity), rows in group_samples(samples).items():
        if len(rows) < min_samples:
            below.append(BelowThresholdGroup(category=category, complexity=complexity,
                                             sample_count=len(rows), needed=min_samples - len(rows)))
        else:
            groups.append(_autopack_group(category, complexity, rows, confidence_threshold))
    return CalibrationResult(
        method=AUTOPACK_MEDIAN,
        parameters={"min_samples": int(min_samples), "confidence_threshold": float(confidence_threshold)},
        groups=sorted(groups, key=group_order),
        below_threshold=sorted(below, key=group_order),
        provenance=build_provenance(samples, provenance),
    )
