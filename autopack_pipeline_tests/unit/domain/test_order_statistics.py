"""``order_statistics`` reads a position right after a selected one as the least value above it: the
values a full sort gives there, with ties, signed zeros and NaN (left to the selection)."""

from __future__ import annotations

import numpy as np
import pytest

from autopack_pipeline.domain.analysis.order_statistics import order_statistics


@pytest.mark.parametrize("seed", range(6))
def test_adjacent_positions_are_the_sorted_values(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 400))
    values = np.round(rng.normal(0, 1, size), 1)  # ties, and zeros of both signs
    values[rng.random(size) < 0.1] = -0.0
    if seed % 2:
        values[rng.integers(0, size)] = np.nan
    positions = sorted({int(p) for p in rng.integers(0, size - 1, 3)} | {size // 2 - 1, size // 2})
    positions = sorted(set(positions) | {p + 1 for p in positions if p + 1 < size})
    picked = order_statistics(values, positions)
    ordered = np.sort(values)
    for p in positions:
        assert np.array_equal(np.array([picked[p]]), ordered[p:p + 1], equal_nan=True)
