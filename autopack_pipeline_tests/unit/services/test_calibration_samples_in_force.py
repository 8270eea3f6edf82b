"""The clean samples ``calibrate`` works on after re-expressing the predictions: those found before are
kept only when the re-expressed events have them too (the same events, predictions known at the same
rows); an event whose prediction only the re-run gives joins them. The retries and the economics' rows
are those of a window that leaves events out. The re-expressed events keep the figures cached on them
that read no prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autopack_pipeline.domain.analysis import clean_sample_rows, sample_groups
from autopack_pipeline.domain.reprediction import PredictionInputs, arrays_in_force
from autopack_pipeline.services.calibrating import calibrate
from autopack_pipeline.services.seed_files import load_coefficients_for
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.frames import event_arrays_from_frame

GROUPS = [("implementation", "low"), ("implementation", "medium"), ("tests", "low"), ("docs", "low")]
DELIVERABLES = [["src/a.py (new)"], ["src/b.py", "tests/test_b.py"], ["docs/guide.md"], ["src/c.py"] * 3]


def _events(unrecorded_share: float) -> tuple[pd.DataFrame, PredictionInputs]:
    """400 calls in four groups, each with stored inputs; ``unrecorded_share`` of them kept no prediction."""
    rng = np.random.default_rng(11)
    n = 400
    groups = [GROUPS[i] for i in rng.integers(0, len(GROUPS), n)]
    recorded = rng.integers(2000, 6000, n)
    frame = pd.DataFrame({
        "event_id": np.arange(1, n + 1), "run_id": "r", "phase_id": [f"p{i}" for i in range(n)],
        "category": [g[0] for g in groups], "complexity": [g[1] for g in groups],
        "predicted_output_tokens": pd.array([None if rng.random() < unrecorded_share else int(v) for v in recorded],
                                            dtype="Int64"),
        "actual_output_tokens": rng.integers(1000, 9000, n), "selected_budget": 16384, "success": True,
        "truncated": False})
    inputs = PredictionInputs.from_rows(np.arange(1, n + 1), [DELIVERABLES[i % len(DELIVERABLES)] for i in range(n)])
    return frame, inputs


@pytest.mark.parametrize("unrecorded_share", [0.0, 0.3])
def test_the_samples_are_those_of_the_re_expressed_events(unrecorded_share):
    settings = load_settings()
    frame, inputs = _events(unrecorded_share)
    arrays = event_arrays_from_frame(frame)
    found = clean_sample_rows(arrays)  # found before the re-prediction, as the pipeline's sample stage does
    outcome = calibrate(arrays, settings, force=True, write_reports=False, prediction_inputs=inputs,
                        window_versions=0, clean=found, groups=sample_groups(arrays, found.mask))

    in_force, _counts = arrays_in_force(arrays, inputs, load_coefficients_for(settings))
    expected = calibrate(in_force, settings, force=True, write_reports=False)
    def sizes(results):
        return {name: [(g.category, g.complexity, g.sample_count) for g in result.groups]
                for name, result in results.items()}

    counts = sizes(outcome.results)
    assert counts == sizes(expected.results)
    assert sum(n for _cat, _cx, n in counts["coverage"]) == clean_sample_rows(in_force).count
    assert (found.count < clean_sample_rows(in_force).count) == (unrecorded_share > 0)  # the re-run adds some


def test_re_expressed_events_keep_the_figures_that_read_no_prediction():
    frame, inputs = _events(0.3)
    arrays = event_arrays_from_frame(frame)
    cached = (arrays.canonical_groups, arrays.truncated_calls, arrays.phase_key)
    in_force, _counts = arrays_in_force(arrays, inputs, load_coefficients_for(load_settings()))
    assert (in_force.canonical_groups, in_force.truncated_calls, in_force.phase_key) == cached
    assert all(mine is theirs for mine, theirs in
               zip((in_force.canonical_groups, in_force.truncated_calls, in_force.phase_key), cached))
    assert in_force.predicted is not arrays.predicted and bool(in_force.predicted.notna().all())


def test_the_retries_and_the_economics_are_the_windows_when_it_leaves_events_out():
    """The retries and the economics' rows are those of the window's events once it leaves the older
    version out: here its retries fit half the time, where the older version's were all cut again."""
    calls = []
    for version, cut_again in (("v1", (True, True)), ("v2", (False, True))):
        for category, complexity in GROUPS:
            for i, length in enumerate(np.exp(np.linspace(-0.6, 0.6, 58)) * 3424):
                calls.append((version, category, complexity, f"{version}-{category}-{complexity}-{i}", 1,
                              int(length), 8192))
            for i, again in enumerate(cut_again):
                phase = f"{version}-{category}-{complexity}-cut-{i}"
                calls.append((version, category, complexity, phase, 1, 8192, 8192))
                calls.append((version, category, complexity, phase, 2, 10240 if again else 9000, 10240))
    n = len(calls)
    frame = pd.DataFrame({
        "event_id": np.arange(1, n + 1), "run_id": "r", "phase_id": [c[3] for c in calls],
        "category": [c[1] for c in calls], "complexity": [c[2] for c in calls], "attempt": [c[4] for c in calls],
        "predicted_output_tokens": 3424, "actual_output_tokens": [c[5] for c in calls],
        "selected_budget": 8192, "actual_max_tokens": [c[6] for c in calls],
        "success": [c[5] < c[6] for c in calls], "truncated": [c[5] >= c[6] for c in calls]})
    inputs = PredictionInputs.from_rows(np.arange(1, n + 1), [["src/a.py (new)"]] * n, [c[0] for c in calls])
    outcome = calibrate(event_arrays_from_frame(frame), load_settings(), force=True, write_reports=False,
                        prediction_inputs=inputs, window_versions=1)
    assert outcome.window["events_dropped"] == n // 2
    pooled = [g for g in outcome.calibration_section["groups"] if g["status"] == "pooled"]
    assert pooled and all("4 of the window's 8 retries cut again" in g["note"] for g in pooled), pooled[0]["note"]
    # Each group's calls priced are the window's: 58 clean calls and two phases of two attempts.
    assert [e["cost"]["now"]["calls"] for e in outcome.economics] == [62] * len(GROUPS)
