"""PostgreSQL's id gaps as a refresh records them: the holes below the new mark and the ids still missing in
the gaps asked again, equal to a walk over every id (the first implementation) on random reads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autopack_pipeline.storage.columnar import gaps


def walked_gaps(high_water: int, ids: np.ndarray, asked: list[list], now: float) -> list[list]:
    """The reference: every found id compared with the one before it, in Python."""
    found = sorted(set(ids.tolist()))
    ranges = []
    for lo, hi, seen in asked:
        edges = [lo - 1, *[i for i in found if lo <= i <= hi], hi + 1]
        ranges += [[a + 1, b - 1, seen] for a, b in itertools.pairwise(edges) if b - a > 1]
    edges = [high_water, *[i for i in found if i > high_water]]
    ranges += [[a + 1, b - 1, now] for a, b in itertools.pairwise(edges) if b - a > 1]
    return ranges[-gaps.MAX_GAP_RANGES:]


@pytest.mark.parametrize("seed", range(12))
def test_the_gaps_equal_a_walk_over_every_id(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(gaps, "_now", lambda: 1234.5)
    high_water = int(rng.integers(0, 50))
    top = high_water + int(rng.integers(0, 400))
    # Ids above the mark with holes of every length, some read twice; a few ids inside the earlier gaps.
    above = np.arange(high_water + 1, top + 1)
    above = above[rng.random(len(above)) < rng.uniform(0.3, 1.0)]
    asked = [[lo, lo + int(rng.integers(0, 6)), float(rng.integers(1, 9))] for lo in
             sorted(rng.choice(np.arange(1, max(2, high_water)), size=min(5, max(1, high_water - 1)), replace=False).tolist())]
    below = np.array([i for lo, hi, _seen in asked for i in range(lo, hi + 1) if rng.random() < 0.4], dtype=np.int64)
    ids = rng.permutation(np.concatenate([above, above[: len(above) // 5], below]).astype(np.int64))
    manifest = {"high_water_event_id": high_water}
    gaps.update_gaps(manifest, ids, asked, top, "postgresql")
    assert manifest["gaps"] == walked_gaps(high_water, ids, asked, 1234.5)
    assert all(type(v) is int for r in manifest["gaps"] for v in r[:2])  # JSON-ready


def test_nothing_found_leaves_the_asked_gaps_whole_and_no_new_one(monkeypatch):
    monkeypatch.setattr(gaps, "_now", lambda: 7.0)
    manifest = {"high_water_event_id": 100}
    gaps.update_gaps(manifest, np.zeros(0, dtype=np.int64), [[10, 12, 3.0]], 100, "postgresql")
    assert manifest["gaps"] == [[10, 12, 3.0]]


def test_sqlite_keeps_no_gaps():
    manifest = {"high_water_event_id": 5, "gaps": [[1, 2, 0.0]]}
    gaps.update_gaps(manifest, np.array([7, 9]), [], 9, "sqlite")
    assert manifest["gaps"] == []


@pytest.mark.parametrize("ids", [[], [5], [3, 1, 3, 2, 2], list(range(10, 0, -1)), [*range(100), *range(50, 150)]])
def test_the_distinct_ids_are_numpys_unique(ids):
    ids = np.array(ids, dtype=np.int64)
    assert np.array_equal(gaps._distinct_ascending(ids), np.unique(ids))
