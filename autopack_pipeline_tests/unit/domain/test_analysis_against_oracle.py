"""The product's numpy analysis equals the pandas oracle (``autopack_pipeline_tests.oracle``) on the same events.

Every comparison is on the documents, dataclasses and pydantic models the oracle returns, equal but
for floats, which may differ in their last bits (numpy sums where the oracle uses ``math.fsum``) and
are compared to a relative 1e-9 (``assert_close``), over random frames that hit the awkward cases:
missing values in every column, legacy category spellings, zero and tiny outputs, retries of one
phase with and without attempt numbers, phases with the same id in different runs, and ties.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopack_pipeline.domain import analysis as fm
from autopack_pipeline.services import seed_files
from autopack_pipeline.services.analysis import WindowedEvents
from autopack_pipeline.services.pipeline import Analysis, analyse_events
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame, event_arrays_from_frame
from autopack_pipeline_tests.oracle.calibration import calibrate_autopack_median
from autopack_pipeline_tests.oracle.compare import assert_close
from autopack_pipeline_tests.oracle.coverage import calibrate_coverage
from autopack_pipeline_tests.oracle.gates import evaluate_calibration_gate
from autopack_pipeline_tests.oracle.metrics import (
    compute_metrics,
    group_tier1_metrics,
    p90,
    tier_metrics_document,
)
from autopack_pipeline_tests.oracle.samples import clean_samples, sample_exclusions

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
# No empty string: the reference's canonical_labels maps "" to NA (a pandas map quirk) and stratify fails.
CATEGORIES = ["implementation", "tests", "testing", "docs", "documentation", "IMPLEMENT_FEATURE", "refactoring", None]
COMPLEXITIES = ["low", "medium", "high", "med", "low_complexity", "critical", "weird", None]
PROVENANCE = {"coefficient_file_version": "v-test", "database": "sqlite:///x.db", "exclusions": {"failed": 1}}


def random_events(seed: int, n: int, *, missing: float = 0.08, phases: int = 12, truncation: float = 0.15,
                  categories: list | None = None, complexities: list | None = None) -> pd.DataFrame:
    """A frame of ``n`` events with every kind of awkward value, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)

    def maybe(values: list, p: float = missing) -> list:
        return [None if rng.random() < p else v for v in values]

    def pick(options: list) -> list:
        return [options[i] for i in rng.integers(0, len(options), n)]

    predicted = rng.integers(0, 4000, n)
    predicted[rng.random(n) < 0.05] = 0
    actual = (predicted * rng.lognormal(0.1, 0.5, n)).astype(int)
    actual[rng.random(n) < 0.05] = rng.integers(0, 60, 1)[0]
    event_ids = rng.permutation(np.arange(1, n + 1) * 3).tolist()
    frame = pd.DataFrame({
        "event_id": maybe(event_ids, missing / 4),
        "run_id": maybe(pick(["r1", "r2", "r3"]), missing / 4),
        "phase_id": maybe([f"p{i}" for i in rng.integers(0, phases, n)], missing / 4),
        "timestamp": maybe([T0 + timedelta(minutes=int(m)) for m in rng.integers(0, 50, n)], missing / 4),
        "category": pick(categories or CATEGORIES),
        "complexity": pick(complexities or COMPLEXITIES),
        "deliverable_count": maybe(rng.integers(0, 9, n).tolist()),
        "predicted_output_tokens": maybe(predicted.tolist(), missing / 2),
        "actual_output_tokens": maybe(actual.tolist(), missing / 2),
        "selected_budget": maybe(pick([0, 4096, 8192, 12288])),
        "actual_max_tokens": maybe(pick([0, 8192, 16384])),
        "success": maybe((rng.random(n) < 0.8).tolist()),
        "truncated": maybe((rng.random(n) < truncation).tolist()),
        "is_truncated_output": maybe((rng.random(n) < truncation).tolist()),
        "stop_reason": pick(["end_turn", "max_tokens", None]),
        "model": "claude-sonnet-4-5",
        "attempt": maybe(rng.integers(1, 4, n).tolist(), 0.3),
    })
    return conform_events_frame(frame)


SEEDS = list(range(6))


