"""Both calibration methods side by side, and the calibration gate over the arrays.

:func:`calibrations_arrays` runs both methods as ``services.calibrating.calibrate`` runs them, and
:func:`calibration_gate_arrays` decides the gate from the clean count and the group sizes. Chaining
them after the samples and the metrics is the services' job (``services.pipeline``), done once there.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import EventArrays
from autopack_pipeline.domain.analysis.calibration_results import (
    AUTOPACK_MEDIAN,
    DEFAULT_CONFIDENCE_THRESHOLD,
    CalibrationResult,
)
from autopack_pipeline.domain.analysis.coverage_calibration import CoverageGroup, calibrate_coverage_arrays
from autopack_pipeline.domain.analysis.coverage_rules import COVERAGE
from autopack_pipeline.domain.analysis.gate import GateDecision, certain_group_breaches, decide_gate, largest_group
from autopack_pipeline.domain.analysis.median_calibration import calibrate_autopack_median_arrays
from autopack_pipeline.domain.analysis.samples import CleanSamples, SampleGroups
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES, MIN_TOTAL_SAMPLES, UNDER_TOLERANCE


def calibration_gate_arrays(
    clean_count: int,
    groups: SampleGroups,
    tier1: dict[str, Any],
    *,
    min_total: int = MIN_TOTAL_SAMPLES,
    min_samples: int = MIN_GROUP_SAMPLES,
    force: bool = False,
    group_tier1: dict[tuple[str, str], dict[str, Any]] | None = None,
    waste_over_oracle: float | None = None,
    drift: str | None = None,
) -> GateDecision:
    """The calibration gate (:func:`.gate.decide_gate`) from the clean count and the group sizes.

    ``group_tier1`` (each group's Tier-1 counts over the same events as ``tier1``) lets a group's
    certain breach open the gate (:func:`.gate.certain_group_breaches`); ``waste_over_oracle`` (the
    same events' budget waste P90 against the oracle's) lets Tier 2 reopen it, ``drift`` (a drift
    test's summary, when it found the estimator's error moved) a drift.
    """
    counts = groups.counts()
    breaches = (None if group_tier1 is None
                else certain_group_breaches(group_tier1, counts, min_samples=min_samples))
    group = largest_group(counts) if clean_count else None
    under = float(tier1.get("underestimation_rate_pct") or 0.0)
    truncation = float(tier1.get("truncation_rate_pct") or 0.0)
    return decide_gate(clean_count, group, under, truncation, min_total=min_total, min_samples=min_samples,
                       force=force, group_breaches=breaches, waste_over_oracle=waste_over_oracle,
                       drift=drift)


def calibrations_arrays(
    arrays: EventArrays,
    samples: CleanSamples,
    groups: SampleGroups,
    *,
    min_samples: int = MIN_GROUP_SAMPLES,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    dedup: bool = True,
    tolerance: float = UNDER_TOLERANCE,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any],
    observed: tuple[CleanSamples, np.ndarray, list[CoverageGroup]] | None = None,
    beside: Callable[[Callable[[], CalibrationResult]], Future[CalibrationResult]] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> dict[str, CalibrationResult]:
    """Both methods, as ``calibrating.calibrate`` runs them: ``samples`` and ``groups`` are the clean
    samples (``dedup`` as given) and their groups, ``observed`` optionally ``coverage_groups``' result;
    ``provenance`` gets the exclusions added. One method after the other, unless ``beside`` (an
    executor's ``submit``) runs the coverage method while this thread runs the median one, when
    ``observed`` is given: both then read the coverage groups, found already, and neither holds more
    than a group's temporaries. The caller's thread keeps what it freed in its malloc arena (about
    70 MB of the median method's arrays at ten million events, when it ran on a thread of its own):
    freeing it is the caller's part. ``meanwhile``: work of the caller's run on this thread after the
    median method, before the coverage method's result is waited for."""
    shared = {**provenance, "exclusions": samples.exclusions}

    def coverage_method() -> CalibrationResult:
        return calibrate_coverage_arrays(
            arrays, min_samples=min_samples, confidence_threshold=confidence_threshold, dedup=dedup,
            tolerance=tolerance, coefficients=coefficients, provenance=shared, all_clean=samples, observed=observed)

    running = beside(coverage_method) if beside is not None and observed is not None else None
    median = calibrate_autopack_median_arrays(arrays, samples.mask, groups=groups, min_samples=min_samples,
                                              confidence_threshold=confidence_threshold, provenance=shared,
                                              gathered={g.key: g for g in observed[2]} if observed else None)
    if meanwhile is not None:
        meanwhile()
    coverage = running.result() if running is not None else coverage_method()
    return {COVERAGE: coverage, AUTOPACK_MEDIAN: median}
