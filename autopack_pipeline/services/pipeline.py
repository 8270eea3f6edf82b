"""The pipeline's composition, once: events -> clean samples -> tier metrics -> calibration -> tasks.

Each stage is a function of the stage before it. The Dagster assets run one stage each (an asset
per stage, so the UI shows and re-runs them apart); ``autopack-telemetry tasks generate`` and
``calibrate`` run :func:`analyse`, which chains the same functions through :func:`analyse_events`.
So the window, the tolerance and the calibration options are applied the same way whichever front
end asked. :func:`analyse_events` needs no database (no engine: predictions as recorded), which is
how the benchmarks run the same chain on the columnar store's arrays.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack_pipeline.domain.analysis import EventArrays, group_tier1_arrays, tier1_arrays
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES, UNDER_TOLERANCE
from autopack_pipeline.domain.windows import SHORT_WINDOW_DAYS, events_in_window, latest_day, trailing_days
from autopack_pipeline.services.analysis import (
    SampleSummary,
    TierMetrics,
    WindowedEvents,
    events_for_analysis,
    summarise_samples,
    window_label,
)
from autopack_pipeline.services.calibrating import CalibrationOutcome
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.process_memory import release_freed_memory, small_pages

if TYPE_CHECKING:
    # SQLAlchemy for the annotations only: the analysis of stored arrays (the benchmark's, Dagster's
    # analysis steps) needs no engine, and importing it costs about 0.1 s.
    from sqlalchemy.engine import Engine

    from autopack_pipeline.domain.drift import DriftReport
    from autopack_pipeline.domain.tasks import GeneratedTask, Insight
    from autopack_pipeline.storage.handle import Database
    from autopack_pipeline.storage.tasks import TaskRefresh


def sample_stage(windowed: WindowedEvents, *, dedup: bool = True) -> SampleSummary:
    """The clean samples of the analysis window."""
    return summarise_samples(windowed.events, dedup=dedup)


def metrics_stage(windowed: WindowedEvents, samples: SampleSummary | Future[SampleSummary], every_event: EventArrays,
                  *, under_multiplier: float = UNDER_TOLERANCE,
                  last_7_days: dict[str, Any] | Future[dict[str, Any]] | None = None) -> TierMetrics:
    """Tier 1 and 2 over the window, with Tier 1 over the last 7 days of ``every_event`` beside them
    (``every_event``: every event, or the events within :func:`~.analysis.analysis_reach` of the newest,
    which hold the same last 7 days). ``samples`` (only their count is read): a future of them when
    they are being found on another thread (:func:`analyse_events`), waited for once the figures are done;
    ``last_7_days``: :func:`last_7_days_tier1` of ``every_event``, or a future of it, when found elsewhere."""
    metrics = TierMetrics.of(windowed.events, 0, under_multiplier=under_multiplier, window=windowed.label)
    if last_7_days is None:
        last_7_days = last_7_days_tier1(every_event, under_multiplier=under_multiplier)
    recent = last_7_days.result() if isinstance(last_7_days, Future) else last_7_days
    found = samples.result() if isinstance(samples, Future) else samples
    return TierMetrics({**metrics.document, "clean_samples": int(found.count)}, under_multiplier, windowed.label,
                       last_7_days=recent, group_tier1=metrics.group_tier1)


def last_7_days_tier1(every_event: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE) -> dict[str, Any]:
    """The metrics' last-7-days block: the window and the Tier-1 block of ``every_event`` in it (its ratio
    figures and strata are not computed)."""
    short = trailing_days(SHORT_WINDOW_DAYS, latest_day(every_event))
    return {"window": window_label(short),
            "tier1": tier1_arrays(events_in_window(every_event, short), under_multiplier=under_multiplier)}


def gate_metrics_stage(windowed: WindowedEvents, samples: SampleSummary | Future[SampleSummary], *,
                       under_multiplier: float = UNDER_TOLERANCE) -> TierMetrics:
    """Only the figures the calibration gate reads: Tier 1 and each group's Tier 1 over the window.
    ``calibrate`` shows no other metric, and the whole document (Tier 2, strata, the successful calls,
    the last 7 days) cost eight times these two at a million events. Its ``document`` holds
    ``all_events.tier1`` and ``clean_samples`` only: ``tier2``, ``strata`` and ``needs_tuning`` are absent."""
    tier1 = tier1_arrays(windowed.events, under_multiplier=under_multiplier)
    group_tier1 = group_tier1_arrays(windowed.events, under_multiplier=under_multiplier)
    found = samples.result() if isinstance(samples, Future) else samples
    return TierMetrics({"all_events": {"tier1": tier1}, "clean_samples": int(found.count)}, under_multiplier,
                       windowed.label, group_tier1=group_tier1)


def calibration_stage(telemetry_db: Database | None, settings: Settings, windowed: WindowedEvents, metrics: TierMetrics,
                      samples: SampleSummary | None = None, **options: Any) -> CalibrationOutcome:
    """Gate and calibrate the window's events under the coefficients in force; the gate reads
    ``metrics``' Tier 1 and the coverage bound its tolerance (the ``under_multiplier`` it was measured
    with). ``options``: ``calibrating.calibrate``'s keyword arguments (method, min_samples, ...), and
    ``calibration_apply.calibrate_in_force``'s ``store_refreshed``.
    ``samples``: the window's clean samples as :func:`sample_stage` found them in this process, so
    the gate does not find them again (ignored when they were found with another ``dedup``).

    ``telemetry_db``: an engine or a handle (``storage.handle``). Without one there are no stored prediction
    inputs to re-express the predictions with, so they are calibrated as recorded (the benchmarks, the
    parity tests)."""
    if samples is not None and samples.rows is not None and samples.dedup == options.get("dedup", True):
        options |= {"clean": samples.rows, "groups": samples.groups}
    if metrics.group_tier1 is not None and "group_tier1" not in options:
        options["group_tier1"] = metrics.group_tier1  # counted by the metrics stage over the same events
    if telemetry_db is None:
        from autopack_pipeline.services.calibrating import calibrate

        options.pop("store_refreshed", None)  # no database, so no store to read the inputs from

        return calibrate(windowed.events, settings, tier1=metrics.tier1,
                         under_multiplier=metrics.under_multiplier, **options)
    from autopack_pipeline.services.calibration_apply import calibrate_in_force

    return calibrate_in_force(telemetry_db, settings, windowed.events, tier1=metrics.tier1,
                              under_multiplier=metrics.under_multiplier, **options)


def drift_report(every_event: EventArrays, settings: Settings, *, now: datetime | None = None) -> DriftReport:
    """The drift of the estimator's error over ``every_event`` (``domain.drift``; ``now``: the end of the
    recent window, default the clock), told when the coefficients in force were applied (from their
    version's name), so a shift that a calibration made is not taken for drift. Its arrays are on small
    pages as the analysis' (``small_pages``): on huge pages the kernel's zeroing of them took 2.1 s of
    CPU of the drift check's 2.7 s at ten million events, 0.6-0.7 s on small pages."""
    from autopack_pipeline.domain.coefficients import calibrated_at
    from autopack_pipeline.domain.drift import detect_drift  # here: its module is the drift check's alone
    from autopack_pipeline.services.seed_files import load_coefficients_for

    unread = None
    try:
        applied = calibrated_at(load_coefficients_for(settings).version)
    except (OSError, ValueError) as exc:  # nothing is known of a calibration: the report says why
        applied, unread = None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    with small_pages():
        report = detect_drift(every_event, now=now, calibrated_at=applied)
    return report if unread is None else replace(report, coefficients_unread=unread)


def task_stage(engine: Engine, settings: Settings, every_event: EventArrays, samples: SampleSummary,
               metrics: TierMetrics, calibration: CalibrationOutcome | dict[str, Any] | None, *,
               min_samples: int = MIN_GROUP_SAMPLES, source: dict[str, Any] | None = None,
               extra_insights: list[Insight] | None = None, outcome_window_days: float = 7,
               now: datetime | None = None) -> tuple[list[GeneratedTask], TaskRefresh]:
    """Improvement tasks from the stages before and from the drift of every event (computed here
    unless ``extra_insights`` already holds it)."""
    # Here, not at import: the task stores load SQLAlchemy's ORM and the task models, and the drift and the
    # tasks' rules their own modules, which `calibrate` (it makes no tasks) would otherwise pay for at every start.
    from autopack_pipeline.domain.drift import drift_insights
    from autopack_pipeline.services.task_generation import improvement_tasks

    if extra_insights is None:
        extra_insights = drift_insights(drift_report(every_event, settings))
    return improvement_tasks(engine, settings, metrics, samples.group_counts, calibration, min_samples=min_samples,
                             events=every_event, source=source, extra_insights=extra_insights,
                             outcome_window_days=outcome_window_days, now=now)


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` computed, stage by stage (``tasks`` and ``stored`` only when asked)."""

    windowed: WindowedEvents
    samples: SampleSummary
    metrics: TierMetrics
    calibration: CalibrationOutcome
    tasks: list[GeneratedTask] | None = None
    stored: TaskRefresh | None = None
    # Wall seconds per stage ("samples", "metrics", "calibration", "tasks"): cheap to keep, and how
    # the benchmarks break the figure down.
    timings: dict[str, float] = field(default_factory=dict)


def analyse_events(settings: Settings, windowed: WindowedEvents, every_event: EventArrays, *,
                   telemetry_db: Database | None = None, dedup: bool = True, under_multiplier: float = UNDER_TOLERANCE,
                   min_samples: int = MIN_GROUP_SAMPLES, gate_metrics_only: bool = False,
                   **calibration: Any) -> Analysis:
    """Samples, metrics and calibration of ``windowed`` (``every_event`` gives the last 7 days' Tier 1),
    one stage after the other. ``telemetry_db`` is what :func:`calibration_stage` re-expresses the predictions
    with; without one nothing is read from a database. ``gate_metrics_only``: the metrics are
    :func:`gate_metrics_stage`'s, for a caller that reads nothing else of them (``calibrate``)."""
    with small_pages():
        return _analysed(settings, windowed, every_event, telemetry_db=telemetry_db, dedup=dedup,
                         under_multiplier=under_multiplier, min_samples=min_samples,
                         gate_metrics_only=gate_metrics_only, **calibration)


def _analysed(settings: Settings, windowed: WindowedEvents, every_event: EventArrays, *, telemetry_db: Database | None,
              dedup: bool, under_multiplier: float, min_samples: int, gate_metrics_only: bool,
              **calibration: Any) -> Analysis:
    """:func:`analyse_events`' stages."""
    timings: dict[str, float] = {}

    def timed(name: str, began: float) -> None:
        timings[name] = time.perf_counter() - began

    def found_samples() -> SampleSummary:
        began = time.perf_counter()
        samples = sample_stage(windowed, dedup=dedup)
        timed("samples", began)
        return samples

    # The clean samples are found on a second thread while this one computes the tier metrics, which
    # only read their count: both are numpy over every event (sorts, partitions, bincounts) and let go
    # of the GIL, so on two cores the samples cost no wall time; each holds its own few hundred MB,
    # together still below the calibration's peak. The metrics' last-7-days block follows the samples
    # there (the samples took less time than the metrics by more than it costs).
    with ThreadPoolExecutor(max_workers=1) as pool:
        sampling = pool.submit(found_samples)
        began = time.perf_counter()
        if gate_metrics_only:
            metrics = gate_metrics_stage(windowed, sampling, under_multiplier=under_multiplier)
        else:
            recent = pool.submit(last_7_days_tier1, every_event, under_multiplier=under_multiplier)
            metrics = metrics_stage(windowed, sampling, every_event, under_multiplier=under_multiplier,
                                    last_7_days=recent)
        timed("metrics", began)
        samples = sampling.result()
    release_freed_memory()  # what the samples' thread freed, kept by its malloc arena (storage.process_memory)
    began = time.perf_counter()
    outcome = calibration_stage(telemetry_db, settings, windowed, metrics, samples, dedup=dedup,
                                min_samples=min_samples, **calibration)
    timed("calibration", began)
    return Analysis(windowed, samples, metrics, outcome, timings=timings)


def analyse(telemetry_db: Database, settings: Settings, every_event: EventArrays, *, dedup: bool = True,
            under_multiplier: float = UNDER_TOLERANCE, min_samples: int = MIN_GROUP_SAMPLES,
            output_dir: Path | None = None, generate: bool = False, source: dict[str, Any] | None = None,
            outcome_window_days: float = 7, now: datetime | None = None, gate_metrics_only: bool = False,
            **calibration: Any) -> Analysis:
    """The whole analysis of ``every_event``: the window (``analysis.analysis_window``), samples,
    metrics, calibration (``calibration``: method, force, write_reports, ...) and, with ``generate``,
    the tasks stored in the database. ``gate_metrics_only`` (not with ``generate``, whose tasks read
    every figure): see :func:`analyse_events`."""
    if gate_metrics_only and generate:
        raise ValueError("the tasks read every metric: gate_metrics_only cannot be combined with generate")
    windowed = events_for_analysis(settings, every_event)
    analysis = analyse_events(settings, windowed, every_event, telemetry_db=telemetry_db, dedup=dedup,
                              under_multiplier=under_multiplier, min_samples=min_samples, output_dir=output_dir,
                              gate_metrics_only=gate_metrics_only, **calibration)
    if not generate:
        return analysis
    began = time.perf_counter()
    from autopack_pipeline.storage.handle import as_handle

    tasks, stored = task_stage(as_handle(telemetry_db).engine, settings, every_event, analysis.samples,
                               analysis.metrics, analysis.calibration, min_samples=min_samples, source=source,
                               outcome_window_days=outcome_window_days, now=now)
    timings = {**analysis.timings, "tasks": time.perf_counter() - began}
    return replace(analysis, tasks=tasks, stored=stored, timings=timings)
