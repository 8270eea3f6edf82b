"""The product's jobs as plain functions: collect, analyse, calibrate, generate tasks.

The Dagster assets and the CLI both call these, so a figure in the UI and the same figure in a
terminal come from one code path. The analysis runs on :class:`EventArrays` (the vectorised
``fast_metrics``, equal to the pandas reference functions by test); an events frame is converted.
Nothing here imports Dagster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import (
    RunSpec,
    default_phase_set,
    load_phase_file,
    phases_from_templates,
)
from autopack_pipeline.collection.run import (
    CollectionSummary,
    default_run_id,
    run_collection,
)
from autopack_pipeline.domain.budget_calibration import (
    GroupBudgetProposal,
    calibration_section,
    insights_from_budget_proposals,
)
from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.drift import DriftReport, detect_drift
from autopack_pipeline.domain.estimator import TokenEstimator
from autopack_pipeline.domain.fast_metrics import (
    CALIBRATION_METHODS,
    CalibrationResult,
    EventArrays,
    GateDecision,
    calibration_gate_arrays,
    calibrations_arrays,
    clean_sample_rows,
    compute_metrics_arrays,
    coverage_groups,
    group_tier1_arrays,
    sample_groups,
    tier_metrics_document_arrays,
)
from autopack_pipeline.domain.group_economics import group_economics
from autopack_pipeline.domain.outcome_insights import analyse_outcomes, insights_from_outcomes
from autopack_pipeline.domain.prices import PRICES_FILE_NAME, PriceTable, load_price_table
from autopack_pipeline.domain.reprediction import arrays_in_force
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
from autopack_pipeline.domain.windows import TimeWindow, latest_day, trailing_days
from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.builder import Builder
from autopack_pipeline.services.reporting import write_calibration_report_set
from autopack_pipeline.services.tasks_review import refresh_tasks
from autopack_pipeline.settings import REPO_ROOT, Settings
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline.storage.outcomes import read_phase_outcome_rows
from autopack_pipeline.storage.prediction_inputs import prediction_inputs_of
from autopack_pipeline.storage.snapshot import EventSnapshot
from autopack_pipeline.storage.tasks import TaskRefresh

# Enough template phases per group that the default collection gives several groups the 19 clean
# samples a 95% coverage bound needs (with the simulated LLM: four of seven), so the README's first
# command ends with an actionable proposal; a collection run costs about a second of CPU.
DEFAULT_TEMPLATE_PHASES_PER_GROUP = 24


def collect(
    engine: Engine,
    settings: Settings,
    backend: LLMBackend,
    *,
    run_id: str | None = None,
    concurrency: int = 4,
    template_phases_per_group: int = DEFAULT_TEMPLATE_PHASES_PER_GROUP,
    category: str | None = None,
    complexity: str | None = None,
    phases: int | None = None,
    phases_file: Path | None = None,
    progress: Callable[..., None] | None = None,
) -> CollectionSummary:
    """One collection run over one of three phase sets.

    ``phases_file``: the phases of a YAML file; ``category`` and ``complexity``: ``phases`` template
    phases for that one group (a targeted run); otherwise Autopack's ten seed phases plus
    ``template_phases_per_group`` template phases for every group.
    """
    if phases_file is not None:
        run, phase_list = load_phase_file(Path(phases_file))
        run_id = run_id or run.run_id  # a phases file names its own run
    elif category or complexity:
        if not (category and complexity):
            raise ValueError("a targeted collection needs both a category and a complexity")
        run = RunSpec(run_id=run_id or default_run_id())
        phase_list = phases_from_templates(settings.seeds_dir, category, complexity, phases or 5)
    else:
        run, phase_list = default_phase_set(settings.seeds_dir, template_phases_per_group)
    run = run.model_copy(update={"run_id": run_id or default_run_id()})
    builder = Builder(TokenEstimator(load_coefficients_for(settings)), backend, settings.model)
    return run_collection(engine, run, phase_list, builder, concurrency=concurrency, progress=progress,
                          db_retry_seconds=settings.db_retry_seconds, lease_seconds=settings.run_lease_seconds)


def load_coefficients_for(settings: Settings):
    return load_coefficients(settings.seeds_dir / "estimator_coefficients.yaml")


@dataclass(frozen=True)
class SampleSummary:
    """The clean samples of an events set, as counts: what the metrics, the gate and the tasks read."""

    count: int
    group_counts: dict[tuple[str, str], int]  # canonical (category, complexity) -> clean samples
    exclusions: dict[str, int]  # why the other events are not samples
    dedup: bool


def summarise_samples(events: pd.DataFrame | EventArrays, *, dedup: bool = True) -> SampleSummary:
    arrays = as_event_arrays(events)
    samples = clean_sample_rows(arrays, dedup=dedup)
    groups = sample_groups(arrays, samples.mask)
    return SampleSummary(count=samples.count, group_counts=groups.counts(), exclusions=samples.exclusions,
                         dedup=dedup)


def analysis_window(settings: Settings, events: EventArrays | None = None,
                    today: date | None = None) -> TimeWindow | None:
    """The rolling window the Dagster assets analyse and gate on: the last AUTOPACK_METRICS_WINDOW_DAYS
    whole UTC days (28 by default) of telemetry, ending on the day of the newest of ``events`` (or
    ``today``). Anchored on the data, not the clock, so an imported or idle database still shows its
    latest four weeks; the window's dates are in every asset's metadata. ``None`` (the setting at 0)
    means every event, as the CLI reads them."""
    if not settings.metrics_window_days:
        return None
    anchor = today or (latest_day(events) if events is not None else None)
    return trailing_days(settings.metrics_window_days, anchor)


def window_label(window: TimeWindow | None) -> str:
    return "all events" if window is None else f"events of {window.label()}"


def tier_metrics_document(
    events: pd.DataFrame | EventArrays, clean_samples: int, *, under_multiplier: float = UNDER_TOLERANCE
) -> dict[str, Any]:
    """Tier metrics over all Builder calls (the gate's figures) and over successful calls only.

    ``events`` is an events frame or its arrays; ``clean_samples`` is how many clean samples they hold.
    """
    return tier_metrics_document_arrays(as_event_arrays(events), under_multiplier=under_multiplier,
                                        clean_samples=clean_samples)


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
    prediction_inputs: pd.DataFrame | None = None,
    coefficient_history: dict[str, Any] | None = None,
    window_versions: int | None = None,
    group_tier1: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> CalibrationOutcome:
    """Gate, then calibrate with both methods and write the reports; a closed gate writes nothing.

    ``method`` (``coverage`` or ``autopack-median``) is the one whose recommendations fill Autopack's
    ``proposed_changes``; the other is reported beside it. ``under_multiplier`` is both the gate's
    underestimation tolerance and the tolerance the coverage multiplier is computed against.
    ``write_reports=False`` computes everything and writes no file (``tasks generate``).

    With ``prediction_inputs`` (``storage.prediction_inputs.read_prediction_inputs``), every event's
    prediction is first re-expressed under the coefficients in force (``domain.reprediction``;
    ``coefficient_history`` holds the kept versions, by version), so the multipliers proposed are
    factors on top of the current file, never a second application of an earlier one. The gate still
    judges the recorded predictions: it is about what happened.

    The gate also opens for a group whose own Tier-1 breach is certain (``gates.certain_group_breaches``),
    from ``group_tier1``: each group's Tier-1 counts over the events ``tier1`` describes (by default,
    computed from ``events``; a caller passing the ``tier1`` of other events passes theirs too).

    ``window_versions`` (with ``prediction_inputs``) limits what calibration learns from to the events
    of the last that many coefficient versions, or the newest one's alone when its error moved
    (``domain.calibration_window``; 0 keeps every version). None reads every event.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(CALIBRATION_METHODS)})")
    arrays = as_event_arrays(events)
    samples = clean_sample_rows(arrays, dedup=dedup)
    groups = sample_groups(arrays, samples.mask)
    if tier1 is None:
        tier1 = compute_metrics_arrays(arrays, under_multiplier=under_multiplier)["tier1"]
    if group_tier1 is None:
        group_tier1 = group_tier1_arrays(arrays, under_multiplier=under_multiplier)
    gate = calibration_gate_arrays(samples.count, groups, tier1, min_samples=min_samples, force=force,
                                   group_tier1=group_tier1)
    if not gate.open:
        return CalibrationOutcome(gate=gate, result=None)
    coefficients = load_coefficients_for(settings)
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
        prediction_inputs = prediction_inputs_of(prediction_inputs)
        arrays, reprediction = arrays_in_force(arrays, prediction_inputs, coefficients, coefficient_history)
        provenance["gate_summary"] += (f"; predictions re-expressed under {coefficients.version}: "
                                       + ", ".join(f"{n} {way}" for way, n in reprediction.items() if n))
        if window_versions is not None:
            from autopack_pipeline.domain.calibration_window import window_of_events

            chosen = window_of_events(arrays, prediction_inputs, keep_versions=window_versions)
            arrays, window = arrays.take(chosen.rows), chosen.as_dict()
            provenance["window"] = window
            provenance["gate_summary"] += (f"; window: {window['events']} events of {len(window['versions'])} "
                                           f"version(s), {window['events_dropped']} older left out ({chosen.reason})")
        samples = clean_sample_rows(arrays, dedup=dedup)
        groups = sample_groups(arrays, samples.mask)
    observed = coverage_groups(arrays, dedup=dedup, all_clean=samples)  # the coverage method's and the plot's
    results = calibrations_arrays(arrays, samples, groups, min_samples=min_samples,
                                  confidence_threshold=confidence_threshold, dedup=dedup,
                                  tolerance=under_multiplier, coefficients=coefficients, provenance=provenance,
                                  observed=observed)
    economics = calibration_economics(arrays, observed[2], results[method], coefficients, settings,
                                      tolerance=under_multiplier)
    # Each method's proposals get their own section, so `apply-calibration --method M` writes M's
    # multipliers (and the margins measured against them) into the calibration section.
    sections = {name: calibration_section(observed[2], coefficients,
                                          {(g.category, g.complexity): g.proposed_multiplier
                                           for g in result.actionable_groups}, min_samples=min_samples)
                for name, result in results.items()}
    section = sections[method]
    if not write_reports:
        return CalibrationOutcome(gate=gate, result=results[method], results=results, economics=economics,
                                  calibration_section=section, reprediction=reprediction,
                                  calibration_sections=sections, window=window)
    from autopack_pipeline.services.plots import render_calibration_plot  # matplotlib loads only when a plot is drawn

    files = write_calibration_report_set(
        results[method],
        output_dir or settings.resolved_reports_dir(),
        others=[r for name, r in results.items() if name != method],
        calibration_section=section,
        method_sections=sections,
        plot=lambda handle: render_calibration_plot(handle, {g.key: g for g in observed[2]},
                                                    list(results.values()), tolerance=under_multiplier),
        economics=economics,
    )
    return CalibrationOutcome(gate=gate, result=results[method], markdown_path=files.markdown,
                              json_path=files.json, plot_path=files.plot, results=results, economics=economics,
                              calibration_section=section, reprediction=reprediction,
                              calibration_sections=sections, window=window)


