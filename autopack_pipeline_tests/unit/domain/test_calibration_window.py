"""What calibration learns from: the recent coefficient versions, older ones re-expressed after a drift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autopack_pipeline.domain.analysis.arrays import EventArrays, truncated_flags
from autopack_pipeline.domain.calibration_window import choose_window, error_moved, measured_shift

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
    assert window.log_shift is None and window.shifts == []  # and kept as they are
    # 0 keeps every version; a history from before the column (version None) is the oldest.
    assert choose_window(versions, order, groups, values, censored, keep_versions=0).rows.all()
    mixed = [None] * 240 + versions[240:]
    assert choose_window(mixed, order, groups, values, censored, keep_versions=2).dropped_versions == [None]


def test_a_drift_under_the_newest_version_re_expresses_the_older_events_in_its_world():
    # A 30% longer output under v2, heavy-tailed noise (log-t, 3 df): no single group of 60 + 60 calls
    # shows it at a Bonferroni level, but the groups together do.
    versions, order, groups, values, censored = _history(shift_last=np.log(1.3))
    window = choose_window(versions, order, groups, values, censored, keep_versions=2)
    assert window.drift.moved and window.drift.combined_z > 0
    assert window.versions == ["v1", "v2"] and window.dropped_versions == ["v0"]
    assert window.rows.sum() == 480 and window.rows[-480:].all()
    # Each v1 call is moved by its group's shift of the median, v2's are left as they are: every
    # group's v1 median lands on its v2 median.
    newest, older = np.arange(720) >= 480, (np.arange(720) >= 240) & (np.arange(720) < 480)
    for group in GROUPS:
        mine = groups == group
        shift = np.median(values[mine & newest]) - np.median(values[mine & older])
        assert window.log_shift[mine & older] == pytest.approx(np.full(60, shift))
        assert np.median((values + window.log_shift)[mine & older]) == pytest.approx(np.median(values[mine & newest]))
    assert not window.log_shift[newest].any()
    assert math.exp(window.shifts[0].pooled) == pytest.approx(1.3, abs=0.12)


def test_a_shifted_round_is_re_expressed_exactly_and_each_version_against_the_newest():
    # The same calls three times, v0's shorter than v2's by x0.6 in every group and v1's by x0.77
    # (log shifts 0.51 and 0.26), except tests/low, where v1 is the same world as v2. Each version is
    # measured against the newest directly: v0 is moved by 0.51, not by 0.26 + 0.26 (no chain).
    rng = np.random.default_rng(11)
    noise = {group: 0.4 * rng.standard_t(3, 60) for group in GROUPS}
    shifts = {"v0": {g: np.log(1 / 0.6) for g in GROUPS}, "v1": {g: np.log(1 / 0.77) for g in GROUPS}, "v2": {}}
    shifts["v1"]["tests/low"] = 0.0
    versions, groups, values = [], [], []
    for version in ("v0", "v1", "v2"):
        for group in GROUPS:
            values.extend(noise[group] - shifts[version].get(group, 0.0))
            versions.extend([version] * 60)
            groups.extend([group] * 60)
    groups, values = np.array(groups, dtype=object), np.array(values)
    window = choose_window(versions, np.arange(720.0), groups, values, np.zeros(720, dtype=bool), keep_versions=0)
    assert window.versions == ["v0", "v1", "v2"] and window.rows.all()
    for at, version in enumerate(("v0", "v1")):
        for group in GROUPS:
            rows = (np.array(versions) == version) & (groups == group)
            assert window.log_shift[rows] == pytest.approx(np.full(60, shifts[version][group]))
            assert (values + window.log_shift)[rows] == pytest.approx(noise[group])  # exactly the newest world
        assert window.shifts[at].version == version and window.shifts[at].events == 240
    assert window.shifts[1].groups["tests/low"] == pytest.approx(0.0)
    # Measured once more on the same stored events, the same shifts: nothing accumulates.
    again = choose_window(versions, np.arange(720.0), groups, values, np.zeros(720, dtype=bool), keep_versions=0)
    assert again.log_shift == pytest.approx(window.log_shift)


def test_a_group_whose_median_truncation_hides_takes_the_pooled_shift():
    # tests/medium's older calls are cut below their median: its median is unknown there, so its
    # calls move by the other groups' shift, weighted by their sizes.
    rng = np.random.default_rng(2)
    groups = np.array(["docs/low"] * 100 + ["tests/low"] * 60 + ["tests/medium"] * 100, dtype=object)
    base = rng.normal(0, 0.3, 260)
    older = np.r_[np.zeros(50, bool), np.ones(50, bool), np.zeros(30, bool), np.ones(30, bool),
                  np.zeros(50, bool), np.ones(50, bool)]
    values = base - 0.2 * older - 0.1 * (older & (groups == "tests/low"))
    ceiling = np.quantile(values[older & (groups == "tests/medium")], 0.3)  # below that side's median
    censored = older & (groups == "tests/medium") & (values > ceiling)
    values = np.where(censored, ceiling, values)
    pooled, own = measured_shift(groups, values, censored, ~older, older)
    assert set(own) == {"docs/low", "tests/low"}
    for group in own:
        assert own[group] == pytest.approx(np.median(values[~older & (groups == group)])
                                           - np.median(values[older & (groups == group)]))
    # Weights n_new x n_old / (n_new + n_old): 25 for docs/low, 15 for tests/low.
    assert pooled == pytest.approx((25 * own["docs/low"] + 15 * own["tests/low"]) / 40)
    # No group measurable on both sides: nothing to re-express by.
    assert measured_shift(groups, values, censored, ~older, older, min_events=60) is None


def test_re_expressed_events_scale_output_and_ceiling_together():
    # A truncated older call keeps its place relative to its prediction: still truncated, at a ceiling
    # scaled with its output, so it stays a lower bound in the newest world.
    records = [
        {"event_id": 1, "predicted_output_tokens": 1000, "actual_output_tokens": 1200, "selected_budget": 2000,
         "actual_max_tokens": 2000, "truncated": False, "success": True, "run_id": "r1", "phase_id": "a"},
        {"event_id": 2, "predicted_output_tokens": 1000, "actual_output_tokens": 2000, "selected_budget": 2000,
         "actual_max_tokens": 2000, "truncated": True, "success": False, "run_id": "r1", "phase_id": "b"},
        {"event_id": 3, "predicted_output_tokens": 1000, "actual_output_tokens": 1500, "selected_budget": 2600,
         "actual_max_tokens": None, "truncated": False, "success": True, "run_id": "r2", "phase_id": "a"},
    ]
    arrays = EventArrays.from_records(records)
    versions = ["v1", "v1", "v2"]
    window = choose_window(versions, np.arange(3.0), np.array(["g"] * 3, dtype=object), np.zeros(3),
                           np.zeros(3, bool), keep_versions=2)
    assert window.log_shift is None
    shifted = type(window)(np.ones(3, bool), ["v1", "v2"], [], log_shift=np.array([np.log(1.3)] * 2 + [0.0]))
    out = shifted.events_of(arrays)
    assert out.actual.values.tolist() == [1560, 2600, 1500]
    assert out.selected_budget.values.tolist() == [2600, 2600, 2600]
    assert out.actual_max_tokens.floats()[:2].tolist() == [2600.0, 2600.0] and not out.actual_max_tokens.notna()[2]
    assert out.predicted.values.tolist() == [1000, 1000, 1000]
    assert truncated_flags(out).tolist() == [False, True, False]


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


@pytest.mark.parametrize(("versions", "keep", "asked"), [
    (["v0"] * 720, 2, False),  # one version (Autopack's events have none): no drift test, no error read
    (["v0"] * 240 + ["v1"] * 480, 1, False),  # the last version alone is kept
    (["v0"] * 240 + ["v1"] * 480, 2, True),  # two versions: the drift test reads each call's error
])
def test_the_errors_are_computed_only_for_a_window_that_tests_for_drift(versions, keep, asked):
    from autopack_pipeline.domain.calibration_window import _window

    _, order, groups, values, censored = _history()
    names = sorted(set(versions))
    codes = np.array([names.index(v) for v in versions])
    calls: list[int] = []

    def errors():
        calls.append(1)
        return groups, values, censored, None

    window = _window(codes, names, order, errors, keep_versions=keep)
    assert bool(calls) is asked
    assert window.as_dict() == choose_window(versions, order, groups, values, censored, keep_versions=keep).as_dict()


@pytest.mark.parametrize("keep", [0, 1, 2])
@pytest.mark.parametrize("version", [None, "v3"])
def test_a_window_of_one_version_keeps_every_event_without_ranking_versions(keep, version, monkeypatch):
    """Every event of one version (Autopack's: None): all kept as they are, and no version is ranked (the
    ranking sorted every event's version)."""
    from autopack_pipeline.domain import calibration_window

    def no_ranking(codes):
        raise AssertionError("one version has nothing to rank")

    monkeypatch.setattr(calibration_window, "_first_seen", no_ranking)
    _, order, groups, values, censored = _history()
    # Coded as the second of two names, the first of which no event has.
    window = calibration_window.window_of_codes(np.ones(len(order), dtype=np.int64), ["v0", version], order, groups,
                                                values, censored, keep_versions=keep)
    assert window.as_dict() == choose_window([version] * len(order), order, groups, values, censored,
                                             keep_versions=keep).as_dict()
    assert window.rows.dtype == bool and window.rows.all() and len(window.rows) == len(order)
    assert (window.versions, window.dropped_versions, window.drift) == ([version], [], None)
    assert window.reason == "1 version(s) with events: all kept" and window.log_shift is None


def test_events_of_a_database_that_stores_no_version_are_one_window_of_none(monkeypatch):
    """An Autopack database has no version column: every event's version is None, and no event's stored
    entry is looked for to learn it."""
    from autopack_pipeline.domain.analysis import EventArrays
    from autopack_pipeline.domain.calibration_window import window_of_events
    from autopack_pipeline.domain.reprediction import PredictionInputs

    records = [{"event_id": i + 1, "category": "tests", "complexity": "low", "predicted_output_tokens": 1000,
                "actual_output_tokens": 900 + i, "selected_budget": 4000} for i in range(50)]
    inputs = PredictionInputs.from_rows(list(range(1, 41)), [None] * 40)  # ten events have no entry
    assert inputs.versions.values == ()

    def unread(self, ids):
        raise AssertionError("no entry is needed to know the version is None")

    monkeypatch.setattr(PredictionInputs, "positions", unread)
    window = window_of_events(EventArrays.from_records(records), inputs, keep_versions=2)
    assert window.rows.all() and len(window.rows) == 50
    assert (window.versions, window.dropped_versions, window.drift) == ([None], [], None)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 300, 4000])
def test_average_ranks_are_scipys_rankdata_with_and_without_ties(n):
    from scipy.stats import norm, rankdata

    from autopack_pipeline.domain.calibration_window import _average_ranks, _two_sided_p

    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), rng.integers(0, 4, n).astype(float), np.round(rng.normal(size=n), 1)):
        assert np.array_equal(_average_ranks(values), rankdata(values))
    for z in (0.0, 0.7, -1.96, 3.3, -6.0):
        assert _two_sided_p(z) == pytest.approx(2 * norm.sf(abs(z)), rel=1e-13)
