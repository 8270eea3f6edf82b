"""Calibration: the gate, both calibration methods, the frontier and cost per group, and the reports.

``calibrate`` is the one place these are put together; ``calibration_apply.calibrate_in_force``
first re-expresses the predictions under the coefficients in force and then calls it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autopack_pipeline.domain.analysis import (
    CALIBRATION_METHODS,
    COVERAGE,
    CalibrationResult,
    CleanSamples,
    EventArrays,
    GateDecision,
    IntColumn,
    SampleGroups,
    calibration_gate_arrays,
    calibrations_arrays,
    clean_sample_rows,
    compute_metrics_arrays,
    coverage_groups,
    group_tier1_arrays,
    sample_groups,
)
from autopack_pipeline.domain.analysis.retries import escalated_retries
from autopack_pipeline.domain.budget_calibration import pooled_coverage_bounds, pooled_section, section_of
from autopack_pipeline.domain.group_economics import economics_rows, group_economics
from autopack_pipeline.domain.reprediction import PredictionInputs, arrays_in_force
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.services.reporting import write_calibration_report_set
from autopack_pipeline.services.seed_files import load_coefficients_for, load_prices_for
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline.storage.process_memory import release_freed_memory

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class CalibrationOutcome:
    """The gate's decision and, when it opened, the chosen method's result and every method's."""

    gate: GateDecision
    result: CalibrationResult | None
    markdown_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    results: dict[str, CalibrationResult] | None = None
    economics: list[dict[str, Any]] | None = None  # per group: frontier and cost (group_economics)
    # The patch's calibration section (prediction multiplier, budget margin and floor per group).
    calibration_section: dict[str, Any] | None = None
    # How the predictions were re-expressed under the coefficients in force (events per way).
    reprediction: dict[str, int] | None = None
    # Every method's calibration section, by method name (the chosen one is ``calibration_section``).
    calibration_sections: dict[str, dict[str, Any]] | None = None
    # The events calibration read (``domain.calibration_window``), when a window was asked for.
    window: dict[str, Any] | None = None

    def patch_payload(self) -> dict[str, Any]:
        """The patch document, exactly as the JSON report holds it (JSON types only)."""
        import json

        from autopack_pipeline.services.reporting import calibration_report_payload

        if self.result is None:
            raise ValueError("the calibration gate refused: there is no patch")
        payload = calibration_report_payload(
            self.result, others=[r for n, r in (self.results or {}).items() if n != self.result.method],
            calibration_section=self.calibration_section, method_sections=self.calibration_sections)
        return json.loads(json.dumps(payload, default=str))

    def as_dict(self) -> dict[str, Any]:
        reports = None
        if self.markdown_path:
            reports = {"markdown": str(self.markdown_path), "json": str(self.json_path),
                       "plot": str(self.plot_path) if self.plot_path else None}
        return {
            "gate": self.gate.to_dict(),
            "method": self.result.method if self.result else None,
            "result": self.result.model_dump(mode="json") if self.result else None,
            "methods": {name: r.model_dump(mode="json") for name, r in (self.results or {}).items()},
            "calibration": self.calibration_section,
            "reprediction": self.reprediction,
            "window": self.window,
            "reports": reports,
            "frontier_and_cost": self.economics,
        }


