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


@pytest.mark.parametrize("kind", ["spread", "ties", "ascending", "nan", "zeros"])
def test_many_values_are_selected_in_a_range_as_the_sorted_values(kind, monkeypatch):
    """From ``_BRACKET_FROM`` values on, a median's and a P90's pair are read among the values of a range
    around them (the values left unmoved); a range that cannot tell (a zero in it) is left to the partition."""
    from autopack_pipeline.domain.analysis import order_statistics as module

    rng = np.random.default_rng(7)
    size = module._BRACKET_FROM + int(rng.integers(0, 5000))
    values = {"spread": rng.lognormal(0, 1, size),
              "ties": rng.integers(1, 40, size) / rng.integers(1, 40, size),
              "ascending": np.sort(rng.lognormal(0, 1, size)),
              "nan": np.where(rng.random(size) < 0.05, np.nan, rng.lognormal(0, 1, size)),
              # zeros of both signs at the median and around it
              "zeros": np.where(rng.random(size) < 0.5, -1.0, 1.0) * np.round(np.abs(rng.normal(0, 1, size)) - 0.7, 2)
              }[kind]
    n = size
    positions = [n // 2 - 1, n // 2, 9 * (n + 1) // 10 - 1, 9 * (n + 1) // 10]
    before = values.copy()
    ranged = []
    bracketed = module._bracketed
    monkeypatch.setattr(module, "_bracketed", lambda v, w: ranged.append(bracketed(v, w)) or ranged[-1])
    picked = order_statistics(values, positions)
    ordered = np.sort(values)
    # Left to the partition, a zero's sign is the partition's (the bits it gave before).
    signs = module._partitioned(before.copy(), positions) if kind == "zeros" else {p: ordered[p] for p in positions}
    for p in positions:
        assert np.array_equal(np.array([picked[p]]), ordered[p:p + 1], equal_nan=True)
        assert np.signbit(picked[p]) == np.signbit(signs[p])
    assert (ranged[0] is None) == (kind == "zeros")
    if kind != "zeros":
        assert np.array_equal(values, before, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_positions_on_a_heavily_tied_value_are_counted_as_the_sorted_values(seed):
    """A position whose value the sample guesses, with many values equal to it (token ratios such as 5/6), is
    read by counting the values below and equal to it; the others of the range are still selected."""
    from autopack_pipeline.domain.analysis import order_statistics as module

    rng = np.random.default_rng(seed)
    size = module._BRACKET_FROM * 3 + int(rng.integers(0, 5000))
    values = rng.lognormal(0, 0.5, size)
    values[rng.random(size) < 0.4] = 5 / 6  # the median on it, the P90 not
    values[rng.random(size) < 0.05] = rng.integers(1, 4, 1)[0] + 0.5  # a second tie, above the P90 or on it
    n = size
    positions = [n // 2 - 1, n // 2, 9 * (n + 1) // 10 - 1, 9 * (n + 1) // 10, n // 7]
    picked = order_statistics(values, positions)
    ordered = np.sort(values)
    assert all(picked[p] == ordered[p] for p in positions)
    tied = module._tied(values, [p for p in sorted(positions)], [5 / 6])
    assert tied and all(ordered[p] == 5 / 6 for p in tied)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.75, 0.95, 1.0])
def test_kept_values_are_a_boolean_index_whatever_share_is_kept(share):
    """The tier metrics' kept values (np.extract below nine in ten kept, a boolean index above): the same
    values in the same order, at the front of the caller's array."""
    from autopack_pipeline.domain.analysis.metrics import _kept

    rng = np.random.default_rng(int(share * 100))
    values = rng.lognormal(0, 1, 200_003)
    keep = rng.random(len(values)) < share
    want = values[keep]
    got, flags = _kept(values.copy(), keep)
    assert np.array_equal(got, want if not keep.all() else values)
    assert (flags is None) == bool(keep.all())
