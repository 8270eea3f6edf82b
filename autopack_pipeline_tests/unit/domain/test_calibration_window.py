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
