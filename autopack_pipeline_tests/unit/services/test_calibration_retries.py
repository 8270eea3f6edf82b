"""calibrate reads the retry's cut-again chance from the stored retries (one event per attempt)."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.services import calibrating
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase, read_events, record_estimation_event
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline_tests.support.calibration_cli_support import ONE_NEW_FILE


def _call(engine, phase_id, attempt, actual, ceiling, category, complexity):
    cut = actual >= ceiling
    assert record_estimation_event(engine, EstimationEvent(
        run_id="run-1", phase_id=phase_id, category=category, complexity=complexity, deliverables=ONE_NEW_FILE,
        predicted_output_tokens=3424, actual_output_tokens=min(actual, ceiling), selected_budget=8192,
        actual_max_tokens=ceiling, success=not cut, truncated=cut, stop_reason="max_tokens" if cut else "end_turn",
        model="claude-sonnet-4-5", attempt=attempt), respect_flag=False)


def test_the_pooled_margins_name_the_stored_retries_cut_again(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    lengths = np.exp(np.linspace(-0.6, 0.6, 58)) * 3424  # 58 clean calls a group, inside the first budget
    groups = [("implementation", "low"), ("implementation", "medium"), ("tests", "low"), ("tests", "medium")]
    for category, complexity in groups:
        for i, length in enumerate(lengths):
            phase = f"{category}-{complexity}-{i}"
            ensure_run_and_phase(engine, "run-1", phase, category=category, complexity=complexity)
            _call(engine, phase, 1, int(length), 8192, category, complexity)
        # Two phases cut at 8192 and retried at 10240: one fits, one is cut again (outputs 9000 and 11000).
        for i, length in enumerate((9000, 11000)):
            phase = f"{category}-{complexity}-cut-{i}"
            ensure_run_and_phase(engine, "run-1", phase, category=category, complexity=complexity)
            _call(engine, phase, 1, length, 8192, category, complexity)
            _call(engine, phase, 2, length, 10240, category, complexity)
    outcome = calibrating.calibrate(read_events(engine), load_settings(), force=True, write_reports=False)
    pooled = [g for g in outcome.calibration_section["groups"] if g["status"] == "pooled"]
    assert pooled
    for group in pooled:
        assert "4 of the window's 8 retries cut again" in group["note"], group["note"]
    engine.dispose()
