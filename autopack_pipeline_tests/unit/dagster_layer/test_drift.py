"""Drift statistics on synthetic telemetry: quiet when nothing moved, loud when the error shifted.

(The pure functions live in domain/drift.py; the tests sit with the drift checks that use them.)
"""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from autopack_pipeline.domain.drift import (
    DriftThresholds,
    bernoulli_cusum,
    cusum_decision_interval,
    detect_drift,
    drift_insights,
    ks_two_sample,
    population_stability_index,
    shifted_rate,
)
from autopack_pipeline.storage.frames import as_event_arrays, conform_events_frame

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)



def synthetic_events(
    *, n_reference=200, n_recent=200, shift=0.0, spread=0.25, category="implementation", complexity="medium", seed=7
) -> pd.DataFrame:
    """Events whose log(actual/predicted) is normal; the recent window's mean is moved by ``shift``."""
    rng = np.random.default_rng(seed)
    predicted = rng.integers(2_000, 9_000, n_reference + n_recent)
    log_ratio = np.concatenate([rng.normal(-0.2, spread, n_reference), rng.normal(-0.2 + shift, spread, n_recent)])
    actual = np.maximum(1, np.round(predicted * np.exp(log_ratio))).astype(int)
    reference_times = [NOW - timedelta(days=30) + timedelta(hours=2 * i) for i in range(n_reference)]
    recent_times = [NOW - timedelta(days=6) + timedelta(minutes=30 * i) for i in range(n_recent)]
    n = n_reference + n_recent
    return conform_events_frame(
        pd.DataFrame(
            {
                "event_id": range(1, n + 1),
                "run_id": ["r"] * n,
                "phase_id": [f"p{i}" for i in range(n)],
                "timestamp": reference_times + recent_times,
                "category": [category] * n,
                "complexity": [complexity] * n,
                "predicted_output_tokens": predicted,
                "actual_output_tokens": actual,
                "success": [True] * n,
                "truncated": [False] * n,
            }
        )
    )


def test_psi_is_near_zero_for_one_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 2_000)
    assert population_stability_index(reference, rng.normal(0, 1, 2_000)) < 0.02
    assert population_stability_index(reference, rng.normal(1, 1, 2_000)) > 0.5


def test_psi_survives_tied_reference_values_and_empty_bins():
    reference = np.array([0.0] * 50 + [1.0] * 50)
    assert np.isfinite(population_stability_index(reference, np.full(40, 5.0)))
    with pytest.raises(ValueError):
        population_stability_index(reference, np.array([]))


def test_psi_bins_count_as_searching_every_value_among_the_edges():
    """The bins are counted from the sorted values (where the edges fall among them); a value equal to an
    edge goes to the bin above it, as searching it among the edges (side right) puts it."""
    from autopack_pipeline.domain.drift import _bin_counts

    rng = np.random.default_rng(4)
    values = np.round(rng.normal(0, 1, 5_000), 1)  # many values equal to an edge
    edges = np.unique(np.round(np.quantile(values, np.linspace(0, 1, 11))[1:-1], 1))
    expected = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    assert np.array_equal(_bin_counts(np.sort(values), edges), expected)
    assert np.array_equal(_bin_counts(np.array([]), edges), np.zeros(edges.size + 1, dtype=int))


def test_ks_separates_shifted_samples():
    rng = np.random.default_rng(2)
    _, p_same = ks_two_sample(rng.normal(0, 1, 300), rng.normal(0, 1, 300))
    d_shift, p_shift = ks_two_sample(rng.normal(0, 1, 300), rng.normal(0.6, 1, 300))
    assert p_same > 0.01
    assert p_shift < 1e-6 and d_shift > 0.2


def test_cusum_stays_quiet_in_control_and_alarms_when_the_rate_doubles():
    rng = np.random.default_rng(3)
    in_control = bernoulli_cusum(rng.random(300) < 0.05, p0=0.05, h=5.0)
    assert in_control.alarm_index is None and in_control.max_statistic < 5.0
    shifted = bernoulli_cusum(rng.random(300) < 0.25, p0=0.05, h=5.0)
    assert shifted.alarm_index is not None and shifted.alarm_index < 100
    assert shifted.p1 == pytest.approx(0.1 / 0.95 / (1 + 0.1 / 0.95))  # twice the odds of 5%


def test_cusum_clamps_a_reference_rate_of_zero():
    result = bernoulli_cusum(np.array([True] * 8), p0=0.0, h=5.0)  # each step log(2)
    assert result.p0 == 0.001 and result.alarm_index is not None


def _cusum_step_by_step(indicators, p0, p1):
    """The recursion as written, one event at a time: what the closed form must reproduce."""
    up, down = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
    s, path = 0.0, []
    for x in indicators:
        s = max(0.0, s + (up if x else down))
        path.append(s)
    return np.array(path)


