"""Clean samples, exclusion counts and the truncation-flag data-quality check."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from autopack_pipeline.storage.frames import conform_events_frame, empty_events_frame
from autopack_pipeline_tests.oracle.samples import (
    EXCLUSION_REASONS,
    clean_samples,
    sample_exclusions,
    truncated_mask,
    truncation_flag_disagreements,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def events(*rows: dict) -> pd.DataFrame:
    """An events frame; each row defaults to a clean, distinct phase of run r1."""
    full = []
    for i, row in enumerate(rows):
        base = {
            "event_id": i + 1, "run_id": "r1", "phase_id": f"p{i + 1}", "timestamp": T0 + timedelta(minutes=i),
            "category": "implementation", "complexity": "low", "deliverable_count": 1,
            "predicted_output_tokens": 1000, "actual_output_tokens": 900, "selected_budget": 4096,
            "actual_max_tokens": 4096, "success": True, "truncated": False, "is_truncated_output": False,
            "stop_reason": "end_turn", "model": "claude-sonnet-4-5", "attempt": 1,
        }
        full.append({**base, **row})
    return conform_events_frame(pd.DataFrame(full))


def test_each_filter_drops_its_row_and_is_counted_once():
    frame = events(
        {},  # kept
        {"success": False},
        {"truncated": True, "is_truncated_output": True},
        {"actual_output_tokens": 49},
        {"actual_output_tokens": 50},  # kept: the guard is ">= 50"
        {"predicted_output_tokens": None},
        {"success": False, "truncated": True},  # failed first, so not also counted as truncated
    )
    kept = clean_samples(frame)
    assert kept["event_id"].tolist() == [1, 5]
    assert sample_exclusions(frame) == {
        "failed": 2, "truncated": 1, "missing_tokens": 1, "below_min_actual": 1, "duplicate_attempt": 0,
    }


def test_min_actual_is_a_parameter():
    frame = events({"actual_output_tokens": 80}, {"actual_output_tokens": 120})
    assert clean_samples(frame, min_actual=100)["event_id"].tolist() == [2]
    assert sample_exclusions(frame, min_actual=100)["below_min_actual"] == 1


def test_truncated_column_is_trusted_over_is_truncated_output():
    frame = events(
        {"truncated": False, "is_truncated_output": True},
        {"truncated": True, "is_truncated_output": False},
        {"truncated": None, "is_truncated_output": True},  # only the later flag is known: use it
        {"truncated": None, "is_truncated_output": None},
    )
    assert truncated_mask(frame).tolist() == [False, True, True, False]
    assert clean_samples(frame)["event_id"].tolist() == [1, 4]


def test_dedup_keeps_highest_attempt_even_with_a_lower_event_id():
    frame = events(
        {"phase_id": "p", "attempt": 2, "event_id": 10, "actual_output_tokens": 700},
        {"phase_id": "p", "attempt": 1, "event_id": 11, "actual_output_tokens": 600},
        {"phase_id": "p", "attempt": None, "event_id": 12, "actual_output_tokens": 500},
    )
    kept = clean_samples(frame)
    assert kept["event_id"].tolist() == [10]
    assert sample_exclusions(frame)["duplicate_attempt"] == 2


def test_dedup_ties_go_to_event_id_then_timestamp():
    same_attempt = events(
        {"phase_id": "p", "event_id": 7},
        {"phase_id": "p", "event_id": 3},
    )
    assert clean_samples(same_attempt)["event_id"].tolist() == [7]
    same_id = events(
        {"phase_id": "p", "event_id": None, "timestamp": T0 + timedelta(hours=2), "actual_output_tokens": 222},
        {"phase_id": "p", "event_id": None, "timestamp": T0, "actual_output_tokens": 111},
    )
    assert clean_samples(same_id)["actual_output_tokens"].tolist() == [222]


def test_dedup_falls_back_to_last_clean_attempt_when_the_latest_was_truncated():
    frame = events(
        {"phase_id": "p", "attempt": 1, "event_id": 1},
        {"phase_id": "p", "attempt": 2, "event_id": 2, "truncated": True},
    )
    assert clean_samples(frame)["event_id"].tolist() == [1]
    assert sample_exclusions(frame) == dict.fromkeys(EXCLUSION_REASONS, 0) | {"truncated": 1}


def test_same_phase_id_in_another_run_is_another_phase():
    frame = events({"run_id": "a", "phase_id": "p"}, {"run_id": "b", "phase_id": "p"})
    assert len(clean_samples(frame)) == 2


def test_rows_without_a_phase_key_are_never_merged():
    frame = events({"phase_id": None}, {"phase_id": None})
    assert len(clean_samples(frame)) == 2


def test_no_dedup_keeps_every_attempt_like_autopack():
    frame = events({"phase_id": "p", "attempt": 1}, {"phase_id": "p", "attempt": 2})
    assert len(clean_samples(frame, dedup=False)) == 2
    assert sample_exclusions(frame, dedup=False)["duplicate_attempt"] == 0


def test_labels_come_out_canonical():
    frame = events(
        {"category": "testing", "complexity": "low_complexity"},
        {"category": "IMPLEMENT_FEATURE", "complexity": "med"},
        {"category": None, "complexity": None},
    )
    kept = clean_samples(frame)
    assert kept["category"].tolist() == ["tests", "implementation", "unknown"]
    assert kept["complexity"].tolist() == ["low", "medium", "medium"]


def test_empty_frame_gives_empty_samples_and_zero_counts():
    assert len(clean_samples(empty_events_frame())) == 0
    assert sample_exclusions(empty_events_frame()) == dict.fromkeys(EXCLUSION_REASONS, 0)
    assert truncation_flag_disagreements(empty_events_frame()) == 0


def test_truncation_flag_disagreements_counts_only_known_differences():
    frame = events(
        {"truncated": True, "is_truncated_output": False},
        {"truncated": False, "is_truncated_output": True},
        {"truncated": True, "is_truncated_output": True},
        {"truncated": True, "is_truncated_output": None},
    )
    assert truncation_flag_disagreements(frame) == 2


row_strategy = st.fixed_dictionaries({
    "phase_id": st.sampled_from(["p1", "p2", "p3", None]),
    "attempt": st.one_of(st.none(), st.integers(1, 3)),
    "success": st.one_of(st.none(), st.booleans()),
    "truncated": st.one_of(st.none(), st.booleans()),
    "actual_output_tokens": st.one_of(st.none(), st.integers(0, 5000)),
    "predicted_output_tokens": st.one_of(st.none(), st.integers(0, 5000)),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(row_strategy, max_size=25), st.booleans())
def test_kept_plus_excluded_is_every_row(rows, dedup):
    frame = events(*rows)
    kept = clean_samples(frame, dedup=dedup)
    assert len(kept) + sum(sample_exclusions(frame, dedup=dedup).values()) == len(frame)
    assert bool((kept["actual_output_tokens"] >= 50).all())
    if dedup:
        keyed = kept.dropna(subset=["phase_id"])
        assert not keyed.duplicated(subset=["run_id", "phase_id"]).any()
