"""Oracle: the ``autopack-median`` calibration over a pandas frame (the product:
``domain.analysis.median_calibration``). Per-group calibration with provenance (DESIGN §7).

``autopack-median`` reproduces Autopack's ``calibrate_token_estimator.py`` figure by figure
(autopack_spec §4 step 6) so its recommendations can be compared with ours. Every method returns the
same :class:`CalibrationResult`: the fields every method shares live on :class:`GroupCalibration`,
and method-specific figures (e.g. a coverage quantile or a shrinkage weight) go in its
``method_details``. Nothing here edits the coefficient file; a person applies a recommendation.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from autopack_pipeline.domain.analysis.calibration_results import (  # noqa: F401 - re-exported for the tests
    AUTOPACK_MEDIAN,
    DECREASE_BELOW,
    DEFAULT_CONFIDENCE_THRESHOLD,
    FULL_CONFIDENCE_SAMPLES,
    INCREASE_ABOVE,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    Provenance,
    action_text,
    group_order,
)
from autopack_pipeline.domain.analysis.calibration_results import median_confidence as _median_confidence
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES as DEFAULT_MIN_SAMPLES
from autopack_pipeline_tests.oracle.samples import as_events_frame, canonical_labels


def median_confidence(ratios: list[float]) -> float:
    """The product's confidence score of a list of ratios (population std by ``statistics``)."""
    return _median_confidence(len(ratios), statistics.pstdev(ratios))


def build_provenance(samples: pd.DataFrame, provenance: dict[str, Any]) -> Provenance:
    """Provenance from the samples' own id range and time window plus what the caller knows.

    ``provenance`` may carry ``exclusions`` (from :func:`~autopack_pipeline_tests.oracle.samples.sample_exclusions`),
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