def calibrate(
    events: pd.DataFrame | EventArrays,
    settings: Settings,
    *,
    tier1: dict[str, Any] | None = None,
    min_samples: int = 5,
    confidence_threshold: float = 0.7,
    dedup: bool = True,
    force: bool = False,
    output_dir: Path | None = None,
    under_multiplier: float = UNDER_TOLERANCE,
    dagster_run_id: str | None = None,
    database: str | None = None,
    method: str = "coverage",
    write_reports: bool = True,
    prediction_inputs: PredictionInputs | Callable[[], PredictionInputs] | None = None,
    coefficient_history: dict[str, Any] | None = None,
    window_versions: int | None = None,
    group_tier1: dict[tuple[str, str], dict[str, Any]] | None = None,
    waste_over_oracle: float | None = None,
    clean: CleanSamples | None = None,
    groups: SampleGroups | None = None,
    reopen_on_drift: bool = False,
) -> CalibrationOutcome:
    """Gate, then calibrate with both methods and write the reports; a closed gate writes nothing.

    ``method`` (``coverage`` or ``autopack-median``) is the one whose recommendations fill Autopack's
    ``proposed_changes``; the other is reported beside it. ``under_multiplier`` is both the gate's
    underestimation tolerance and the tolerance the coverage multiplier is computed against.
    ``write_reports=False`` computes everything and writes no file (``tasks generate``).

    With ``prediction_inputs`` (``storage.prediction_inputs.read_prediction_inputs``, or a function reading
    them when they are first needed, which then lets them go after the window is chosen), every event's
    prediction is first re-expressed under the coefficients in force (``domain.reprediction``;
    ``coefficient_history`` holds the kept versions, by version), so the multipliers proposed are
    factors on top of the current file, never a second application of an earlier one. The gate still
    judges the recorded predictions: it is about what happened.

    The gate also opens for a group whose own Tier-1 breach is certain (``gates.certain_group_breaches``),
    from ``group_tier1``: each group's Tier-1 counts over the events ``tier1`` describes (by default,
    computed from ``events``; a caller passing the ``tier1`` of other events passes theirs too).

    ``window_versions`` (with ``prediction_inputs``) limits what calibration learns from to the events
    of the last that many coefficient versions, the older ones re-expressed in the newest one's world
    when its error moved (``domain.calibration_window``; 0 keeps every version). None reads every event.

    ``clean`` and ``groups``: the clean samples of ``events`` (with this ``dedup``) and their groups,
    when the caller found them already (the pipeline's sample stage).

    ``reopen_on_drift`` (with ``prediction_inputs`` and ``window_versions``): a gate that Tier 1 and
    Tier 2 would close opens when the window's drift test finds the estimator's error moved since the
    previous version (the loop: a round can meet Tier 1 on budgets fitted before a drift by luck).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(CALIBRATION_METHODS)})")
    arrays = as_event_arrays(events)
    samples = clean if clean is not None and groups is not None else clean_sample_rows(arrays, dedup=dedup)
    groups = groups if clean is not None and groups is not None else sample_groups(arrays, samples.mask)
    if tier1 is None:
        tier1 = compute_metrics_arrays(arrays, under_multiplier=under_multiplier)["tier1"]
    if group_tier1 is None:
        group_tier1 = group_tier1_arrays(arrays, under_multiplier=under_multiplier)
    gate = calibration_gate_arrays(samples.count, groups, tier1, min_samples=min_samples, force=force,
                                   group_tier1=group_tier1, waste_over_oracle=waste_over_oracle)
    coefficients = None if gate.open or not reopen_on_drift else load_coefficients_for(settings)
    in_force = chosen = None
    if coefficients is not None and prediction_inputs is not None and window_versions is not None:
        from autopack_pipeline.domain.calibration_window import window_of_events

        prediction_inputs = _read(prediction_inputs)
        in_force = arrays_in_force(arrays, prediction_inputs, coefficients, coefficient_history)
        chosen = window_of_events(in_force[0], prediction_inputs, keep_versions=window_versions)
        if chosen.drift is not None and chosen.drift.moved:
            gate = calibration_gate_arrays(samples.count, groups, tier1, min_samples=min_samples,
                                           group_tier1=group_tier1, waste_over_oracle=waste_over_oracle,
                                           drift=chosen.drift.summary())
    if not gate.open:
        return CalibrationOutcome(gate=gate, result=None)
    coefficients = coefficients or load_coefficients_for(settings)
    provenance = {
        "coefficient_file_version": coefficients.version,
        "dagster_run_id": dagster_run_id,
        "forced": gate.forced,
        "dedup": dedup,
        "database": database,
        "gate_summary": gate.summary(),
    }
    reprediction = window = None
    if prediction_inputs is not None:
        prediction_inputs = _read(prediction_inputs)
        recorded = arrays
        arrays, reprediction = in_force or arrays_in_force(arrays, prediction_inputs, coefficients, coefficient_history)
        re_expressed = arrays
        provenance["gate_summary"] += (f"; predictions re-expressed under {coefficients.version}: "
                                       + ", ".join(f"{n} {way}" for way, n in reprediction.items() if n))
        if window_versions is not None:
            from autopack_pipeline.domain.calibration_window import window_of_events

            chosen = chosen or window_of_events(arrays, prediction_inputs, keep_versions=window_versions)
            arrays, window = chosen.events_of(arrays), chosen.as_dict()
            provenance["window"] = window
            provenance["gate_summary"] += (f"; window: {window['events']} events of {len(window['versions'])} "
                                           f"version(s), {window['events_dropped']} older left out ({chosen.reason})")
        # The same events (a window of every one, none rescaled) with their predictions known at the same
        # rows have the same clean samples and groups: they read a prediction only through whether it is
        # known (finding them again was ~45 ms at a million events).
        if arrays is not re_expressed or not _known_alike(recorded.predicted, arrays.predicted):
            samples = clean_sample_rows(arrays, dedup=dedup)
            groups = sample_groups(arrays, samples.mask)
        # Nothing reads the stored inputs (or the events before the window) again: read through a function,
        # they are held by nobody else and go now, not after the calibration's peak (15 MB at a million events).
        prediction_inputs = in_force = chosen = recorded = re_expressed = None

    def trimmed(work: Callable[[], Any]) -> Any:
        done = work()
        # At once, on the thread: its malloc arena keeps what it freed (storage.process_memory), ~100 MB
        # after the economics at ten million events, which would sit under the pooled passes' peak. Only
        # after the economics and the median method's section: the retries, the economics' rows and the
        # coverage method free little, and the same thread's next work reuses it, where each trim's pages
        # were faulted in again (5 trims were 0.05 s of CPU at a million events, 8 pairs; the peak the same).
        release_freed_memory()
        return done

    # A second thread works beside this one, numpy on both sides (which lets go of the GIL): first the
    # window's escalated retries (the samples keep one call per phase) and the economics' rows per
    # group while the coverage groups are found, then the coverage method while this thread runs the
    # median one and the coverage factors' pooled bounds, then the frontier and cost per group while
    # this thread runs the coverage method's pooled passes, then the median method's pooled pass; the
    # two methods' sections share their unidentifiable groups' work (budget_calibration.section_of).
    # Little of it adds to the peak (~1.4 GB at ten million events, in the coverage method's pooled
    # passes): the retries', the economics' rows (int32, 40 MB) and the methods' arrays are small beside
    # the calibration's, the economics' temporaries one group's calls at a time (~130 MB for the
    # largest), and the median method's pass starts after them. Every figure is the same, each side
    # computing alone.
    with ThreadPoolExecutor(max_workers=1) as pool:
        retrying = pool.submit(escalated_retries, arrays)
        # The economics' rows per group, which the events alone decide, after the retries: the coverage
        # groups take longer than the retries, and the second thread was idle for the difference.
        pricing_rows = pool.submit(economics_rows, arrays)
        observed = coverage_groups(arrays, dedup=dedup, all_clean=samples,  # the coverage method's and the plot's
                                   clean_groups=groups)

        def priced(result: CalibrationResult) -> list[dict[str, Any]]:
            return calibration_economics(arrays, observed[2], result, coefficients, settings,
                                         tolerance=under_multiplier, pair_rows=pricing_rows.result())

        early: dict[str, Any] = {}

        def coverage_beside(work: Callable[[], CalibrationResult]) -> Future:
            running = pool.submit(work)
            if method == COVERAGE:  # priced next on that thread, from the coverage method's result
                early["pricing"] = pool.submit(trimmed, lambda: priced(running.result()))
            return running

        def bounds() -> None:
            # The coverage factors' pooled bounds read the groups alone: found here, after the median
            # method, while the coverage method ends on the second thread (this thread waited for it).
            early["bounds"] = pooled_coverage_bounds(observed[2], min_samples=min_samples)

        results = calibrations_arrays(arrays, samples, groups, min_samples=min_samples,
                                      confidence_threshold=confidence_threshold, dedup=dedup,
                                      tolerance=under_multiplier, coefficients=coefficients, provenance=provenance,
                                      observed=observed, beside=coverage_beside, meanwhile=bounds)
        retries = retrying.result()
        pricing = early.get("pricing") or pool.submit(trimmed, lambda: priced(results[method]))
        # The plot reads only the groups and the methods' results: drawn now, on a thread of its own, beside
        # the methods' sections (its PNG compression, a third of it, lets go of the GIL), not after them.
        picture = _plot_drawn_beside(observed[2], results, under_multiplier) if write_reports else None
        # Each method's proposals get their own section, so `apply-calibration --method M` writes M's
        # multipliers (and the margins measured against them) into the calibration section: a pooled
        # pass over every group, then each group's proposals. The coverage method's is the longest
        # (its factors raised to the pooled bound first) and runs here; the other method's runs on the
        # second thread after the economics, its pooled pass beside the end of this one's.
        def method_section(name: str) -> dict[str, Any]:
            factors = {(g.category, g.complexity): g.proposed_multiplier for g in results[name].actionable_groups}
            pooled = pooled_section(observed[2], factors, min_samples=min_samples, pooled_factors=name == COVERAGE,
                                    retries=retries, coverage_bounds=early.get("bounds"))
            return section_of(pooled, coefficients, min_samples=min_samples)

        proposing = {name: pool.submit(trimmed, partial(method_section, name)) for name in results if name != COVERAGE}
        sections = {name: proposing[name].result() if name in proposing else method_section(name) for name in results}
        economics = pricing.result()
    section = sections[method]
    if not write_reports:
        return CalibrationOutcome(gate=gate, result=results[method], results=results, economics=economics,
                                  calibration_section=section, reprediction=reprediction,
                                  calibration_sections=sections, window=window)
    # Nothing below reads the events in force or the samples: they go before the reports are written (the
    # re-expressed predictions are this function's own, 8 MB at 1M; the plot, drawn by now or nearly, holds
    # only the groups).
    arrays = samples = groups = pricing_rows = retries = None
    files = write_calibration_report_set(
        results[method],
        output_dir or settings.resolved_reports_dir(),
        others=[r for name, r in results.items() if name != method],
        calibration_section=section,
        method_sections=sections,
        plot=lambda handle: handle.write(picture.result()),  # a drawing that failed raises here: no file
        economics=economics,
    )
    return CalibrationOutcome(gate=gate, result=results[method], markdown_path=files.markdown,
                              json_path=files.json, plot_path=files.plot, results=results, economics=economics,
                              calibration_section=section, reprediction=reprediction,
                              calibration_sections=sections, window=window)


def _known_alike(before: IntColumn, after: IntColumn) -> bool:
    """Whether the two columns are known at the same rows."""
    if before.valid is None and after.valid is None:
        return True
    return bool(np.array_equal(before.notna(), after.notna()))


def _plot_drawn_beside(groups: list, results: dict[str, CalibrationResult], tolerance: float) -> Future:
    """The calibration plot's PNG bytes, drawn on a thread of its own (``Future.result()`` gives them, or
    raises what drawing raised)."""
    from autopack_pipeline.services.plots import render_calibration_plot  # Pillow loads only when a plot is drawn

    def draw() -> bytes:
        png = io.BytesIO()
        render_calibration_plot(png, {g.key: g for g in groups}, list(results.values()), tolerance=tolerance)
        return png.getvalue()

    drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plot")
    drawing = drawer.submit(draw)
    drawer.shutdown(wait=False)  # its thread ends with the drawing
    return drawing


def _read(inputs: PredictionInputs | Callable[[], PredictionInputs]) -> PredictionInputs:
    """The prediction inputs, read now if ``calibrate`` was handed the function reading them."""
    return inputs() if callable(inputs) else inputs


def calibration_economics(arrays: EventArrays, groups: list, result: CalibrationResult, coefficients,
                          settings: Settings, *, tolerance: float, pair_rows: list | None = None
                          ) -> list[dict[str, Any]]:
    """Per group: the frontier and what the frontier's (m, b) and the calibration's multiplier cost
    (``pair_rows``: ``group_economics.economics_rows(arrays)``, when found already)."""
    multipliers = {(g.category, g.complexity): g.proposed_multiplier for g in result.actionable_groups
                   if not g.method_details.get("multiplier_is_lower_bound")}
    return group_economics(arrays, groups, coefficients, load_prices_for(settings),
                           calibrated_multipliers=multipliers, tolerance=tolerance, pair_rows=pair_rows)
