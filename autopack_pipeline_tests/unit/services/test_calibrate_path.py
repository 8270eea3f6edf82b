"""What ``calibrate`` computes on its own path gives what the whole pipeline gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from autopack_pipeline.services.analysis import WindowedEvents
from autopack_pipeline.services.pipeline import analyse_events, gate_metrics_stage, metrics_stage, sample_stage
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.frames import event_arrays_from_frame
from autopack_pipeline_tests.unit.domain.test_analysis_against_oracle import random_events


def test_the_gate_metrics_are_the_full_metrics_gate_figures():
    windowed = WindowedEvents(event_arrays_from_frame(random_events(5, 600, phases=10)), None)
    samples = sample_stage(windowed)
    full = metrics_stage(windowed, samples, windowed.events, under_multiplier=1.2)
    gate = gate_metrics_stage(windowed, samples, under_multiplier=1.2)
    assert gate.tier1 == full.tier1 and gate.group_tier1 == full.group_tier1
    assert gate.clean_samples == full.clean_samples and gate.under_multiplier == full.under_multiplier
    assert gate.window == full.window
    settings = load_settings()
    for force in (True, False):
        whole = analyse_events(settings, windowed, windowed.events, force=force, write_reports=False)
        alone = analyse_events(settings, windowed, windowed.events, force=force, write_reports=False,
                               gate_metrics_only=True)
        assert alone.calibration.as_dict() == whole.calibration.as_dict()


def test_a_window_holding_every_event_is_the_events_themselves():
    from autopack_pipeline.domain.windows import (
        TimeWindow,
        events_in_window,
        latest_day,
        rows_in_window,
        trailing_days,
    )

    arrays = event_arrays_from_frame(random_events(6, 300, phases=10, missing=0.0))
    years = trailing_days(3650, latest_day(arrays))
    assert events_in_window(arrays, years) is arrays  # no copy of every column
    # Some events outside (before the window, or without a timestamp): a copy of those inside, as before.
    middle = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        microseconds=int(np.median(arrays.timestamp_us.values)))
    for events, window in ((arrays, TimeWindow(middle, years.end)),
                           (event_arrays_from_frame(random_events(6, 300, phases=10)), years)):
        inside = rows_in_window(events, window)
        assert 0 < inside.sum() < len(events)
        windowed, taken = events_in_window(events, window), events.take(inside)
        for name in ("event_id", "timestamp_us", "predicted", "actual"):
            assert np.array_equal(getattr(windowed, name).values, getattr(taken, name).values)


def test_the_last_7_days_found_on_the_samples_thread_are_the_metrics_own():
    from concurrent.futures import ThreadPoolExecutor

    from autopack_pipeline.services.pipeline import last_7_days_tier1

    windowed = WindowedEvents(event_arrays_from_frame(random_events(7, 600, phases=10)), None)
    samples = sample_stage(windowed)
    alone = metrics_stage(windowed, samples, windowed.events, under_multiplier=1.2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        handed = metrics_stage(windowed, samples, windowed.events, under_multiplier=1.2,
                               last_7_days=pool.submit(last_7_days_tier1, windowed.events, under_multiplier=1.2))
    assert handed.as_dict() == alone.as_dict()
    # The block itself: Tier 1 of the events of the newest 7 days, at the metrics' tolerance.
    from autopack_pipeline.domain.analysis import tier1_arrays
    from autopack_pipeline.domain.windows import events_in_window, latest_day, trailing_days

    week = events_in_window(windowed.events, trailing_days(7, latest_day(windowed.events)))
    assert alone.as_dict()["last_7_days"]["tier1"] == tier1_arrays(week, under_multiplier=1.2)
    assert alone.as_dict()["last_7_days"]["tier1"] != tier1_arrays(week)  # the tolerance shows
    whole = analyse_events(load_settings(), windowed, windowed.events, force=True, write_reports=False,
                           under_multiplier=1.2)
    assert whole.metrics.as_dict() == alone.as_dict()