def reference_analysis(frame: pd.DataFrame, *, dedup: bool = True, under: float = 1.1):
    samples = clean_samples(frame, dedup=dedup)
    return samples, tier_metrics_document(frame, len(samples), under_multiplier=under)


# -- order statistics ---------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 9, 10, 11, 19, 20, 101])
def test_p90_median_and_mean_match_statistics(size):
    rng = np.random.default_rng(size)
    values = np.round(rng.lognormal(0, 1, size), 2)  # rounding makes ties
    assert fm.p90_of(values) == p90(values.tolist())
    assert fm.median_of(values) == statistics.median(values.tolist())
    assert fm.p90(values.tolist()) == p90(values.tolist())
    assert_close(fm._summary_and_p90(values), (statistics.median(values.tolist()), math.fsum(values.tolist()) / size,
                                               p90(values.tolist())))
    assert fm.p90_of(np.array([])) is None


# -- tier metrics, samples, gate, calibration ------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("under", [1.0, 1.1])
def test_tier_metrics_document_equals_the_reference(seed, under):
    frame = random_events(seed, 300)
    samples, expected = reference_analysis(frame, under=under)
    arrays = event_arrays_from_frame(frame)
    assert_close(fm.tier_metrics_document_arrays(arrays, under_multiplier=under, clean_samples=len(samples)), expected)
    assert_close(fm.compute_metrics_arrays(arrays, stratify=True, under_multiplier=under), compute_metrics(
        frame, under_multiplier=under, stratify=True))


@pytest.mark.parametrize("seed", SEEDS)
def test_tier_metrics_of_whole_token_counts_divide_the_integers_with_the_floats_bits(seed):
    # Every count known and non-negative: the ratio figures divide the int32 counts themselves; every
    # figure is the reference's and bit for bit what the float copies give (ties and zeros included).
    from autopack_pipeline.domain.analysis import metrics

    frame = random_events(seed, 400, missing=0)
    samples, expected = reference_analysis(frame)
    arrays = event_arrays_from_frame(frame)
    whole = metrics._Basics.of(arrays)
    assert whole.whole and whole.arrays.predicted.values.dtype.kind == "i"
    floats = metrics._Basics(arrays, whole.known, whole.truncated, whole.success, whole=False)
    document = metrics._tier_metrics_document(arrays, whole, 1.1, len(samples))
    assert document == metrics._tier_metrics_document(arrays, floats, 1.1, len(samples))
    assert_close(document, expected)
    negative = arrays.take(np.arange(len(arrays)))
    negative.actual.values[0] = -1  # a negative count: no longer "whole", the float copies are used
    assert not metrics._Basics.of(negative).whole