# -- frontier and cost (issue 15 items 4 and 5) ---------------------------------------------------------


def load_prices_for(settings: Settings) -> PriceTable:
    """``model_prices.yaml`` of the seeds directory; a seeds directory without one uses the bundled file."""
    path = settings.seeds_dir / PRICES_FILE_NAME
    if not path.exists():
        path = REPO_ROOT / "seeds" / PRICES_FILE_NAME
    return load_price_table(path)


def calibration_economics(arrays: EventArrays, groups: list, result: CalibrationResult, coefficients,
                          settings: Settings, *, tolerance: float) -> list[dict[str, Any]]:
    """Per group: the frontier and what the frontier's (m, b) and the calibration's multiplier cost."""
    multipliers = {(g.category, g.complexity): g.proposed_multiplier for g in result.actionable_groups
                   if not g.method_details.get("multiplier_is_lower_bound")}
    return group_economics(arrays, groups, coefficients, load_prices_for(settings),
                           calibrated_multipliers=multipliers, tolerance=tolerance)


_drift_lock = threading.Lock()
_last_drift: tuple[tuple, DriftReport] | None = None


def drift_for_run(snapshot: EventSnapshot, run_id: str) -> DriftReport:
    """The drift statistics of ``snapshot``'s events, computed once per Dagster run.

    In one "Materialize all" the drift checks and ``generated_tasks`` look at the same events (the
    check refreshes the copy too, and usually finds nothing new), so the second step gets the report
    the first one computed, with the first one's clock, instead of computing it again (0.2 s per
    million events on a slow 2-core machine). A snapshot whose events travel inline is not remembered.
    """
    global _last_drift
    key = (run_id, snapshot.store_directory, snapshot.rows, snapshot.high_water_event_id)
    with _drift_lock:
        if snapshot.store_directory is not None and _last_drift is not None and _last_drift[0] == key:
            return _last_drift[1]
    report = detect_drift(snapshot.arrays())
    if snapshot.store_directory is not None:
        with _drift_lock:
            _last_drift = (key, report)
    return report


def improvement_tasks(
    engine: Engine,
    settings: Settings,
    metrics: dict[str, Any],
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
    tier1 = metrics["all_events"]["tier1"]
    insights = insights_from_tier_metrics(tier1, scope="overall")
    if events is not None:
        insights += insights_from_group_metrics(as_event_arrays(events),
                                                under_multiplier=tier1.get("under_multiplier") or UNDER_TOLERANCE)
    else:
        for category, block in metrics["all_events"].get("strata", {}).get("category", {}).items():
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
