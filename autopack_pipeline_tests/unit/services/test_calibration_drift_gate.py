"""The loop's gate reopens when the estimator's error moved since the previous coefficient version,
even when this round met Tier 1 (budgets fitted before a drift hold only by luck)."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.services.calibration_apply import calibrate_in_force
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline_tests.support.calibration_cli_support import ONE_NEW_FILE

# The one group whose estimate of ONE_NEW_FILE is the recorded 3,424 tokens: an event from before the
# version column is re-predicted by the estimator, so any other group would move by that alone.
GROUPS = [("implementation", "low")]


def _store_round(engine, run_id: str, version: str | None, ratio: float) -> None:
    """80 calls a group whose outputs sit at ``ratio`` (spread +-10%) of the recorded 3,424-token
    prediction, well inside an 8,192 budget: no underestimation, no truncation."""
    for category, complexity in GROUPS:
        for i, spread in enumerate(np.exp(np.linspace(-0.1, 0.1, 80))):
            phase = f"{category}-{complexity}-{i}"
            ensure_run_and_phase(engine, run_id, phase, category=category, complexity=complexity)
            assert record_estimation_event(engine, EstimationEvent(
                run_id=run_id, phase_id=phase, category=category, complexity=complexity,
                deliverables=ONE_NEW_FILE, predicted_output_tokens=3424,
                actual_output_tokens=int(3424 * ratio * spread), selected_budget=8192, actual_max_tokens=8192,
                success=True, truncated=False, stop_reason="end_turn", model="claude-sonnet-4-5",
                coefficients_version=version), respect_flag=False)


def test_a_drift_since_the_previous_version_reopens_a_gate_tier1_closes(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    settings = load_settings()
    _store_round(engine, "run-old", None, 0.5)  # before the version column: the oldest version
    _store_round(engine, "run-new", "v5-step1", 0.8)  # the version in force: outputs 1.6x longer
    closed = calibrate_in_force(engine, settings, write_reports=False, window_versions=2)
    assert not closed.gate.open and "Tier 1 is within targets" in closed.gate.summary()
    reopened = calibrate_in_force(engine, settings, write_reports=False, window_versions=2, reopen_on_drift=True)
    assert reopened.gate.open, reopened.gate.summary()
    assert "the estimator's error moved since the previous version" in reopened.gate.summary()
    assert reopened.window["drift"]["moved"]
    engine.dispose()


def test_no_drift_keeps_the_gate_closed(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    _store_round(engine, "run-old", None, 0.6)
    _store_round(engine, "run-new", "v5-step1", 0.6)
    outcome = calibrate_in_force(engine, load_settings(), write_reports=False, window_versions=2,
                                 reopen_on_drift=True)
    assert not outcome.gate.open
    engine.dispose()


def test_the_prediction_inputs_are_read_once_the_gate_opens_and_let_go_before_the_methods_run(
        sqlite_url, monkeypatch):
    """A gate that stays closed reads none; an open one reads them once, and they are gone (held by no
    one) before the methods run: the calibration's peak memory comes after."""
    import gc
    import weakref

    from autopack_pipeline.services import calibrating
    from autopack_pipeline.storage import prediction_inputs

    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    _store_round(engine, "run-new", "v5-step1", 0.8)
    read: list[weakref.ref] = []
    real_read = prediction_inputs.read_prediction_inputs

    def spy(*args, **kwargs):
        inputs = real_read(*args, **kwargs)
        read.append(weakref.ref(inputs))
        return inputs

    monkeypatch.setattr(prediction_inputs, "read_prediction_inputs", spy)
    closed = calibrate_in_force(engine, load_settings(), write_reports=False, window_versions=2)
    assert not closed.gate.open and read == []
    alive_at_methods: list[bool] = []
    real_methods = calibrating.calibrations_arrays

    def methods(*args, **kwargs):
        gc.collect()
        alive_at_methods.append(read[0]() is not None)
        return real_methods(*args, **kwargs)

    monkeypatch.setattr(calibrating, "calibrations_arrays", methods)
    opened = calibrate_in_force(engine, load_settings(), write_reports=False, window_versions=2, force=True)
    assert opened.gate.open and len(read) == 1 and alive_at_methods == [False]
    assert opened.reprediction == {"recorded": 80, "scaled": 0, "rerun": 0, "kept": 0}
    engine.dispose()
