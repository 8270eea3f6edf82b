"""The attempt dedup's shortcut for event ids that increase with the rows (``samples.duplicate_attempts``)
against the full sort of (phase, attempt, event id, timestamp, row) it stands for."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from autopack_pipeline.domain.analysis.arrays import EventArrays
from autopack_pipeline.domain.analysis.samples import duplicate_attempts

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _losers_by_lexsort(arrays: EventArrays, candidates: np.ndarray) -> np.ndarray:
    phase = arrays.phase_key.values
    rows = np.flatnonzero(candidates)
    order = np.lexsort((rows, arrays.timestamp_us.values[rows], arrays.event_id.values[rows],
                        arrays.attempt.values[rows], phase[rows]))
    ordered = phase[rows][order]
    last = np.r_[ordered[1:] != ordered[:-1], True]
    return np.sort(rows[order[~last]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_increasing_event_ids_give_the_full_sorts_losers(seed):
    rng = np.random.default_rng(seed)
    n = 3_000
    records = [{"event_id": 10 + 3 * i, "run_id": f"r{rng.integers(0, 5)}", "phase_id": f"p{rng.integers(0, 400)}",
                "timestamp": T0 + timedelta(seconds=int(rng.integers(0, 50))), "attempt": int(rng.integers(1, 4))}
               for i in range(n)]  # repeated phases, equal attempts and equal timestamps within a phase
    arrays = EventArrays.from_records(records)
    assert arrays.event_id.increasing
    candidates = rng.random(n) < 0.8
    assert np.array_equal(np.sort(duplicate_attempts(arrays, candidates)), _losers_by_lexsort(arrays, candidates))