@pytest.mark.parametrize("p0", [0.02, 0.3, 0.7, 0.98])
def test_cusum_in_closed_form_follows_the_recursion(p0):
    rng = np.random.default_rng(int(p0 * 100))
    indicators = rng.random(3_000) < min(0.99, p0 * 1.3)
    path = _cusum_step_by_step(indicators, p0, shifted_rate(p0))
    h = float(np.quantile(path, 0.9))
    result = bernoulli_cusum(indicators, p0, h)
    assert result.max_statistic == pytest.approx(path.max(), rel=1e-9, abs=1e-9)
    assert result.final_statistic == pytest.approx(path[-1], rel=1e-9, abs=1e-9)
    assert result.alarm_index == int(np.flatnonzero(path > h)[0])
    assert bernoulli_cusum(np.array([], dtype=bool), p0, h).max_statistic == 0.0


def test_shifted_rate_doubles_the_odds_at_any_rate():
    assert shifted_rate(0.5) == pytest.approx(2 / 3)
    assert shifted_rate(0.01) == pytest.approx(0.0198, abs=2e-4)  # about twice a small rate
    assert 0.99 < shifted_rate(0.99) < 1.0


@pytest.mark.parametrize("p0", [0.05, 0.3, 0.6, 0.95])
def test_cusum_false_alarms_stay_within_their_bound_on_long_windows(p0):
    """With the rate unchanged over 5,000 recent events, at most 1% of windows may alarm (the bound); a
    fixed h = 5 alarms in a fifth of them or more."""
    rng = np.random.default_rng(round(p0 * 1000))
    p1 = shifted_rate(p0)
    h = cusum_decision_interval(5_000, p1, false_alarm=0.01, least=5.0)
    windows = rng.random((200, 5_000)) < p0
    alarms = sum(bernoulli_cusum(w, p0, h, p1).alarm_index is not None for w in windows)
    fixed = sum(bernoulli_cusum(w, p0, 5.0, p1).alarm_index is not None for w in windows)
    assert alarms <= 4, (alarms, h)  # 2 expected at most; binomial(200, 0.01) exceeds 4 once in 20
    assert fixed >= 40, fixed


def test_decision_interval_grows_with_the_window_and_keeps_its_floor():
    p1 = shifted_rate(0.1)
    assert cusum_decision_interval(30, p1, 0.01, least=5.0) == pytest.approx(max(5.0, np.log(30 * p1 / 0.01)))
    assert cusum_decision_interval(100_000, p1, 0.01) > cusum_decision_interval(1_000, p1, 0.01)
    assert cusum_decision_interval(3, p1, 0.5, least=5.0) == 5.0


def _underestimation_world(rates, n_reference, n_recent, *, seed, retries=False):
    """Events whose underestimation indicator is Bernoulli(rate) per window: ``rates`` = (reference,
    recent). ``retries``: each underestimated call is followed by a second call of the same phase,
    underestimated again (as a truncated call's retry with the same prediction is)."""
    rng = np.random.default_rng(seed)
    under = np.concatenate([rng.random(n_reference) < rates[0], rng.random(n_recent) < rates[1]])
    ratio = np.where(under, rng.uniform(1.2, 2.0, under.size), rng.uniform(0.5, 1.05, under.size))
    times = ([NOW - timedelta(days=60) + timedelta(seconds=40 * i) for i in range(n_reference)]
             + [NOW - timedelta(days=6) + timedelta(seconds=40 * i) for i in range(n_recent)])
    phase = [f"p{i}" for i in range(under.size)]
    attempt = [1] * under.size
    if retries:
        again = np.flatnonzero(under)
        ratio = np.concatenate([ratio, ratio[again] * 1.01])
        times += [times[i] + timedelta(seconds=5) for i in again]
        phase += [phase[i] for i in again]
        attempt += [2] * len(again)
        order = np.argsort([t.timestamp() for t in times], kind="stable")
        ratio, times = ratio[order], [times[i] for i in order]
        phase, attempt = [phase[i] for i in order], [attempt[i] for i in order]
    n = len(ratio)
    predicted = np.full(n, 4_000)
    return as_event_arrays(conform_events_frame(pd.DataFrame({
        "event_id": range(1, n + 1), "run_id": ["r"] * n, "phase_id": phase, "attempt": attempt, "timestamp": times,
        "category": ["tests"] * n, "complexity": ["medium"] * n, "predicted_output_tokens": predicted,
        "actual_output_tokens": np.round(predicted * ratio).astype(int), "success": [True] * n,
        "truncated": [False] * n})))


@pytest.mark.parametrize("rate", [0.08, 0.7, 0.97])
def test_an_unchanged_rate_raises_no_cusum_alarm_over_a_long_recent_window(rate):
    """The earlier tuning (a doubled rate, the reference rate capped at 45%, h = 5) alarmed at once on any
    group underestimated more than 45% of the time, and on long windows whatever the rate."""
    (group,) = detect_drift(_underestimation_world((rate, rate), 20_000, 12_000, seed=5), now=NOW).groups
    assert group.n_recent == 12_000 and not group.cusum_alarm, group.cusum


