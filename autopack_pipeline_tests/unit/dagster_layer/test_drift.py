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
    detect_drift,
    drift_insights,
    ks_two_sample,
    population_stability_index,
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
    assert shifted.p1 == pytest.approx(0.10)


def test_cusum_clamps_a_reference_rate_of_zero():
    result = bernoulli_cusum(np.array([True] * 5), p0=0.0, h=5.0)
    assert result.p0 == 0.01 and result.alarm_index is not None


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
    events = pd.concat(
        [
            synthetic_events(n_reference=200, n_recent=10, category="tests", complexity="low"),
            synthetic_events(n_reference=12, n_recent=200, category="docs", complexity="high", seed=9),
        ]
    )
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