def test_the_budget_sent_of_whole_columns_is_the_rule_on_floats():
    # Nothing missing: the rule is applied to the integers (a zero ceiling falls back), the same floats.
    from autopack_pipeline.domain.analysis.arrays import budget_sent, budget_sent_rule

    arrays = event_arrays_from_frame(random_events(3, 300, missing=0))
    assert arrays.actual_max_tokens.valid is None and (arrays.actual_max_tokens.values == 0).any()
    rule = budget_sent_rule(arrays.actual_max_tokens.floats(), arrays.selected_budget.floats())
    rows = np.arange(0, 300, 7)
    for picked, expected in ((None, rule), (rows, rule[rows]), (arrays.success == 1, rule[arrays.success == 1])):
        found = budget_sent(arrays, picked)
        assert found.dtype == np.float64 and np.array_equal(found, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_tier1_equals_the_reference_per_group(seed):
    frame = random_events(seed, 400)
    expected = group_tier1_metrics(frame, under_multiplier=1.2)
    assert len(expected) > 1
    assert fm.group_tier1_arrays(event_arrays_from_frame(frame), under_multiplier=1.2) == expected


def test_take_keeps_the_rows_asked_for_in_that_order():
    frame = random_events(3, 200)
    arrays = event_arrays_from_frame(frame)
    rows = np.array([5, 0, 199, 5])
    taken = arrays.take(rows)
    again = event_arrays_from_frame(frame.iloc[rows].reset_index(drop=True))
    assert len(taken) == 4
    assert_close(fm.compute_metrics_arrays(taken, stratify=True), fm.compute_metrics_arrays(again, stratify=True))
    assert np.array_equal(taken.event_id.notna(), again.event_id.notna())
    mask = np.zeros(200, dtype=bool)
    mask[[0, 5]] = True
    assert_close(fm.compute_metrics_arrays(arrays.take(mask)), compute_metrics(frame.iloc[[0, 5]]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dedup", [True, False])
def test_clean_samples_and_exclusions_equal_the_reference(seed, dedup):
    frame = random_events(seed, 300, phases=6)  # few phase ids: many retries to dedup
    kept = fm.clean_sample_rows(event_arrays_from_frame(frame), dedup=dedup)
    expected = clean_samples(frame, dedup=dedup)
    assert kept.exclusions == sample_exclusions(frame, dedup=dedup)
    assert kept.count == len(expected)
    chosen = frame[kept.mask].reset_index(drop=True)
    for column in ("event_id", "run_id", "phase_id", "attempt", "timestamp", "actual_output_tokens"):
        pd.testing.assert_series_equal(chosen[column], expected[column])


def per_run_phase_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every run's phase ids its own (Autopack's shape: the phase code alone is the key)."""
    frame = frame.copy()
    both = frame["run_id"].notna() & frame["phase_id"].notna()
    frame.loc[both, "phase_id"] = frame.loc[both, "run_id"] + "-" + frame.loc[both, "phase_id"]
    return frame


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_clean_samples_and_censored_rows_with_per_run_phase_ids_equal_the_reference(seed):
    frame = per_run_phase_ids(random_events(seed, 300, phases=6))
    arrays = event_arrays_from_frame(frame)
    kept = fm.clean_sample_rows(arrays)
    assert kept.exclusions == sample_exclusions(frame)
    assert frame[kept.mask]["event_id"].tolist() == clean_samples(frame)["event_id"].tolist()
    assert np.array_equal(arrays.phase_key.values, arrays.phase_code.values)  # the dense key was taken
    assert_close(fm.calibrate_coverage_arrays(arrays, provenance=PROVENANCE),
                 calibrate_coverage(frame, provenance=PROVENANCE))


def test_a_phase_is_its_run_and_phase_id_together():
    frame = conform_events_frame(pd.DataFrame({
        "event_id": [1, 2, 3, 4], "run_id": ["a", "b", "a", None], "phase_id": ["p", "p", "p", "p"],
        "attempt": [1, 1, 2, 1], "success": True, "truncated": False, "predicted_output_tokens": 100,
        "actual_output_tokens": 120,
    }))
    kept = fm.clean_sample_rows(event_arrays_from_frame(frame))
    assert frame[kept.mask]["event_id"].tolist() == clean_samples(frame)["event_id"].tolist() == [2, 3, 4]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("min_samples", "threshold"), [(5, 0.7), (1, 0.0), (30, 0.9)])
def test_autopack_median_calibration_equals_the_reference(seed, min_samples, threshold):
    frame = random_events(seed, 400)
    arrays = event_arrays_from_frame(frame)
    kept = fm.clean_sample_rows(arrays)
    expected = calibrate_autopack_median(clean_samples(frame), min_samples=min_samples,
                                         confidence_threshold=threshold, provenance=PROVENANCE)
    got = fm.calibrate_autopack_median_arrays(arrays, kept.mask, min_samples=min_samples,
                                              confidence_threshold=threshold, provenance=PROVENANCE)
    assert_close(got, expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("positive", [True, False])
def test_autopack_median_calibration_reading_the_coverage_groups_is_bit_for_bit_its_own(seed, positive, monkeypatch):
    # Every count known and every prediction positive: the coverage groups' clean rows are the samples'
    # and their figures are read; otherwise (zeros, missing budgets) the groups' own are gathered.
    from autopack_pipeline.domain.analysis import median_calibration

    frame = random_events(seed, 600, missing=0 if positive else 0.08)
    if positive:
        frame["predicted_output_tokens"] = frame["predicted_output_tokens"].clip(lower=1)
    arrays = event_arrays_from_frame(frame)
    kept = fm.clean_sample_rows(arrays)
    observed = fm.coverage_groups(arrays, all_clean=kept)
    read = []
    original = median_calibration._gathered_figures
    monkeypatch.setattr(median_calibration, "_gathered_figures",
                        lambda *args: read.append(figures := original(*args)) or figures)
    got = fm.calibrate_autopack_median_arrays(arrays, kept.mask, min_samples=1, provenance=PROVENANCE,
                                              gathered={g.key: g for g in observed[2]})
    plain = fm.calibrate_autopack_median_arrays(arrays, kept.mask, min_samples=1, provenance=PROVENANCE)
    assert got.model_dump() == plain.model_dump()
    assert any(f is not None for f in read) == positive and len(got.groups) > 3


@pytest.mark.parametrize("seed", SEEDS[:6])
@pytest.mark.parametrize(("min_total", "min_samples", "force", "rows"), [
    (20, 5, False, 400), (20, 5, True, 30), (500, 5, False, 400), (20, 200, False, 400), (20, 5, False, 0),
])
def test_gate_equals_the_reference(seed, min_total, min_samples, force, rows):
    frame = random_events(seed, rows) if rows else empty_events_frame()
    samples, document = reference_analysis(frame)
    for tier1 in (document["all_events"]["tier1"], {"underestimation_rate_pct": 1.0, "truncation_rate_pct": 0.5}):
        expected = evaluate_calibration_gate(samples, tier1, min_total=min_total, min_samples=min_samples, force=force)
        arrays = event_arrays_from_frame(frame)
        kept = fm.clean_sample_rows(arrays)
        got = fm.calibration_gate_arrays(kept.count, fm.sample_groups(arrays, kept.mask), tier1,
                                         min_total=min_total, min_samples=min_samples, force=force)
        assert got == expected
        assert got.summary() == expected.summary()


def test_empty_events_give_the_reference_documents():
    frame = empty_events_frame()
    arrays = event_arrays_from_frame(frame)
    assert_close(fm.compute_metrics_arrays(arrays, stratify=True), compute_metrics(frame, stratify=True))
    analysis = analyse_every_event(arrays, database=PROVENANCE["database"])
    assert analysis.samples.count == 0
    version = seed_files.load_coefficients_for(load_settings()).version
    assert_close(analysis.calibration.results["autopack-median"], calibrate_autopack_median(
        clean_samples(frame), provenance={"coefficient_file_version": version, "database": PROVENANCE["database"],
                                          "dagster_run_id": None, "exclusions": sample_exclusions(frame),
                                          "forced": True, "dedup": True,
                                          "gate_summary": analysis.calibration.gate.summary()}))


def analyse_every_event(arrays: fm.EventArrays, **calibration) -> Analysis:
    """The services' one chain (samples, metrics, forced gate, both calibrations) over every event,
    with no database (predictions as recorded) and no report written: what the benchmarks run."""
    return analyse_events(load_settings(), WindowedEvents(arrays, None), arrays, force=True, write_reports=False,
                          **calibration)


row_strategy = st.fixed_dictionaries({
    "run_id": st.sampled_from(["a", "b", None]),
    "phase_id": st.sampled_from(["p1", "p2", None]),
    "event_id": st.one_of(st.none(), st.integers(1, 40)),
    "attempt": st.one_of(st.none(), st.integers(1, 3)),
    "category": st.sampled_from(CATEGORIES),
    "complexity": st.sampled_from(COMPLEXITIES),
    "success": st.one_of(st.none(), st.booleans()),
    "truncated": st.one_of(st.none(), st.booleans()),
    "is_truncated_output": st.one_of(st.none(), st.booleans()),
    "predicted_output_tokens": st.one_of(st.none(), st.integers(0, 300)),
    "actual_output_tokens": st.one_of(st.none(), st.integers(0, 300)),
    "selected_budget": st.one_of(st.none(), st.integers(0, 400)),
    "actual_max_tokens": st.one_of(st.none(), st.integers(0, 400)),
    "deliverable_count": st.one_of(st.none(), st.integers(0, 7)),
    "timestamp": st.one_of(st.none(), st.integers(0, 5).map(lambda h: T0 + timedelta(hours=h))),
})


@settings(max_examples=40, deadline=None)
@given(st.lists(row_strategy, max_size=30), st.booleans())
def test_small_awkward_frames_equal_the_reference(rows, dedup):
    frame = conform_events_frame(pd.DataFrame(rows)) if rows else empty_events_frame()
    arrays = event_arrays_from_frame(frame)
    samples = clean_samples(frame, dedup=dedup)
    kept = fm.clean_sample_rows(arrays, dedup=dedup)
    assert kept.exclusions == sample_exclusions(frame, dedup=dedup)
    assert kept.count == len(samples)
    assert_close(fm.tier_metrics_document_arrays(arrays, clean_samples=kept.count),
                 tier_metrics_document(frame, len(samples)))
    assert_close(fm.calibrate_autopack_median_arrays(arrays, kept.mask, min_samples=1, provenance=PROVENANCE),
                 calibrate_autopack_median(samples, min_samples=1, provenance=PROVENANCE))
    # Plain records (the log parser's path) make the same arrays as the frame does.
    from_records = fm.EventArrays.from_records(rows)
    assert fm.clean_sample_rows(from_records, dedup=dedup).exclusions == kept.exclusions
    assert_close(fm.compute_metrics_arrays(from_records, stratify=True),
                 fm.compute_metrics_arrays(arrays, stratify=True))
    assert np.array_equal(from_records.timestamp_us.notna(), arrays.timestamp_us.notna())
    assert np.array_equal(from_records.timestamp_us.values[arrays.timestamp_us.notna()],
                          arrays.timestamp_us.values[arrays.timestamp_us.notna()])


# -- coverage calibration and the whole analysis ------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("dedup", "tolerance", "target", "min_samples", "with_table"), [
    (True, 1.1, 5.0, 5, True), (False, 1.0, 5.0, 1, False), (True, 1.1, 20.0, 30, False),
])
def test_coverage_calibration_equals_the_reference(seed, dedup, tolerance, target, min_samples, with_table):
    # Big groups with little truncation (identifiable and thin groups), or many small messy ones.
    frame = random_events(seed, 400, phases=8) if seed % 2 else coverage_events(seed)
    table = seed_files.load_coefficients_for(load_settings()) if with_table else None
    expected = calibrate_coverage(frame, min_samples=min_samples, dedup=dedup, tolerance=tolerance,
                                  target_pct=target, coefficients=table, provenance=PROVENANCE)
    got = fm.calibrate_coverage_arrays(event_arrays_from_frame(frame), min_samples=min_samples, dedup=dedup,
                                       tolerance=tolerance, target_pct=target, coefficients=table,
                                       provenance=PROVENANCE)
    assert_close(got, expected)


def coverage_events(seed: int) -> pd.DataFrame:
    """Mostly distinct phases in a few groups, little truncation, one rare complexity: every status."""
    return random_events(seed, 700, phases=600, truncation=0.01, missing=0.02,
                         categories=["tests", "docs", "testing"], complexities=["low", "high"] * 6 + ["critical"])


def test_the_coverage_comparisons_meet_every_group_status():
    statuses = set()
    for seed in SEEDS[::2]:
        result = calibrate_coverage(coverage_events(seed), provenance=PROVENANCE)
        statuses |= {g.method_details["status"] for g in result.groups}
    statuses |= {g.method_details["status"] for g in calibrate_coverage(random_events(1, 400, phases=8),
                                                                       provenance=PROVENANCE).groups}
    assert statuses == {"identifiable", "thin", "unidentifiable"}


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_the_services_chain_gives_what_the_reference_computes(seed):
    frame = random_events(seed, 500, phases=10)
    table = seed_files.load_coefficients_for(load_settings())
    samples, document = reference_analysis(frame)
    gate = evaluate_calibration_gate(samples, document["all_events"]["tier1"], force=True,
                                     group_tier1=group_tier1_metrics(frame))
    provenance = {"exclusions": sample_exclusions(frame), "coefficient_file_version": table.version,
                  "dagster_run_id": None, "forced": True, "dedup": True, "database": "db", "gate_summary": gate.summary()}
    analysis = analyse_every_event(event_arrays_from_frame(frame), database="db")
    assert analysis.samples.count == len(samples) and analysis.samples.exclusions == sample_exclusions(frame)
    assert_close(analysis.metrics.document, document)
    assert analysis.calibration.gate == gate
    assert_close(analysis.calibration.results, {
        "coverage": calibrate_coverage(frame, tolerance=1.1, coefficients=table, provenance=provenance),
        "autopack-median": calibrate_autopack_median(samples, provenance=provenance),
    })


def test_the_sample_summary_hands_its_rows_to_calibration_in_process_and_pickles_only_its_counts():
    import pickle

    from autopack_pipeline.services.pipeline import sample_stage

    frame = random_events(3, 400, phases=8)
    windowed = WindowedEvents(event_arrays_from_frame(frame), None)
    summary = sample_stage(windowed)
    assert summary.rows is not None and summary.rows.count == summary.count
    assert summary.groups is not None and summary.groups.counts() == summary.group_counts
    restored = pickle.loads(pickle.dumps(summary))
    assert restored == summary and restored.rows is None and restored.groups is None
    # The chain with the rows handed on gives what calibrate finds on its own; rows found with the
    # other dedup are not used.
    from autopack_pipeline.services.pipeline import calibration_stage

    settings = load_settings()
    handed = analyse_events(settings, windowed, windowed.events, force=True, write_reports=False)
    alone = calibration_stage(None, settings, windowed, handed.metrics, force=True, write_reports=False)
    # The chain found the samples on a second thread beside the metrics, which waited for their count.
    from autopack_pipeline.services.pipeline import metrics_stage

    assert handed.metrics.clean_samples == summary.count > 0
    assert metrics_stage(windowed, summary, windowed.events).document == handed.metrics.document
    assert handed.calibration.as_dict() == alone.as_dict()
    other = calibration_stage(None, settings, windowed, handed.metrics, summary, dedup=False, force=True,
                              write_reports=False)
    assert other.as_dict() == calibration_stage(None, settings, windowed, handed.metrics, dedup=False, force=True,
                                                write_reports=False).as_dict()
    assert other.gate.observed != alone.gate.observed  # dedup changes the counts: the check can fail


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_both_methods_with_the_coverage_one_on_another_thread_are_those_one_after_the_other(seed):
    from concurrent.futures import ThreadPoolExecutor

    arrays = event_arrays_from_frame(random_events(seed, 500))
    kept = fm.clean_sample_rows(arrays)
    groups = fm.sample_groups(arrays, kept.mask)
    observed = fm.coverage_groups(arrays, all_clean=kept)
    alone = fm.calibrations_arrays(arrays, kept, groups, min_samples=1, provenance=PROVENANCE, observed=observed)
    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = fm.calibrations_arrays(arrays, kept, groups, min_samples=1, provenance=PROVENANCE, observed=observed,
                                        beside=pool.submit)
    assert {k: r.model_dump() for k, r in beside.items()} == {k: r.model_dump() for k, r in alone.items()}


@pytest.mark.parametrize("seed", SEEDS[:6])
@pytest.mark.parametrize("positive", [True, False])
def test_coverage_groups_from_the_samples_groups_are_those_it_finds_alone(seed, positive):
    # The clean rows taken from the sample stage's groups, only the censored ones sorted: the same groups,
    # rows and figures, bit for bit, dtypes too (with a zero prediction the clean rows differ from the
    # samples', and the groups are found alone).
    frame = random_events(seed, 800, missing=0 if positive else 0.08, phases=5000)  # most phases once: censored rows stay
    if positive:
        frame["predicted_output_tokens"] = frame["predicted_output_tokens"].clip(lower=1)
    arrays = event_arrays_from_frame(frame)
    kept = fm.clean_sample_rows(arrays)
    alone = fm.coverage_groups(arrays, all_clean=kept)
    handed = fm.coverage_groups(arrays, all_clean=kept, clean_groups=fm.sample_groups(arrays, kept.mask))
    assert np.array_equal(alone[1], handed[1]) and len(alone[2]) == len(handed[2]) > 3
    assert any(len(g.censored_rows) for g in alone[2])
    for mine, theirs in zip(handed[2], alone[2]):
        assert mine.key == theirs.key
        for name in ("clean_rows", "censored_rows", "predicted", "actual", "budget", "censored_predicted",
                     "censored_actual", "ratios", "bounds"):
            a, b = getattr(mine, name), getattr(theirs, name)
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
