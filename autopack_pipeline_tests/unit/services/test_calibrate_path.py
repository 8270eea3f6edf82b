"""What ``calibrate`` computes on its own path gives what the whole pipeline gives."""

from __future__ import annotations

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