@pytest.mark.parametrize(("before", "after"), [(0.05, 0.15), (0.6, 0.8)])
def test_a_rising_underestimation_rate_raises_the_cusum_alarm(before, after):
    (group,) = detect_drift(_underestimation_world((before, after), 20_000, 3_000, seed=6), now=NOW).groups
    assert group.cusum_alarm and group.cusum.alarm_index < 1_500, group.cusum
    assert group.cusum.h == pytest.approx(np.log(3_000 * group.cusum.p1 / 0.01))


def test_retries_of_a_phase_count_once():
    """A truncated call's retry repeats its phase's error: counted as a second event, it would make
    clusters the CUSUM reads as a rising rate. Each phase counts once, by its last attempt."""
    arrays = _underestimation_world((0.3, 0.3), 20_000, 12_000, seed=7, retries=True)
    assert len(arrays) > 38_000
    (group,) = detect_drift(arrays, now=NOW).groups
    assert (group.n_reference, group.n_recent) == (20_000, 12_000)
    assert not group.cusum_alarm, group.cusum


def test_unshifted_group_raises_no_signal_and_no_insight():
    report = detect_drift(as_event_arrays(synthetic_events(shift=0.0)), now=NOW)
    (group,) = report.groups
    assert (group.n_reference, group.n_recent) == (200, 200)
    assert group.psi < 0.25 and not group.drifted, group
    assert drift_insights(report) == []


def test_shifted_group_is_flagged_by_all_three_and_becomes_an_insight():
    report = detect_drift(as_event_arrays(synthetic_events(shift=0.5)), now=NOW)
    (group,) = report.groups
    assert group.signals == ["psi", "ks", "cusum"]
    assert group.recent_under_rate > group.reference_under_rate
    (insight,) = drift_insights(report)
    assert insight.kind == "drift" and insight.subject == "implementation/medium"
    assert insight.requires_approval and insight.confidence == 0.9
    assert insight.evidence["thresholds"]["psi"] == 0.25
    assert "implementation/medium" in report.summary()


def test_groups_short_of_events_in_either_window_are_skipped_with_counts():
    docs = synthetic_events(n_reference=12, n_recent=200, category="docs", complexity="high", seed=9)
    docs["run_id"] = "r2"  # phases of another run: the same phase ids are other phases
    events = pd.concat([synthetic_events(n_reference=200, n_recent=10, category="tests", complexity="low"), docs])
    report = detect_drift(as_event_arrays(events), now=NOW, thresholds=DriftThresholds(min_events_per_window=30))
    assert report.groups == []
    assert report.skipped == {"tests/low": (200, 10), "docs/high": (12, 200)}
    assert "no group has 30 events" in report.summary()


def test_category_spellings_are_one_group_and_future_events_are_ignored():
    events = synthetic_events(shift=0.0)
    events.loc[events.index[::2], "category"] = "IMPLEMENT_FEATURE"
    future = synthetic_events(n_reference=0, n_recent=5, seed=11)
    future["timestamp"] = future["timestamp"] + pd.Timedelta(days=30)
    report = detect_drift(as_event_arrays(pd.concat([events, future], ignore_index=True)), now=NOW)
    assert [g.subject for g in report.groups] == ["implementation/medium"]
    assert report.events_considered == 400


def test_a_shift_a_calibration_made_inside_the_window_becomes_no_task():
    """After apply-calibration the error moves by design: the checks still show it, with the reason, and no
    person is asked to investigate. A rise in underestimation after it is drift all the same."""
    applied = NOW - timedelta(days=2)
    fell = as_event_arrays(synthetic_events(shift=-0.5))
    report = detect_drift(fell, now=NOW, calibrated_at=applied)
    (group,) = report.groups
    assert group.signals == ["psi", "ks"] and group.calibration_effect
    assert group.recent_under_rate < group.reference_under_rate
    assert drift_insights(report) == []
    assert "the calibration's effect (no task)" in report.summary() and "implementation/medium" in report.summary()
    assert len(drift_insights(detect_drift(fell, now=NOW))) == 1  # without the calibration: a task
    rose = detect_drift(as_event_arrays(synthetic_events(shift=0.5)), now=NOW, calibrated_at=applied)
    assert not rose.groups[0].calibration_effect and len(drift_insights(rose)) == 1


def test_after_the_window_the_reference_starts_when_the_coefficients_in_force_were_applied():
    """Eight days after an apply, the reference holds only the events under the new coefficients before
    the last 7 days (here none): too few to compare, so the group is skipped, not flagged for the
    calibration's own shift."""
    fell = as_event_arrays(synthetic_events(shift=-0.5))  # reference 30 to 13 days back
    applied = NOW - timedelta(days=8)
    report = detect_drift(fell, now=NOW, calibrated_at=applied)
    assert report.groups == [] and report.reference_start == applied and report.calibrated_at is None
    assert report.skipped == {"implementation/medium": (0, 200)}
    assert "since the coefficients in force were applied" in report.summary()
    assert drift_insights(report) == []
    # Applied before the whole history: the reference is all of it, as without a calibration.
    assert detect_drift(fell, now=NOW, calibrated_at=NOW - timedelta(days=60)).groups[0].n_reference == 200
