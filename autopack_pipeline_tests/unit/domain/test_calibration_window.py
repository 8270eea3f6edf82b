"""What calibration learns from: the recent coefficient versions, the newest alone after a drift."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.domain.calibration_window import choose_window, error_moved

GROUPS = ("docs/low", "tests/low", "implementation/medium", "tests/medium")


def _history(shift_last: float = 0.0, per_group: int = 60, seed: int = 3):
    """Three versions (v0, v1, v2) of ``per_group`` calls in each of four groups; the error of v2's
    calls is shifted by ``shift_last`` on the log scale (0.26 = the model writes 30% longer)."""
    rng = np.random.default_rng(seed)
    versions, groups, values = [], [], []
    for version in ("v0", "v1", "v2"):
        for group in GROUPS:
            noise = 0.5 * rng.standard_t(3, per_group)
            values.extend(noise + (shift_last if version == "v2" else 0.0))
            versions.extend([version] * per_group)
            groups.extend([group] * per_group)
    order = np.arange(len(versions), dtype=float)
    return versions, order, np.array(groups, dtype=object), np.array(values), np.zeros(len(values), dtype=bool)


def test_the_window_keeps_the_last_versions_and_drops_older_ones():
    versions, order, groups, values, censored = _history()
    window = choose_window(versions, order, groups, values, censored, keep_versions=2)
    assert window.versions == ["v1", "v2"] and window.dropped_versions == ["v0"]
    assert window.rows.sum() == 2 * 4 * 60 and not window.rows[:240].any()
    assert window.drift is not None and not window.drift.moved  # same world: both versions kept
    # 0 keeps every version; a history from before the column (version None) is the oldest.
    assert choose_window(versions, order, groups, values, censored, keep_versions=0).rows.all()
    mixed = [None] * 240 + versions[240:]
    assert choose_window(mixed, order, groups, values, censored, keep_versions=2).dropped_versions == [None]


def test_a_drift_under_the_newest_version_leaves_only_its_events():
    # A 30% longer output under v2, heavy-tailed noise (log-t, 3 df): no single group of 60 + 60 calls
    # shows it at a Bonferroni level, but the groups together do.
    versions, order, groups, values, censored = _history(shift_last=np.log(1.3))
    window = choose_window(versions, order, groups, values, censored, keep_versions=2)
    assert window.drift.moved and window.drift.combined_z > 0
    assert window.versions == ["v2"] and window.dropped_versions == ["v0", "v1"]
    assert window.rows.sum() == 240 and window.rows[-240:].all()


def test_censoring_by_older_budgets_is_not_taken_for_drift():
    # Same world on both sides, but the older version's small budgets cut its longest half at their
    # ceiling (a lower bound): compared as they stand, the older side looks shorter.
    rng = np.random.default_rng(5)
    newest_values = rng.normal(0, 0.4, 1000)
    older_values = rng.normal(0, 0.4, 1000)
    ceiling = np.quantile(older_values, 0.5)
    older_cut = older_values > ceiling
    values = np.r_[newest_values, np.where(older_cut, ceiling, older_values)]
    censored = np.r_[np.zeros(1000, dtype=bool), older_cut]
    newest = np.r_[np.ones(1000, dtype=bool), np.zeros(1000, dtype=bool)]
    groups = np.array(["tests/medium"] * 2000, dtype=object)
    assert not error_moved(groups, values, censored, newest, ~newest).moved
    # Ignoring the censoring (values taken as exact), the same data would be called a drift.
    assert error_moved(groups, values, np.zeros(2000, dtype=bool), newest, ~newest).moved


def test_the_window_of_stored_events_is_choose_window_over_their_plain_labels():
    """window_of_events (labels coded once, integer comparisons) against choose_window fed the plain
    per-event lists: same rows, versions and drift."""
    import math

    from autopack_pipeline.domain.analysis import EventArrays
    from autopack_pipeline.domain.calibration_window import window_of_events
    from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
    from autopack_pipeline.domain.reprediction import PredictionInputs

    rng = np.random.default_rng(11)
    n = 3000
    version_of = [["v0", "v1", "v2", None][i] for i in rng.integers(0, 4, n)]
    records = [{"event_id": i + 1, "category": ["tests", "docs", "IMPLEMENT_FEATURE"][int(rng.integers(0, 3))],
                "complexity": ["low", "medium"][int(rng.integers(0, 2))], "predicted_output_tokens": 1000,
                "actual_output_tokens": int(1000 * math.exp(rng.normal(0.3 if version_of[i] == "v2" else 0, 0.4))),
                "selected_budget": 4000, "truncated": bool(rng.random() < 0.05)} for i in range(n)]
    arrays = EventArrays.from_records(records)
    inputs = PredictionInputs.from_rows(list(range(1, n + 1)), [None] * n, version_of)
    got = window_of_events(arrays, inputs, keep_versions=2)
    labels = np.array([f"{normalise_category(r['category'])}/{normalise_complexity(r['complexity'])}" for r in records],
                      dtype=object)
    actual = np.array([r["actual_output_tokens"] for r in records], dtype=float)
    truncated = np.array([r["truncated"] for r in records])
    values = np.log(np.where(truncated, np.fmax(4000.0, actual), actual) / 1000.0)
    want = choose_window(version_of, np.arange(1, n + 1, dtype=float), labels, values, truncated, keep_versions=2)
    assert (got.rows == want.rows).all() and got.versions == want.versions
    assert got.dropped_versions == want.dropped_versions and got.drift == want.drift
    assert got.drift is not None and got.drift.groups_tested == 6
