"""The whole analysis after extraction: tier metrics, clean samples, the gate and both calibrations.

:func:`analyse` computes what ``analysis.tier_metrics_document`` and ``calibrating.calibrate`` do, at
scale, in two chains side by side; :func:`calibrations_arrays` runs both calibration methods as
``calibrating.calibrate`` runs them, and :func:`calibration_gate_arrays` decides the gate from the clean
count and the group sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.fast_metrics.arrays import EventArrays
from autopack_pipeline.domain.fast_metrics.calibration_results import (
    AUTOPACK_MEDIAN,
    DEFAULT_CONFIDENCE_THRESHOLD,
    CalibrationResult,
)
from autopack_pipeline.domain.fast_metrics.coverage_calibration import CoverageGroup, calibrate_coverage_arrays
from autopack_pipeline.domain.fast_metrics.coverage_rules import COVERAGE
from autopack_pipeline.domain.fast_metrics.gate import GateDecision, certain_group_breaches, decide_gate, largest_group
from autopack_pipeline.domain.fast_metrics.median_calibration import calibrate_autopack_median_arrays
from autopack_pipeline.domain.fast_metrics.metrics import _Basics, tier_metrics_document_arrays
from autopack_pipeline.domain.fast_metrics.samples import CleanSamples, SampleGroups, clean_sample_rows, sample_groups
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
) -> GateDecision:
    """The calibration gate (:func:`.gate.decide_gate`) from the clean count and the group sizes.

    ``group_tier1`` (each group's Tier-1 counts over the same events as ``tier1``) lets a group's
    certain breach open the gate (:func:`.gate.certain_group_breaches`).
    """
    counts = groups.counts()
    breaches = (None if group_tier1 is None
                else certain_group_breaches(group_tier1, counts, min_samples=min_samples))
    group = largest_group(counts) if clean_count else None
    under = float(tier1.get("underestimation_rate_pct") or 0.0)
    truncation = float(tier1.get("truncation_rate_pct") or 0.0)
    return decide_gate(clean_count, group, under, truncation, min_total=min_total, min_samples=min_samples,
                       force=force, group_breaches=breaches)


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
) -> dict[str, CalibrationResult]:
    """Both methods, as ``calibrating.calibrate`` runs them: ``samples`` and ``groups`` are the clean
    samples (``dedup`` as given) and their groups, ``observed`` optionally ``coverage_groups``' result;
    ``provenance`` gets the exclusions added. The two methods run side by side on two threads (numpy
    releases the GIL in its heavy loops)."""
    from concurrent.futures import ThreadPoolExecutor

    shared = {**provenance, "exclusions": samples.exclusions}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="median") as pool:
        median = pool.submit(calibrate_autopack_median_arrays, arrays, samples.mask, groups=groups,
                             min_samples=min_samples, confidence_threshold=confidence_threshold, provenance=shared)
        coverage = calibrate_coverage_arrays(
            arrays, min_samples=min_samples, confidence_threshold=confidence_threshold, dedup=dedup,
            tolerance=tolerance, coefficients=coefficients, provenance=shared, all_clean=samples, observed=observed)
        return {COVERAGE: coverage, AUTOPACK_MEDIAN: median.result()}


@dataclass
class Analysis:
    """What the pipeline computes after extraction: metrics, samples, gate and both calibrations."""

    metrics: dict[str, Any]
    samples: CleanSamples
    gate: GateDecision
    calibrations: dict[str, CalibrationResult]  # by method; empty when the gate is closed
    timings: dict[str, float] = field(default_factory=dict)


def analyse(
    arrays: EventArrays,
    *,
    under_multiplier: float = UNDER_TOLERANCE,
    dedup: bool = True,
    min_samples: int = MIN_GROUP_SAMPLES,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    force: bool = False,
    coefficients: CoefficientTable | None = None,
    provenance: dict[str, Any] | None = None,
    threads: int = 2,
) -> Analysis:
    """What ``analysis.tier_metrics_document`` and ``calibrating.calibrate`` compute, at scale.

    Tier metrics (all events with strata, success-only), clean samples, the gate and, when the gate is
    open (or ``force``), both calibration methods with the parameters ``calibrate`` gives them:
    ``coverage`` against the ``under_multiplier`` tolerance with ``coefficients``, and
    ``autopack-median``. ``provenance`` (coefficient file version, Dagster run id, database) is
    completed with the exclusions and the gate, as there.

    With ``threads=2`` two chains run side by side (numpy releases the GIL in its heavy loops): the
    tier metrics in one; clean samples, groups and both calibrations in the other. The calibrations
    start before the gate is known and are dropped if it stays closed; their provenance gets the
    gate's summary at the end. ``timings`` holds seconds per step (steps of the two chains overlap).
    """
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    timings: dict[str, float] = {}
    lock = threading.Lock()

    def timed(name: str, work: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        result = work()
        with lock:
            timings[name] = time.perf_counter() - began
        return result

    base_provenance = {**(provenance or {}), "dedup": dedup}
    def metrics_chain(samples_future: Any) -> dict[str, Any]:
        basics = timed("per_row_flags", lambda: _Basics.of(arrays))
        document = timed("tier_metrics", lambda: tier_metrics_document_arrays(
            arrays, under_multiplier=under_multiplier, clean_samples=0, basics=basics))
        document["clean_samples"] = samples_future.result().count
        return document

    def calibration_chain(samples: CleanSamples) -> tuple[SampleGroups, dict[str, CalibrationResult]]:
        groups = timed("sample_groups", lambda: sample_groups(arrays, samples.mask))
        results = timed("calibrations", lambda: calibrations_arrays(
            arrays, samples, groups, min_samples=min_samples, confidence_threshold=confidence_threshold,
            dedup=dedup, tolerance=under_multiplier, coefficients=coefficients, provenance=base_provenance))
        return groups, results

    began = time.perf_counter()
    if threads > 1:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="analyse") as pool:
            samples_future = pool.submit(timed, "clean_samples", lambda: clean_sample_rows(arrays, dedup=dedup))
            metrics_future = pool.submit(metrics_chain, samples_future)
            samples = samples_future.result()
            groups, results = calibration_chain(samples)
            metrics = metrics_future.result()
    else:
        from concurrent.futures import Future

        samples_future: Future = Future()
        samples = timed("clean_samples", lambda: clean_sample_rows(arrays, dedup=dedup))
        samples_future.set_result(samples)
        metrics = metrics_chain(samples_future)
        groups, results = calibration_chain(samples)
    gate = calibration_gate_arrays(samples.count, groups, metrics["all_events"]["tier1"], min_samples=min_samples,
                                   force=force)
    if gate.open:
        stamp = {"forced": gate.forced, "gate_summary": gate.summary()}
        results = {name: results[name].model_copy(update={"provenance": results[name].provenance.model_copy(
            update=stamp)}) for name in (COVERAGE, AUTOPACK_MEDIAN)}
    else:
        results = {}
    timings["total"] = time.perf_counter() - began
    return Analysis(metrics=metrics, samples=samples, gate=gate, calibrations=results, timings=timings)
