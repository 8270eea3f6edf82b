"""The calibration sections' shared work: past-call counts without per-floor budgets, and an unidentifiable
group's settings computed once for both methods' sections, on whichever thread comes first."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from autopack_pipeline.domain.budget_calibration import PooledSection, propose_group_budget, section_of
from autopack_pipeline.domain.budget_projection import truncated_past_calls
from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.group_observations import GroupObservationsInForce
from autopack_pipeline.domain.shared_figures import BUSY, shared


@pytest.fixture
def seed():
    return load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")


def _budget_rule_counts(group: GroupObservationsInForce, factor: float, margin: float, floors, cap) -> tuple[int, ...]:
    """The rule written out: every call's budget under every floor."""
    clean_raw = np.floor(group.predicted * factor * margin)
    cut_raw = np.floor(group.censored_predicted * factor * margin)
    return tuple(int((group.actual > np.minimum(cap, np.maximum(floor, clean_raw))).sum())
                 + int((np.minimum(cap, np.maximum(floor, cut_raw)) <= group.censored_ceiling).sum())
                 for floor in floors)


def _group(rng: np.random.Generator, n: int, cut: int, key=("tests", "low")) -> GroupObservationsInForce:
    # Integer-valued tokens on a coarse grid, so calls land exactly on their budgets, floors and the cap.
    predicted = rng.integers(1, 40, n).astype(float) * 100
    actual = np.round(predicted * rng.lognormal(0, 0.6, n) / 100) * 100
    censored_predicted = rng.integers(1, 40, cut).astype(float) * 100
    ceiling = np.round(censored_predicted * rng.uniform(0.5, 3, cut) / 100) * 100
    return GroupObservationsInForce(*key, predicted, actual, censored_predicted, ceiling)


@pytest.mark.parametrize("seed_value", range(6))
def test_past_call_counts_agree_with_every_calls_budget(seed_value):
    rng = np.random.default_rng(seed_value)
    group = _group(rng, 3000, 400)
    for factor, margin in ((1.0, 1.0), (1.3, 1.5), (0.7, 2.0)):
        for floors, cap in (((0, 1500), 4000), ((2000, 100), 2000), ((5000, 6000), 4000), ((2100, 2100), 2100)):
            assert truncated_past_calls(group, factor, margin, floors, cap) == _budget_rule_counts(
                group, factor, margin, floors, cap)


def test_past_call_counts_with_a_missing_prediction_follow_the_budgets():
    group = _group(np.random.default_rng(9), 200, 30)
    group.predicted[[3, 50]] = np.nan
    group.censored_predicted[4] = np.nan
    assert truncated_past_calls(group, 1.2, 1.1, (0, 2000), 1000) == _budget_rule_counts(group, 1.2, 1.1, (0, 2000), 1000)


def test_a_shared_figure_is_computed_once_and_a_busy_one_can_be_left_for_later():
    class Holder:
        pass

    holder, calls, started, release = Holder(), [], threading.Event(), threading.Event()

    def slow():
        calls.append(1)
        started.set()
        release.wait(5)
        return 42

    worker = threading.Thread(target=lambda: shared(holder, "k", slow))
    worker.start()
    started.wait(5)
    assert shared(holder, "k", slow, wait=False) is BUSY
    release.set()
    assert shared(holder, "k", slow) == 42
    worker.join()
    assert calls == [1] and shared(holder, "k", lambda: 0) == 42
    assert shared(holder, "other", lambda: 7) == 7  # another key: its own figure

    def failing():
        raise RuntimeError("no figure")

    for _ in range(2):  # the error reaches every caller
        with pytest.raises(RuntimeError):
            shared(holder, "bad", failing)


def _unidentifiable_groups(rng) -> list[GroupObservationsInForce]:
    # Most calls truncated: more than a 98% bound can absorb.
    return [_group(rng, 400, 300, key=("tests", level)) for level in ("low", "medium", "high", "critical")]


def test_two_sections_on_two_threads_give_what_each_gives_alone(seed):
    factors = [{("tests", "low"): 0.5, ("tests", "high"): 0.6}, {("tests", "low"): 0.7, ("tests", "medium"): 9.0}]
    alone = []
    for chosen in factors:
        groups = _unidentifiable_groups(np.random.default_rng(3))
        alone.append(section_of(PooledSection(groups, chosen, {}), seed))
    assert {g["status"] for section in alone for g in section["groups"]} == {"unidentifiable"}
    groups = _unidentifiable_groups(np.random.default_rng(3))  # one set of groups, both sections
    together = [None, None]

    def run(i):
        together[i] = section_of(PooledSection(groups, factors[i], {}), seed)

    worker = threading.Thread(target=run, args=(1,))
    worker.start()
    run(0)
    worker.join()
    assert together == alone
    # The factors below every group's lower bound gave the same settings, computed once for both.
    first, second = (propose_group_budget(groups[0], seed, proposed_factor=f[("tests", "low")]) for f in factors)
    assert first is second


def _coverage_groups(seed_value: int) -> list:
    from autopack_pipeline.domain.analysis.coverage_calibration import CoverageGroup

    rng, groups, empty = np.random.default_rng(seed_value), [], np.zeros(0)
    for i, level in enumerate(("low", "medium", "high", "critical", "maintenance")):
        n, cut = 300 + 100 * i, 5 + 7 * i
        predicted = rng.integers(200, 4000, n).astype(float)
        actual = np.round(predicted * rng.lognormal(0.1 * i, 0.3 + 0.05 * i, n))
        cut_predicted = rng.integers(200, 4000, cut).astype(float)
        groups.append(CoverageGroup(("tests", level), np.arange(n), np.arange(n, n + cut), predicted, actual, empty,
                                    cut_predicted, empty, actual / predicted, rng.uniform(1.2, 3, cut)))
    return groups


@pytest.mark.parametrize("seed_value", [1, 2])
def test_the_coverage_bounds_found_beforehand_raise_the_factors_as_the_section_would(seed_value):
    from autopack_pipeline.domain.budget_calibration import pooled_coverage_bounds, pooled_section

    factors = {("tests", "low"): 0.9, ("tests", "high"): 1.4, ("tests", "critical"): 1.1}
    alone = pooled_section(_coverage_groups(seed_value), factors, pooled_factors=True)
    groups = _coverage_groups(seed_value)
    bounds = pooled_coverage_bounds(groups)
    assert bounds  # the pooled pass found bounds: the test can tell a wrong one
    handed = pooled_section(groups, factors, pooled_factors=True, coverage_bounds=bounds)
    assert handed.factors == alone.factors and handed.margins == alone.margins
    assert handed.factors != factors  # the raise moved something
    wrong = {key: (value[0] * 2, value[1]) for key, value in bounds.items()}
    assert pooled_section(_coverage_groups(seed_value), factors, pooled_factors=True,
                          coverage_bounds=wrong).factors != alone.factors
